package e2e

// The Prometheus rules in deploy/prometheus/rules are code: these tests load
// them with promtool, run their unit tests (deploy/prometheus/tests) and hold
// every alert to the conventions operators rely on. promtool comes from
// Debian's prometheus package; without it the tests skip on a workstation and
// fail in CI, where a skip would hide that nothing was checked.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	rulesGlob     = "deploy/prometheus/rules/*.yml"
	ruleTestsGlob = "deploy/prometheus/tests/*.yml"
)

// loginExclusion finds the results a login SLI expression leaves out.
var loginExclusion = regexp.MustCompile(`doorbell_gateway_logins_total\{result!~"([^"]*)"\}`)

func TestAlertRulesUnitTests(t *testing.T) {
	promtool := requireTool(t, "promtool", "prometheus")
	root := repoRoot(t)
	rules := globFiles(t, root, rulesGlob)
	tests := globFiles(t, root, ruleTestsGlob)
	t.Logf("using %s", toolVersion(t, promtool))

	t.Run("the rule files load", func(t *testing.T) {
		runTool(t, root, promtool, append([]string{"check", "rules"}, rules...)...)
	})
	t.Run("prometheus.yml loads with its rule files", func(t *testing.T) {
		runTool(t, root, promtool, "check", "config", filepath.Join(root, "deploy/prometheus/prometheus.yml"))
	})
	t.Run("the rule unit tests pass", func(t *testing.T) {
		runTool(t, root, promtool, append([]string{"test", "rules"}, tests...)...)
	})
	t.Run("every alert says how bad it is, what happened and what to check", func(t *testing.T) {
		for _, r := range loadRules(t, rules) {
			if r.Alert == "" {
				continue
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: alert %s has severity %q, want critical (page) or warning (ticket)", r.file, r.Alert, s)
			}
			for _, a := range []string{"summary", "description", "runbook"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s: alert %s has no %s annotation", r.file, r.Alert, a)
				}
			}
			if !strings.HasPrefix(r.Alert, "Doorbell") {
				t.Errorf("%s: alert %s does not start with Doorbell; the dashboard's alert panel would miss it", r.file, r.Alert)
			}
		}
	})
	t.Run("every alert has a test where it fires and one where it stays quiet", func(t *testing.T) {
		fires, quiet := map[string]bool{}, map[string]bool{}
		for _, f := range tests {
			var tf ruleTestFile
			decodeYAMLFile(t, f, &tf)
			for _, tc := range tf.Tests {
				for _, a := range tc.AlertRuleTests {
					if len(a.ExpAlerts) > 0 {
						fires[a.Alertname] = true
					} else {
						quiet[a.Alertname] = true
					}
				}
			}
		}
		for _, r := range loadRules(t, rules) {
			if r.Alert == "" {
				continue
			}
			if !fires[r.Alert] {
				t.Errorf("%s: no unit test provokes alert %s", r.file, r.Alert)
			}
			if !quiet[r.Alert] {
				t.Errorf("%s: no unit test shows alert %s staying quiet", r.file, r.Alert)
			}
		}
	})
	t.Run("the rules and the dashboard leave the same login results out of the SLO", func(t *testing.T) {
		// The exclusion list is repeated in every login SLI expression; one
		// edited copy would make the alerts and the dashboard disagree.
		var exprs []string
		for _, r := range loadRules(t, rules) {
			exprs = append(exprs, r.Expr)
		}
		for _, p := range loadDashboard(t, root).queryPanels() {
			for _, tg := range p.Targets {
				exprs = append(exprs, tg.Expr)
			}
		}
		lists := map[string]int{}
		for _, e := range exprs {
			for _, m := range loginExclusion.FindAllStringSubmatch(e, -1) {
				lists[m[1]]++
			}
		}
		if len(lists) != 1 {
			t.Errorf("doorbell_gateway_logins_total{result!~...} lists differ (list: uses): %v", lists)
		}
		for l := range lists {
			for _, must := range []string{"access_denied", "email_unverified"} {
				if !slices.Contains(strings.Split(l, "|"), must) {
					t.Errorf("the SLO counts %s, which the person causes: %q", must, l)
				}
			}
		}
	})
	t.Run("every recording rule has an expected value in a test", func(t *testing.T) {
		var exprs []string
		for _, f := range tests {
			var tf ruleTestFile
			decodeYAMLFile(t, f, &tf)
			for _, tc := range tf.Tests {
				for _, e := range tc.PromQLExprTests {
					if len(e.ExpSamples) > 0 {
						exprs = append(exprs, e.Expr)
					}
				}
			}
		}
		for _, r := range loadRules(t, rules) {
			if r.Record == "" {
				continue
			}
			if !slices.ContainsFunc(exprs, func(e string) bool { return mentionsMetric(e, r.Record) }) {
				t.Errorf("%s: no promql_expr_test expects a value of %s", r.file, r.Record)
			}
		}
	})
}

// ---- the rule files ----

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

type rule struct {
	Record      string            `yaml:"record"`
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
	file        string
	group       string
}

// loadRules returns every rule of files, in order.
func loadRules(t *testing.T, files []string) []rule {
	t.Helper()
	var out []rule
	for _, f := range files {
		var rf ruleFile
		decodeYAMLFile(t, f, &rf)
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				r.file, r.group = filepath.Base(f), g.Name
				out = append(out, r)
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("no rules in %v", files)
	}
	return out
}

// ruleGroups returns the names of the groups in files.
func ruleGroups(t *testing.T, files []string) []string {
	t.Helper()
	var names []string
	for _, f := range files {
		var rf ruleFile
		decodeYAMLFile(t, f, &rf)
		for _, g := range rf.Groups {
			names = append(names, g.Name)
		}
	}
	return names
}

// ruleTestFile is the part of a promtool test file these tests look at.
type ruleTestFile struct {
	Tests []struct {
		Name           string `yaml:"name"`
		AlertRuleTests []struct {
			Alertname string `yaml:"alertname"`
			ExpAlerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
		PromQLExprTests []struct {
			Expr       string `yaml:"expr"`
			ExpSamples []any  `yaml:"exp_samples"`
		} `yaml:"promql_expr_test"`
	} `yaml:"tests"`
}

// metricNames returns the metric names an expression mentions: identifiers
// made of name characters (colons included, so that a recorded name such as
// doorbell:x:rate5m is one name) that start with prefix. Label values in
// quotes are skipped.
func metricNames(expr, prefix string) []string {
	var names []string
	inQuote := byte(0)
	start := -1
	isName := func(c byte) bool {
		return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
	}
	flush := func(end int) {
		if start >= 0 {
			if n := expr[start:end]; strings.HasPrefix(n, prefix) && !slices.Contains(names, n) {
				names = append(names, n)
			}
			start = -1
		}
	}
	for i := 0; i < len(expr); i++ {
		c := expr[i]
		switch {
		case inQuote != 0:
			if c == '\\' {
				i++
			} else if c == inQuote {
				inQuote = 0
			}
		case c == '"' || c == '\'' || c == '`':
			flush(i)
			inQuote = c
		case isName(c):
			if start < 0 {
				start = i
			}
		default:
			flush(i)
		}
	}
	flush(len(expr))
	return names
}

func mentionsMetric(expr, name string) bool {
	return slices.Contains(metricNames(expr, name), name)
}

// ---- tools ----

// requireTool returns the path of a system tool from a Debian package. When it
// is missing the test is skipped on a workstation, loudly, and fails in CI
// (CI set): make skips fail in CI.
func requireTool(t *testing.T, name, debianPackage string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if p := "/usr/bin/" + name; fileExists(p) {
		return p
	}
	missingTool(t, fmt.Sprintf("%s is not installed, so this test checks NOTHING; install it with: apt-get install %s", name, debianPackage))
	return ""
}

// missingTool skips the test on a workstation, loudly, and fails it in CI
// (CI set), where .ci/run and make provide every tool.
func missingTool(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(msg + " (CI is set: a missing tool is a failure there, not a skip)")
	}
	t.Skip("SKIPPED: " + msg)
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

func toolVersion(t *testing.T, tool string) string {
	t.Helper()
	out, err := exec.Command(tool, "--version").CombinedOutput()
	if err != nil {
		return tool + " (version unknown)"
	}
	first, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(first)
}

// runTool runs a tool in dir, bounded, and fails the test with its output
// when it exits non-zero.
func runTool(t *testing.T, dir, tool string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(tool), strings.Join(args, " "), err, out.String())
	}
	t.Logf("%s %s:\n%s", filepath.Base(tool), args[0], out.String())
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// globFiles returns the files matching pattern (relative to root), or fails.
func globFiles(t *testing.T, root, pattern string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root, filepath.FromSlash(pattern)))
	if err != nil || len(files) == 0 {
		t.Fatalf("no files match %s (err %v)", pattern, err)
	}
	return files
}
