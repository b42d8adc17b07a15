package e2e

// The Grafana dashboard and the alert rules, checked against a real
// Prometheus (Debian's /usr/bin/prometheus) that scrapes the real services
// during real sign-ins: every panel query must parse and show data, every
// rule must load, evaluate and stay quiet while everything is healthy.

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const dashboardFile = "deploy/grafana/dashboards/doorbell.json"

// grafanaVars are what the test puts in place of Grafana's variables: the
// windows a 1s-scrape Prometheus fills within a minute.
var grafanaVars = strings.NewReplacer(
	"${__rate_interval}", "1m", "$__rate_interval", "1m",
	"${__interval}", "1m", "$__interval", "1m",
	"${__range}", "5m", "$__range", "5m",
	"${datasource}", "prometheus", "$datasource", "prometheus",
)

// ---- the dashboard file ----

type dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name    string `json:"name"`
			Type    string `json:"type"`
			Query   string `json:"query"`
			Current struct {
				Value string `json:"value"`
			} `json:"current"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID          int         `json:"id"`
	Type        string      `json:"type"`
	Title       string      `json:"title"`
	Description string      `json:"description"`
	Datasource  *datasource `json:"datasource"`
	GridPos     struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID      string      `json:"refId"`
		Expr       string      `json:"expr"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // of a collapsed row
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

func loadDashboard(t *testing.T, root string) *dashboard {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, dashboardFile))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return &d
}

// queryPanels returns every panel with queries, rows flattened, in order.
func (d *dashboard) queryPanels() []panel {
	var out []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			out = append(out, p)
		}
	}
	walk(d.Panels)
	return out
}

// The dashboard as Grafana's provisioning would load it, checked without
// Prometheus: fixed uid, one data source variable that defaults to the
// provisioned data source, a description on every panel.
func TestDashboardIsProvisionable(t *testing.T) {
	root := repoRoot(t)
	d := loadDashboard(t, root)
	if d.UID != "doorbell" || d.Title != "Doorbell" {
		t.Errorf("uid %q, title %q; links and docs/dashboard.md expect uid doorbell, title Doorbell", d.UID, d.Title)
	}

	var provisioned struct {
		Datasources []struct {
			Name string `yaml:"name"`
			UID  string `yaml:"uid"`
			Type string `yaml:"type"`
		} `yaml:"datasources"`
	}
	decodeYAMLFile(t, filepath.Join(root, "deploy/grafana/provisioning/datasources/prometheus.yaml"), &provisioned)
	var promUID string
	for _, ds := range provisioned.Datasources {
		if ds.Type == "prometheus" {
			promUID = ds.UID
		}
	}
	if promUID == "" {
		t.Fatal("deploy/grafana/provisioning/datasources/prometheus.yaml provisions no prometheus data source with a uid")
	}
	found := false
	for _, v := range d.Templating.List {
		if v.Name == "datasource" {
			found = true
			if v.Type != "datasource" || v.Query != "prometheus" || v.Current.Value != promUID {
				t.Errorf("variable datasource: type %q query %q default %q, want a prometheus data source variable defaulting to the provisioned uid %q",
					v.Type, v.Query, v.Current.Value, promUID)
			}
		}
	}
	if !found {
		t.Error("no datasource variable")
	}

	panels := d.queryPanels()
	if len(panels) < 20 {
		t.Errorf("only %d panels", len(panels))
	}
	ids := map[int]string{}
	for _, p := range panels {
		where := fmt.Sprintf("panel %q", p.Title)
		if prev, dup := ids[p.ID]; dup {
			t.Errorf("%s: id %d is also %q's", where, p.ID, prev)
		}
		ids[p.ID] = p.Title
		if len(strings.TrimSpace(p.Description)) < 40 {
			t.Errorf("%s: no description saying how to read it", where)
		}
		if p.GridPos.X+p.GridPos.W > 24 || p.GridPos.W <= 0 || p.GridPos.H <= 0 {
			t.Errorf("%s: gridPos %+v does not fit the 24-column grid", where, p.GridPos)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no queries", where)
		}
		for _, ds := range []*datasource{p.Datasource} {
			if ds == nil || ds.UID != "${datasource}" {
				t.Errorf("%s: data source %+v, want uid ${datasource}", where, ds)
			}
		}
		for _, tg := range p.Targets {
			if tg.Datasource == nil || tg.Datasource.UID != "${datasource}" {
				t.Errorf("%s, query %s: data source %+v, want uid ${datasource}", where, tg.RefID, tg.Datasource)
			}
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("%s, query %s: empty expr", where, tg.RefID)
			}
			if e := grafanaVars.Replace(tg.Expr); strings.Contains(e, "$") {
				t.Errorf("%s, query %s: uses a variable this test does not know: %s", where, tg.RefID, tg.Expr)
			}
		}
	}
	var rows []string
	for _, p := range d.Panels {
		if p.Type == "row" {
			rows = append(rows, p.Title)
		}
	}
	if want := []string{"Overview and SLOs", "Logins", "Event pipeline", "Email delivery"}; !slices.Equal(rows, want) {
		t.Errorf("rows %q, want %q", rows, want)
	}
}

func TestDashboardAndAlertsAgainstRealPrometheus(t *testing.T) {
	promBin := requireTool(t, "prometheus", "prometheus")
	root := repoRoot(t)
	d := loadDashboard(t, root)
	ruleFiles := globFiles(t, root, rulesGlob)

	// A verified user signs in and gets the welcome email, before
	// Prometheus exists: counters it first sees at 1, not 0.
	s := startStack(t)
	first := "prom-first@example.test"
	if p := newBrowser(t).signIn(s.publicURL, first, true); p.status != http.StatusOK || !strings.Contains(p.body, "Signed in as") {
		t.Fatalf("first sign-in: %s status %d:\n%s", p.url, p.status, p.body)
	}
	eventually(t, 60*time.Second, "the first welcome email", func() bool { return len(s.mailTo(first)) == 1 })

	prom := startPrometheus(t, promBin, s.gwAdmin, s.wkAdmin, filepath.Join(root, rulesGlob))
	t.Logf("using %s at %s", toolVersion(t, promBin), prom.base)
	prom.waitTargetsUp(t, map[string]string{"auth-gateway": s.gwAdmin, "mail-worker": s.wkAdmin})

	// A second person signs in while Prometheus watches, so that rates,
	// latency quantiles and the SLIs have something to show.
	second := "prom-second@example.test"
	if p := newBrowser(t).signIn(s.publicURL, second, true); p.status != http.StatusOK || !strings.Contains(p.body, "Signed in as") {
		t.Fatalf("second sign-in: %s status %d:\n%s", p.url, p.status, p.body)
	}
	eventually(t, 60*time.Second, "the second welcome email", func() bool { return len(s.mailTo(second)) == 1 })
	eventually(t, 30*time.Second, "Prometheus to scrape the second sign-in and its email", func() bool {
		return prom.value(t, `sum(doorbell_gateway_logins_total{result="success"})`) >= 2 &&
			prom.value(t, `sum(doorbell_mailworker_emails_total{result="sent"})`) >= 2
	})
	// The recording rules have evaluated on the new samples.
	eventually(t, 30*time.Second, "the SLI recording rules to see the second sign-in", func() bool {
		return prom.value(t, `doorbell:login_success:ratio_rate5m`) == 1 && prom.value(t, `doorbell:email_success:ratio_rate5m`) == 1
	})

	t.Run("every metric name in the dashboard and the rules is exported", func(t *testing.T) {
		exported := prom.metricNames(t)
		recorded := map[string]bool{}
		var exprs []string
		for _, r := range loadRules(t, ruleFiles) {
			if r.Record != "" {
				recorded[r.Record] = true
			}
			exprs = append(exprs, r.Expr)
		}
		for _, p := range d.queryPanels() {
			for _, tg := range p.Targets {
				exprs = append(exprs, tg.Expr)
			}
		}
		seen := map[string]bool{}
		for _, e := range exprs {
			for _, n := range metricNames(e, "doorbell") {
				if seen[n] {
					continue
				}
				seen[n] = true
				switch {
				case exported[n]:
				case recorded[n]:
					t.Errorf("recorded series %s does not exist after the rules ran on real data", n)
				default:
					t.Errorf("%s is used by the dashboard or the rules, but neither service exports it (typo, or renamed in the code?)", n)
				}
			}
		}
		if len(seen) < 20 {
			t.Errorf("found only %d doorbell metric names in the dashboard and rules: %v", len(seen), seen)
		}
	})

	t.Run("every panel query parses and every panel shows data", func(t *testing.T) {
		for _, p := range d.queryPanels() {
			withData := 0
			for _, tg := range p.Targets {
				expr := grafanaVars.Replace(tg.Expr)
				res, err := prom.query(expr)
				if err != nil {
					t.Errorf("panel %q, query %s does not evaluate: %v\n%s", p.Title, tg.RefID, err, expr)
					continue
				}
				// NaN (a quantile of nothing, 0/0) is a gap in Grafana, not data.
				if slices.ContainsFunc(res, func(s sample) bool { return !math.IsNaN(s.value) }) {
					withData++
				}
			}
			if withData == 0 {
				t.Errorf("panel %q shows no data in a healthy run with sign-ins and emails (none of its %d queries returned a number)", p.Title, len(p.Targets))
			}
		}
	})

	// A scrape that misses its 1 s timeout on a loaded machine makes up 0
	// (and so an alert pending) until the next one: the checks of a healthy
	// state below retry for a while, and report what they last saw.
	t.Run("the SLO panels show what happened", func(t *testing.T) {
		var problems []string
		eventually(t, 30*time.Second, "the SLO panels to show a healthy run", func() bool {
			problems = problems[:0]
			for _, c := range []struct{ expr, what string }{
				{`sum by (job) (up{job=~"auth-gateway|mail-worker"})`, "instances up per job"},
				{`doorbell:login_success:ratio_rate5m`, "login success ratio"},
				{`doorbell:email_success:ratio_rate5m`, "email success ratio"},
			} {
				res, err := prom.query(c.expr)
				if err != nil {
					t.Fatalf("%s: %v", c.what, err)
				}
				if len(res) == 0 {
					problems = append(problems, c.what+": no series")
				}
				for _, r := range res {
					if r.value != 1 {
						problems = append(problems, fmt.Sprintf("%s %v = %v, want 1 (every sign-in and email succeeded)", c.what, r.labels, r.value))
					}
				}
			}
			return len(problems) == 0
		}, func() string { return strings.Join(problems, "\n") })
	})

	t.Run("every rule expression parses", func(t *testing.T) {
		for _, r := range loadRules(t, ruleFiles) {
			if _, err := prom.query(r.Expr); err != nil {
				t.Errorf("%s: %s%s: %v", r.file, r.Alert, r.Record, err)
			}
		}
	})

	t.Run("every rule group is loaded and every rule evaluates without error", func(t *testing.T) {
		want := ruleGroups(t, ruleFiles)
		rules := loadRules(t, ruleFiles)
		since := time.Now()
		var groups []promRuleGroup
		// Wait for one evaluation of every rule after this point.
		eventually(t, 30*time.Second, "every rule to be evaluated", func() bool {
			groups = prom.rules(t)
			n := 0
			for _, g := range groups {
				for _, r := range g.Rules {
					if r.LastEvaluation.After(since) {
						n++
					}
				}
			}
			return n >= len(rules)
		})
		var loaded []string
		for _, g := range groups {
			loaded = append(loaded, g.Name)
			for _, r := range g.Rules {
				if r.Health != "ok" || r.LastError != "" {
					t.Errorf("group %s, rule %s: health %q, error %q", g.Name, r.Name, r.Health, r.LastError)
				}
			}
		}
		for _, g := range want {
			if !slices.Contains(loaded, g) {
				t.Errorf("rule group %s is not loaded (loaded: %v)", g, loaded)
			}
		}
	})

	t.Run("no alert fires or is pending in a healthy run", func(t *testing.T) {
		// A pending alert may be one missed scrape; a firing one has held
		// for its whole "for:" and is a real failure at once.
		var active []string
		eventually(t, 30*time.Second, "no alert to be firing or pending", func() bool {
			active = active[:0]
			for _, a := range prom.alerts(t) {
				if a.State == "firing" {
					t.Fatalf("alert %s is firing in a healthy run: labels %v, value %s", a.Labels["alertname"], a.Labels, a.Value)
				}
				active = append(active, fmt.Sprintf("alert %s is %s: labels %v, value %s", a.Labels["alertname"], a.State, a.Labels, a.Value))
			}
			return len(active) == 0
		}, func() string { return strings.Join(active, "\n") })
	})
}

// ---- a real Prometheus ----

type promServer struct {
	base   string
	client *http.Client
}

// startPrometheus runs Prometheus on 127.0.0.1 with a generated
// configuration: both admin ports scraped every second under the job names
// of deploy/prometheus/prometheus.yml, the repository's rule files evaluated
// every second, storage in a temporary folder. It is stopped when the test
// ends.
func startPrometheus(t *testing.T, bin, gwAdmin, wkAdmin, rules string) *promServer {
	t.Helper()
	dir := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: auth-gateway
    static_configs:
      - targets: [%q]
  - job_name: mail-worker
    static_configs:
      - targets: [%q]
`, rules, gwAdmin, wkAdmin)
	configFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(configFile, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{}
	cmd := exec.Command(bin,
		"--config.file="+configFile,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--storage.tsdb.retention.time=1h",
	)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("prometheus did not stop within 15s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("---- prometheus output ----\n%s", out.String())
		}
	})
	p := &promServer{base: "http://" + addr, client: &http.Client{Timeout: 10 * time.Second}}
	eventually(t, 60*time.Second, "prometheus to be ready at "+p.base, func() bool {
		select {
		case err := <-done:
			t.Fatalf("prometheus exited: %v\n%s", err, out.String())
		default:
		}
		resp, err := p.client.Get(p.base + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// waitTargetsUp waits until Prometheus has scraped every job's target
// successfully.
func (p *promServer) waitTargetsUp(t *testing.T, want map[string]string) {
	t.Helper()
	var last string
	deadline := time.Now().Add(60 * time.Second)
	for {
		var body struct {
			Data struct {
				ActiveTargets []struct {
					Labels    map[string]string `json:"labels"`
					Health    string            `json:"health"`
					LastError string            `json:"lastError"`
				} `json:"activeTargets"`
			} `json:"data"`
		}
		up := 0
		if err := p.get("/api/v1/targets?state=active", &body); err == nil {
			var states []string
			for _, tg := range body.Data.ActiveTargets {
				states = append(states, fmt.Sprintf("%s %s: %s %s", tg.Labels["job"], tg.Labels["instance"], tg.Health, tg.LastError))
				if want[tg.Labels["job"]] == tg.Labels["instance"] && tg.Health == "up" {
					up++
				}
			}
			last = strings.Join(states, "; ")
		} else {
			last = err.Error()
		}
		if up == len(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gave up after 60s waiting for targets %v to be up; last seen: %s", want, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type sample struct {
	labels map[string]string
	value  float64
}

// query evaluates expr now through /api/v1/query. An error means Prometheus
// refused it (parse or evaluation error) or did not answer.
func (p *promServer) query(expr string) ([]sample, error) {
	return p.queryAt(expr, time.Time{})
}

// queryAt is query at the given time; the zero time is now.
func (p *promServer) queryAt(expr string, at time.Time) ([]sample, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	form := url.Values{"query": {expr}}
	if !at.IsZero() {
		form.Set("time", strconv.FormatFloat(float64(at.UnixMilli())/1000, 'f', 3, 64))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.base+"/api/v1/query",
		strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Status    string `json:"status"`
		ErrorType string `json:"errorType"`
		Error     string `json:"error"`
		Data      struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("HTTP %d, undecodable answer: %w", resp.StatusCode, err)
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("%s: %s", body.ErrorType, body.Error)
	}
	switch body.Data.ResultType {
	case "vector":
		var vec []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		if err := json.Unmarshal(body.Data.Result, &vec); err != nil {
			return nil, err
		}
		out := make([]sample, 0, len(vec))
		for _, v := range vec {
			s, _ := v.Value[1].(string)
			f, err := strconv.ParseFloat(s, 64)
			if err != nil {
				return nil, fmt.Errorf("value %v: %w", v.Value[1], err)
			}
			out = append(out, sample{labels: v.Metric, value: f})
		}
		return out, nil
	case "scalar":
		var sc [2]any
		if err := json.Unmarshal(body.Data.Result, &sc); err != nil {
			return nil, err
		}
		s, _ := sc[1].(string)
		f, err := strconv.ParseFloat(s, 64)
		return []sample{{value: f}}, err
	default:
		return nil, fmt.Errorf("result type %s, want an instant vector or scalar", body.Data.ResultType)
	}
}

// value returns the single value of expr, or NaN when it has none (or
// Prometheus refused it, which the caller's later checks report).
func (p *promServer) value(t *testing.T, expr string) float64 {
	t.Helper()
	res, err := p.query(expr)
	if err != nil || len(res) != 1 {
		return math.NaN()
	}
	return res[0].value
}

// metricNames returns every metric name Prometheus holds series for.
func (p *promServer) metricNames(t *testing.T) map[string]bool {
	t.Helper()
	var body struct {
		Data []string `json:"data"`
	}
	if err := p.get("/api/v1/label/__name__/values", &body); err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, n := range body.Data {
		names[n] = true
	}
	return names
}

type promRuleGroup struct {
	Name  string `json:"name"`
	Rules []struct {
		Name           string    `json:"name"`
		Health         string    `json:"health"`
		LastError      string    `json:"lastError"`
		LastEvaluation time.Time `json:"lastEvaluation"`
	} `json:"rules"`
}

func (p *promServer) rules(t *testing.T) []promRuleGroup {
	t.Helper()
	var body struct {
		Data struct {
			Groups []promRuleGroup `json:"groups"`
		} `json:"data"`
	}
	if err := p.get("/api/v1/rules", &body); err != nil {
		t.Fatal(err)
	}
	return body.Data.Groups
}

type promAlert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
	Value  string            `json:"value"`
}

func (p *promServer) alerts(t *testing.T) []promAlert {
	t.Helper()
	var body struct {
		Data struct {
			Alerts []promAlert `json:"alerts"`
		} `json:"data"`
	}
	if err := p.get("/api/v1/alerts", &body); err != nil {
		t.Fatal(err)
	}
	return body.Data.Alerts
}

func (p *promServer) get(path string, out any) error {
	resp, err := p.client.Get(p.base + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d", path, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
