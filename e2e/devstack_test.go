package e2e

import (
	"context"
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
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// devstack is `make run`: the real bin/devstack running the real service
// binaries, every address on a free loopback port.
type devstack struct {
	proc *process
	// banner maps each line of the banner ("Sign in", "Dashboard", …) to
	// what follows its colon, trimmed.
	banner map[string]string
}

// startDevstack builds devstack and runs it as `make run` does, from the
// repository root's point of view (-deploy), with its data in a temporary
// folder, and waits for its banner. It is stopped (SIGTERM, bounded) when
// the test ends.
func startDevstack(t *testing.T) *devstack {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "devstack")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = filepath.Join(repoRoot(t), "devstack")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build devstack: %v\n%s", err, out)
	}
	args := []string{
		"-gateway", binaries.gateway, "-worker", binaries.worker,
		"-data", filepath.Join(dir, "data"), "-deploy", filepath.Join(repoRoot(t), "deploy"),
	}
	for _, flag := range []string{"nats-addr", "idp-addr", "smtp-addr", "inbox-addr", "gateway-addr",
		"gateway-admin-addr", "worker-admin-addr", "prometheus-addr"} {
		args = append(args, "-"+flag, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	}
	d := &devstack{proc: startProcess(t, "devstack", bin, nil, args...)}
	eventually(t, 90*time.Second, "devstack's banner", func() bool {
		return strings.Contains(d.proc.out.String(), "Press Ctrl-C to stop.")
	}, d.proc.out.String)
	d.banner = parseBanner(d.proc.out.String())
	return d
}

// parseBanner reads the "  Name: value" lines between "Doorbell is
// running." and "Press Ctrl-C to stop.".
func parseBanner(out string) map[string]string {
	_, banner, _ := strings.Cut(out, "Doorbell is running.\n")
	banner, _, _ = strings.Cut(banner, "Press Ctrl-C to stop.")
	lines := map[string]string{}
	for line := range strings.Lines(banner) {
		if name, value, ok := strings.Cut(line, ":"); ok && strings.HasPrefix(line, "  ") {
			lines[strings.TrimSpace(name)] = strings.TrimSpace(value)
		}
	}
	return lines
}

// link is the first word of a banner line: the URL on "Sign in:   URL  (…)".
func (d *devstack) link(t *testing.T, name string) string {
	t.Helper()
	value, ok := d.banner[name]
	if !ok {
		t.Fatalf("devstack's banner has no %q line:\n%s", name, d.proc.out.String())
	}
	first, _, _ := strings.Cut(value, " ")
	if !strings.HasPrefix(first, "http://127.0.0.1:") {
		t.Fatalf("devstack's %s line is %q, want a link to 127.0.0.1", name, value)
	}
	return first
}

// The dashboard of `make run`, opened as a person would: one sign-in
// through the dev identity provider, then the banner's Dashboard link in
// headless Chromium. The page must be Prometheus's graph page showing the
// five key panels, each as a graph with data: no error, no "No datapoints
// found", a line drawn. On failure the test logs the path of a screenshot
// of the page and the page's text.
func TestMakeRunDashboardInChromium(t *testing.T) {
	requireTool(t, "chromium", "chromium")
	requireTool(t, "prometheus", "prometheus")
	d := startDevstack(t)
	prom := &promServer{base: strings.TrimSuffix(d.link(t, "Prometheus"), "/"), client: &http.Client{Timeout: 10 * time.Second}}
	dashboard := d.link(t, "Dashboard")
	t.Logf("Dashboard: %s", dashboard)

	// A person signs in once Prometheus watches: a counter it first sees at
	// 1, not 0, has no increase to graph.
	eventually(t, 60*time.Second, "Prometheus to scrape both services", func() bool {
		return prom.value(t, `count(up{job=~"auth-gateway|mail-worker"} == 1)`) == 2
	})
	const email = "dashboard@example.test"
	gateway := strings.TrimSuffix(d.link(t, "Sign in"), "/")
	if p := newBrowser(t).signIn(gateway, email, true); p.status != http.StatusOK || !strings.Contains(p.body, "Signed in as") {
		t.Fatalf("sign-in: %s status %d:\n%s", p.url, p.status, p.body)
	}
	// Prometheus has scraped the sign-in and its email once every graph's
	// query has a value: a page opened before would rightly show gaps.
	exprs := graphExprs(t, dashboard)
	waitForValues(t, prom, exprs, 90*time.Second)

	ctx := startChromium(t, 2*time.Minute).ctx
	graphs, err := openGraphPage(ctx, dashboard, len(exprs))
	if err != nil {
		t.Errorf("the dashboard did not show %v", err)
	}
	if len(graphs) != len(exprs) {
		t.Errorf("the page shows %d graphs, the link asks for %d", len(graphs), len(exprs))
	}
	for _, panel := range []struct{ name, metric string }{
		{"sign-ins by result", "doorbell_gateway_logins_total"},
		{"emails by result", "doorbell_mailworker_emails_total"},
		{"sign-in to email p99", "doorbell_mailworker_login_to_email_seconds_bucket"},
		{"backlog", "doorbell_mailworker_consumer_pending_messages"},
		{"dead letters", "doorbell_mailworker_deadletters_total"},
	} {
		if !slices.ContainsFunc(graphs, func(g promGraph) bool { return mentionsMetric(g.Expr, panel.metric) }) {
			t.Errorf("no graph of %s (%s) on the page", panel.name, panel.metric)
		}
	}
	for _, g := range graphs {
		if problem := g.problem(); problem != "" {
			t.Errorf("graph %q: %s", g.Expr, problem)
		}
	}
	if t.Failed() || os.Getenv("DOORBELL_SCREENSHOTS") != "" {
		reportPage(ctx, t, "dashboard")
	}
}

// waitForValues waits, within a bound, until every expression has had a
// value for a while: now and 15 seconds ago, enough for a graph to draw a
// line rather than a dot. One that never does is logged and left for the
// caller's checks to report as a person would see it.
func waitForValues(t *testing.T, prom *promServer, exprs []string, within time.Duration) {
	t.Helper()
	steady := func(expr string) bool {
		now := time.Now()
		return prom.hasValue(expr, now) && prom.hasValue(expr, now.Add(-15*time.Second))
	}
	deadline := time.Now().Add(within)
	for _, expr := range exprs {
		for !steady(expr) {
			if time.Now().After(deadline) {
				t.Logf("after %s Prometheus still has no value for %s", within, expr)
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// hasValue reports whether expr has a value at that time that is a number.
func (p *promServer) hasValue(expr string, at time.Time) bool {
	res, err := p.queryAt(expr, at)
	return err == nil && slices.ContainsFunc(res, func(s sample) bool { return !math.IsNaN(s.value) })
}

// graphExprs are the expressions a /graph link preloads (g0.expr, g1.expr,
// …), in order.
func graphExprs(t *testing.T, link string) []string {
	t.Helper()
	u, err := url.Parse(link)
	if err != nil {
		t.Fatalf("link %q: %v", link, err)
	}
	var exprs []string
	for i := 0; u.Query().Has("g" + strconv.Itoa(i) + ".expr"); i++ {
		exprs = append(exprs, u.Query().Get("g"+strconv.Itoa(i)+".expr"))
	}
	if len(exprs) == 0 {
		t.Fatalf("link %q preloads no expressions (g0.expr, …)", link)
	}
	return exprs
}

// promGraph is what one graph of Prometheus's graph page shows.
type promGraph struct {
	Expr     string   `json:"expr"`     // the expression in its text box
	GraphTab bool     `json:"graphTab"` // the Graph tab, not Console, is open
	Settled  bool     `json:"settled"`  // its query has been answered
	Error    string   `json:"error"`    // the red box under the expression
	Lines    int      `json:"lines"`    // series drawn with at least one segment
	Legend   []string `json:"legend"`   // the series under the graph
}

// problem says what a person would find wrong with the graph, or "".
func (g promGraph) problem() string {
	switch {
	case !g.Settled:
		return "its query was never answered"
	case g.Error != "":
		return "shows the error " + strconv.Quote(g.Error)
	case !g.GraphTab:
		return "shows its Console tab, not a graph"
	case g.Lines == 0 || len(g.Legend) == 0:
		return fmt.Sprintf("draws no line (%d lines, legend %q)", g.Lines, g.Legend)
	}
	return ""
}

// classicGraphs reads every graph on the graph page of Prometheus's
// classic UI, the one Debian's prometheus package serves.
const classicGraphs = `() => Array.from(document.querySelectorAll(".graph_wrapper")).map(w => {
	const shown = el => el !== null && el.offsetParent !== null;
	const error = w.querySelector(".error");
	return {
		expr: w.querySelector("textarea[name=expr]").value,
		graphTab: w.querySelector(".graph_container.active") !== null,
		settled: w.querySelector(".eval_stats").textContent.includes("Total time series"),
		error: shown(error) ? error.textContent.trim() : "",
		lines: Array.from(w.querySelectorAll(".graph_area svg path.path")).filter(p => (p.getAttribute("d") || "").includes("L")).length,
		legend: Array.from(w.querySelectorAll(".legend .label")).map(l => l.textContent.trim()),
	};
})`

// openGraphPage opens a Prometheus graph page and waits (bounded) until
// each of its n graphs has its answer, then returns what they show. On a
// timeout it returns what they showed last and the error.
func openGraphPage(ctx context.Context, link string, n int) ([]promGraph, error) {
	if err := chromedp.Do(ctx, chromedp.Navigate(link)); err != nil {
		return nil, err
	}
	_, waitErr := chromedp.Run(ctx, chromedp.PollFunction[bool](
		`n => { const gs = (`+classicGraphs+`)(); return gs.length >= n && gs.every(g => g.settled); }`,
		chromedp.WithPollingArgs(n), chromedp.WithPollingInterval(200*time.Millisecond), chromedp.WithPollingTimeout(time.Minute)))
	if waitErr != nil {
		waitErr = fmt.Errorf("%d answered graphs within a minute: %w", n, waitErr)
	}
	graphs, err := chromedp.Run(ctx, chromedp.Evaluate[[]promGraph]("("+classicGraphs+")()"))
	if err != nil {
		return nil, err
	}
	return graphs, waitErr
}

// reportPage saves a screenshot of the page and logs its path and the
// page's text. The screenshot goes to $DOORBELL_SCREENSHOTS when set, else
// to a new folder that outlives the test.
func reportPage(ctx context.Context, t *testing.T, name string) {
	t.Helper()
	dir := os.Getenv("DOORBELL_SCREENSHOTS")
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "doorbell-"+name+"-"); err != nil {
			t.Logf("no screenshot: %v", err)
			return
		}
	}
	file := filepath.Join(dir, name+".png")
	if err := saveScreenshot(ctx, file); err != nil {
		t.Logf("no screenshot: %v", err)
	} else {
		t.Logf("screenshot of the page: %s", file)
	}
	// Without its drop-down menus: Prometheus's list every metric name.
	text, err := chromedp.Run(ctx, chromedp.Evaluate[string](
		`document.querySelectorAll("select").forEach(s => s.style.display = "none"), document.body.innerText`))
	if err != nil {
		t.Logf("no page text: %v", err)
		return
	}
	t.Logf("the page's text (drop-down menus left out):\n%s", text)
}
