package main

import (
	"encoding/json"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestDashboardURL(t *testing.T) {
	graphs := []dashboardGraph{
		{"Sign-ins by provider and result", `sum by (provider, result) (rate(doorbell_gateway_logins_total{result!="success"}[1m]))`},
		{"Odd: & = + % # ?", `a + b == 1`},
	}
	link := dashboardURL("127.0.0.1:19090", graphs)

	u, err := url.Parse(link)
	if err != nil {
		t.Fatal(err)
	}
	if u.Scheme != "http" || u.Host != "127.0.0.1:19090" || u.Path != "/graph" || u.Fragment != "" {
		t.Errorf("link %s: want http://127.0.0.1:19090/graph?…", link)
	}
	want := url.Values{
		"g0.expr":        {"# Sign-ins by provider and result\n" + graphs[0].expr},
		"g0.tab":         {"0"},
		"g0.range_input": {"5m"},
		"g1.expr":        {"# Odd: & = + % # ?\na + b == 1"},
		"g1.tab":         {"0"},
		"g1.range_input": {"5m"},
	}
	if got := u.Query(); !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("parameters:\n%v\nwant\n%v", got, want)
	}

	// Prometheus's classic and React UIs split each parameter at its first
	// "=" and decode the rest with decodeURIComponent after turning "+"
	// into spaces: a value must hold no raw "=" or "&".
	for param := range strings.SplitSeq(u.RawQuery, "&") {
		name, value, _ := strings.Cut(param, "=")
		if strings.Contains(value, "=") {
			t.Errorf("parameter %s holds a raw '=': %q", name, value)
		}
		decoded, err := url.PathUnescape(strings.ReplaceAll(value, "+", " "))
		if err != nil || decoded != want.Get(name) {
			t.Errorf("parameter %s decodes to %q (%v) in the browser, want %q", name, decoded, err, want.Get(name))
		}
	}
}

// The graphs of `make run`'s dashboard are panels of the production one,
// word for word, and the classic UI can show them all in order.
func TestDashboardGraphsAreGrafanaPanels(t *testing.T) {
	file := filepath.Join(deployDir(t), "grafana", "dashboards", "doorbell.json")
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []panel `json:"panels"` // of a collapsed row
	}
	var dash struct {
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	grafana := map[string][]string{} // panel title → its queries, $__rate_interval as 1m
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				grafana[p.Title] = append(grafana[p.Title], strings.ReplaceAll(tg.Expr, "$__rate_interval", "1m"))
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)

	if len(dashboardGraphs) > 10 {
		t.Errorf("%d graphs; the classic UI sorts g10 before g2", len(dashboardGraphs))
	}
	for _, g := range dashboardGraphs {
		panelTitle, _, _ := strings.Cut(g.title, ":")
		exprs, ok := grafana[panelTitle]
		if !ok {
			t.Errorf("graph %q: the Grafana dashboard has no panel %q", g.title, panelTitle)
			continue
		}
		if !slices.Contains(exprs, g.expr) {
			t.Errorf("graph %q: query\n\t%s\nis none of the panel's:\n\t%s", g.title, g.expr, strings.Join(exprs, "\n\t"))
		}
	}
}
