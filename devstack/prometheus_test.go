package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// generatedConfig is what the tests read back from the Prometheus
// configuration devstack writes.
type generatedConfig struct {
	Global        map[string]any `yaml:"global"`
	RuleFiles     []string       `yaml:"rule_files"`
	Alerting      map[string]any `yaml:"alerting"`
	ScrapeConfigs []struct {
		JobName        string `yaml:"job_name"`
		ScrapeInterval string `yaml:"scrape_interval"`
		MetricsPath    string `yaml:"metrics_path"`
		HonorLabels    bool   `yaml:"honor_labels"`
		StaticConfigs  []struct {
			Targets []string `yaml:"targets"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

// targets maps each job to the addresses it scrapes.
func (c generatedConfig) targets() map[string][]string {
	m := map[string][]string{}
	for _, job := range c.ScrapeConfigs {
		for _, sc := range job.StaticConfigs {
			m[job.JobName] = append(m[job.JobName], sc.Targets...)
		}
	}
	return m
}

func decodeYAMLFile(t *testing.T, file string, out any) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, out); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// requirePrometheus finds the real prometheus binary. Locally a missing one
// skips the test with a loud reason; in CI (CI is set) it fails it, since CI
// installs the package.
func requirePrometheus(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("prometheus")
	if err == nil {
		return path
	}
	const msg = "prometheus not found: install Debian's prometheus (apt-get install prometheus) to run this test"
	if os.Getenv("CI") != "" {
		t.Fatal("CI must run this test: " + msg)
	}
	t.Skip("SKIPPED, NOT PASSED: " + msg)
	return ""
}

// getJSON decodes the body of a 200 answer from url into v.
func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// promLines are the lines of out that came from Prometheus.
func promLines(out string) []string {
	var lines []string
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, "prom    | ") {
			lines = append(lines, line)
		}
	}
	return lines
}

func TestRunStartsPrometheusWhenInstalled(t *testing.T) {
	bin := requirePrometheus(t)
	t.Setenv("LOG_LEVEL", "")
	d := startDevstack(t, "", "-prometheus-bin", bin)
	d.waitFor(d.stdout, "Doorbell is running.")
	prom := "http://" + d.addr["prometheus-addr"]
	if want := "Prometheus: " + prom + "/  (alerts: /alerts, targets: /targets)\n"; !strings.Contains(d.stdout.String(), want) {
		t.Errorf("stdout lacks %q", want)
	}

	resp, err := http.Get(prom + "/-/ready")
	if err != nil {
		t.Fatalf("GET /-/ready: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /-/ready: status %d, want 200", resp.StatusCode)
	}

	// The Dashboard link leads to a page that keeps its graphs (the
	// browser's view of it is e2e's TestMakeRunDashboardInChromium).
	dashboard := dashboardURL(d.addr["prometheus-addr"], dashboardGraphs)
	if want := "  Dashboard:  " + dashboard + "\n"; !strings.Contains(d.stdout.String(), want) {
		t.Errorf("stdout lacks %q", want)
	}
	resp, err = http.Get(dashboard)
	if err != nil {
		t.Fatalf("GET the dashboard: %v", err)
	}
	resp.Body.Close()
	_, query, _ := strings.Cut(dashboard, "?")
	if end := resp.Request.URL; resp.StatusCode != http.StatusOK || !strings.HasSuffix(end.Path, "/graph") || end.RawQuery != query {
		t.Errorf("GET %s ends at %s with status %d, want 200 at a graph page with the same query", dashboard, resp.Request.URL, resp.StatusCode)
	}

	// Both jobs, under deploy's names, scrape the services' admin
	// addresses, and the scrapes succeed.
	want := map[string]string{
		"auth-gateway": "http://" + d.addr["gateway-admin-addr"] + "/metrics",
		"mail-worker":  "http://" + d.addr["worker-admin-addr"] + "/metrics",
	}
	var got map[string]string
	var health string
	deadline := time.Now().Add(time.Minute)
	for {
		var targets struct {
			Data struct {
				ActiveTargets []struct {
					Labels    map[string]string `json:"labels"`
					ScrapeURL string            `json:"scrapeUrl"`
					Health    string            `json:"health"`
					LastError string            `json:"lastError"`
				} `json:"activeTargets"`
			} `json:"data"`
		}
		if err := getJSON(prom+"/api/v1/targets", &targets); err != nil {
			t.Fatal(err)
		}
		got, health = map[string]string{}, ""
		for _, tg := range targets.Data.ActiveTargets {
			got[tg.Labels["job"]] = tg.ScrapeURL
			if tg.Health != "up" {
				health += fmt.Sprintf(" %s is %s (%s);", tg.Labels["job"], tg.Health, tg.LastError)
			}
		}
		if maps.Equal(got, want) && health == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a minute after start, Prometheus's targets are %v (want %v);%s", got, want, health)
		}
		time.Sleep(250 * time.Millisecond)
	}

	// deploy's rule groups are loaded, evaluated every 5 seconds.
	var ruleFile struct {
		Groups []struct {
			Name string `yaml:"name"`
		} `yaml:"groups"`
	}
	files, _ := filepath.Glob(filepath.Join(d.deploy, "prometheus", "rules", "*.yml"))
	var wantGroups []string
	for _, f := range files {
		decodeYAMLFile(t, f, &ruleFile)
		for _, g := range ruleFile.Groups {
			wantGroups = append(wantGroups, g.Name+" from "+f+" every 5s")
		}
	}
	if len(wantGroups) == 0 {
		t.Fatal("deploy/prometheus/rules holds no rule groups")
	}
	var rules struct {
		Data struct {
			Groups []struct {
				Name     string  `json:"name"`
				File     string  `json:"file"`
				Interval float64 `json:"interval"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := getJSON(prom+"/api/v1/rules", &rules); err != nil {
		t.Fatal(err)
	}
	var gotGroups []string
	for _, g := range rules.Data.Groups {
		gotGroups = append(gotGroups, fmt.Sprintf("%s from %s every %gs", g.Name, g.File, g.Interval))
	}
	slices.Sort(gotGroups)
	slices.Sort(wantGroups)
	if !slices.Equal(gotGroups, wantGroups) {
		t.Errorf("rule groups:\n%q\nwant\n%q", gotGroups, wantGroups)
	}

	if err := d.stop(); err != nil {
		t.Fatalf("run after cancel = %v, want nil", err)
	}
	if !strings.Contains(d.stderr.String(), "msg=stopped service=prom\n") {
		t.Error("stderr does not report Prometheus stopped cleanly")
	}
	// Prometheus logs a dozen records at info level while it starts and
	// stops; without LOG_LEVEL=debug none is shown.
	for _, line := range promLines(d.stdout.String() + d.stderr.String()) {
		if strings.Contains(line, "level=info") {
			t.Errorf("routine Prometheus record shown: %q", line)
		}
	}
	d.assertPortsFree()
}

// noDashboard is the banner's Dashboard line when no Prometheus runs.
const noDashboard = "  Dashboard:  none without Prometheus (see the line above)\n"

func TestRunWithoutPrometheus(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	noDeploy := t.TempDir()

	tests := []struct {
		name    string
		setup   func(t *testing.T)
		args    []string
		banner  string // the Prometheus line of the banner
		warning string // on stderr; empty: no warning
	}{
		{
			name:   "when it is not installed",
			setup:  func(t *testing.T) { t.Setenv("PATH", t.TempDir()) },
			args:   []string{"-prometheus-bin", "prometheus"},
			banner: "  Prometheus: not installed; to get it: sudo apt-get install prometheus\n",
		},
		{
			name:    "when its port is taken",
			args:    []string{"-prometheus-bin", self, "-prometheus-addr", taken.Addr().String()},
			banner:  "  Prometheus: not started (see the warning above)\n",
			warning: `msg="starting without Prometheus" reason="prometheus address ` + taken.Addr().String() + `: cannot listen: bind: address already in use; is another Prometheus or devstack running? Stop it or pass -prometheus-addr"`,
		},
		{
			name:    "when the deploy directory is elsewhere",
			args:    []string{"-prometheus-bin", self, "-deploy", noDeploy},
			banner:  "  Prometheus: not started (see the warning above)\n",
			warning: `reason="prometheus configuration: open ` + filepath.Join(noDeploy, "prometheus", "prometheus.yml") + `: no such file or directory; run devstack from the repository root or pass -deploy DIR"`,
		},
		{
			name:   "when it is turned off",
			args:   []string{"-prometheus=false"},
			banner: "  Prometheus: off (-prometheus=false)\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup(t)
			}
			d := startDevstack(t, "", tt.args...)
			d.waitFor(d.stdout, "Doorbell is running.")
			out := d.stdout.String()
			if !strings.Contains(out, "  NATS:       nats://"+d.addr["nats-addr"]+"\n"+tt.banner+noDashboard+"Press Ctrl-C to stop.") {
				t.Errorf("the banner lacks %q followed by %q", tt.banner, noDashboard)
			}
			if tt.warning != "" && !strings.Contains(d.stderr.String(), tt.warning) {
				t.Errorf("stderr lacks the warning %s", tt.warning)
			}
			if tt.warning == "" && strings.Contains(d.stderr.String(), "level=WARN") {
				t.Error("stderr has a warning although nothing needs fixing")
			}
			if d.fakeRan("prometheus") {
				t.Error("Prometheus was started")
			}
			if !d.fakeRan("gateway") || !d.fakeRan("worker") {
				t.Error("the services did not run")
			}
			if err := d.stop(); err != nil {
				t.Fatalf("run after cancel = %v, want nil", err)
			}
			d.assertPortsFree()
		})
	}
}

func TestRunKeepsGoingWhenPrometheusExits(t *testing.T) {
	t.Setenv("LOG_LEVEL", "")
	d := startDevstack(t, "prometheus-exits")
	d.waitFor(d.stderr, `msg="exited unexpectedly; the rest of the stack keeps running" service=prom status="exit status 2"`)
	d.waitFor(d.stdout, "Doorbell is running.")
	if want := "  Prometheus: exited (see the prom lines above)\n" + noDashboard; !strings.Contains(d.stdout.String(), want) {
		t.Errorf("the banner lacks %q", want)
	}

	// The services run on.
	for _, addr := range []string{d.addr["gateway-admin-addr"], d.addr["worker-admin-addr"]} {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			t.Fatalf("after Prometheus exited: %v", err)
		}
		resp.Body.Close()
	}

	// Its warnings and errors are shown, its routine records are not.
	lines := promLines(d.stderr.String())
	for _, want := range []string{`level=warn msg="fake warning"`, `level=error msg="fake error"`} {
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, want) }) {
			t.Errorf("Prometheus's %s was not shown", want)
		}
	}
	if slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, "level=info") }) {
		t.Error("Prometheus's info record was shown without LOG_LEVEL=debug")
	}

	if err := d.stop(); err != nil {
		t.Fatalf("run after cancel = %v, want nil", err)
	}
	if n := strings.Count(d.stderr.String(), "service=prom"); n != 1 {
		t.Errorf("stderr reports Prometheus's end %d times, want once", n)
	}
	d.assertPortsFree()
}

func TestDevstackPrometheusConfig(t *testing.T) {
	targets := map[string]string{"auth-gateway": "127.0.0.1:19101", "mail-worker": "127.0.0.1:19102"}

	t.Run("keeps deploy's jobs and rules and scrapes devstack's addresses", func(t *testing.T) {
		deployFile := filepath.Join(deployDir(t), "prometheus", "prometheus.yml")
		var deploy generatedConfig
		decodeYAMLFile(t, deployFile, &deploy)
		src, _ := os.ReadFile(deployFile)
		out, err := devstackPrometheusConfig(deployFile, src, targets)
		if err != nil {
			t.Fatal(err)
		}
		var c generatedConfig
		if err := yaml.Unmarshal(out, &c); err != nil {
			t.Fatalf("%v in\n%s", err, out)
		}
		if c.Global["scrape_interval"] != "5s" || c.Global["evaluation_interval"] != "5s" {
			t.Errorf("global = %v, want scrape and evaluation intervals of 5s", c.Global)
		}
		var jobs, deployJobs []string
		for _, job := range c.ScrapeConfigs {
			jobs = append(jobs, job.JobName)
			if job.ScrapeInterval != "" {
				t.Errorf("job %s overrides the 5s interval with %s", job.JobName, job.ScrapeInterval)
			}
		}
		for _, job := range deploy.ScrapeConfigs {
			deployJobs = append(deployJobs, job.JobName)
		}
		if !slices.Equal(jobs, deployJobs) {
			t.Errorf("jobs %q, want deploy's %q", jobs, deployJobs)
		}
		if got, want := c.targets(), map[string][]string{"auth-gateway": {"127.0.0.1:19101"}, "mail-worker": {"127.0.0.1:19102"}}; !maps.EqualFunc(got, want, slices.Equal) {
			t.Errorf("targets %v, want %v", got, want)
		}
		if len(c.RuleFiles) != len(deploy.RuleFiles) {
			t.Fatalf("rule_files %q, want one for each of deploy's %q", c.RuleFiles, deploy.RuleFiles)
		}
		for i, pattern := range c.RuleFiles {
			want := filepath.Join(filepath.Dir(deployFile), deploy.RuleFiles[i])
			if pattern != want {
				t.Errorf("rule_files[%d] = %q, want %q", i, pattern, want)
			}
		}
	})

	t.Run("keeps what it does not rewrite", func(t *testing.T) {
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, "rules", "a.yml"), "groups: []\n")
		src := `
global:
  scrape_interval: 1m
  external_labels: {site: lab}
alerting:
  alertmanagers:
    - static_configs: [{targets: ["alertmanager:9093"]}]
rule_files: ["rules/*.yml", "` + filepath.Join(dir, "rules", "a.yml") + `"]
scrape_configs:
  - job_name: auth-gateway
    scrape_interval: 30s
    metrics_path: /admin/metrics
    honor_labels: true
    static_configs: [{targets: ["a:1", "b:2"]}, {targets: ["c:3"]}]
`
		out, err := devstackPrometheusConfig(filepath.Join(dir, "prometheus.yml"), []byte(src), targets)
		if err != nil {
			t.Fatal(err)
		}
		var c generatedConfig
		if err := yaml.Unmarshal(out, &c); err != nil {
			t.Fatalf("%v in\n%s", err, out)
		}
		job := c.ScrapeConfigs[0]
		for _, problem := range []struct {
			bad  bool
			what string
		}{
			{c.Global["scrape_interval"] != "5s", "global scrape_interval not 5s"},
			{fmt.Sprint(c.Global["external_labels"]) != "map[site:lab]", "external_labels lost"},
			{c.Alerting == nil, "alerting lost"},
			{!slices.Equal(c.RuleFiles, []string{filepath.Join(dir, "rules", "*.yml"), filepath.Join(dir, "rules", "a.yml")}), fmt.Sprintf("rule_files %q", c.RuleFiles)},
			{job.ScrapeInterval != "", "job scrape_interval kept"},
			{job.MetricsPath != "/admin/metrics", "metrics_path lost"},
			{!job.HonorLabels, "honor_labels lost"},
			{!slices.Equal(c.targets()["auth-gateway"], []string{"127.0.0.1:19101"}), fmt.Sprintf("targets %v", c.targets())},
		} {
			if problem.bad {
				t.Errorf("%s in\n%s", problem.what, out)
			}
		}
	})

	for _, tt := range []struct {
		name, src, want string
	}{
		{"refuses a job devstack does not run",
			"scrape_configs: [{job_name: nats, static_configs: [{targets: [nats:8222]}]}]",
			`job "nats": devstack runs nothing by that name to scrape`},
		{"refuses rule files that match nothing",
			"rule_files: [alerts/*.yml]\nscrape_configs: [{job_name: mail-worker}]",
			`rule_files "alerts/*.yml" matches no files`},
		{"refuses a configuration without jobs", "global: {}", "no scrape_configs"},
		{"refuses what is not YAML", "scrape_configs: [", "prometheus.yml: yaml:"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := devstackPrometheusConfig(filepath.Join(t.TempDir(), "prometheus.yml"), []byte(tt.src), targets)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one saying %q", err, tt.want)
			}
		})
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestRoutinePrometheusLine(t *testing.T) {
	for _, tt := range []struct {
		line    string
		routine bool
	}{
		{`ts=2026-01-02T03:04:05Z caller=main.go:512 level=info msg="Starting Prometheus Server"` + "\n", true},
		{`ts=2026-01-02T03:04:05Z caller=main.go:512 level=debug msg="scrape"` + "\n", true},
		{`time=2026-01-02T03:04:05Z level=INFO source=main.go:1 msg="Starting Prometheus Server"` + "\n", true},
		{`ts=2026-01-02T03:04:05Z caller=main.go:823 level=warn msg="Received SIGTERM, exiting gracefully..."` + "\n", false},
		{`time=2026-01-02T03:04:05Z level=ERROR msg="Error loading config"` + "\n", false},
		{`ts=2026-01-02T03:04:05Z level=error msg="not level=info but an error"` + "\n", false},
		{"prometheus: error: unknown long flag '--nope', try --help\n", false},
		{"panic: runtime error: index out of range\n", false},
		{`ts=2026-01-02T03:04:05Z level=information msg="not a level we know"` + "\n", false},
	} {
		if got := routinePrometheusLine([]byte(tt.line)); got != tt.routine {
			t.Errorf("routinePrometheusLine(%q) = %v, want %v", tt.line, got, tt.routine)
		}
	}
}
