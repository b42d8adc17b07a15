package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/doorbell/doorbell/platform/admin"
)

var _ admin.Checker = admin.CheckFunc(nil)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, body := getResponse(t, url, "")
	return resp.StatusCode, body
}

// getResponse is get for tests that also look at the headers, asking for
// the media type accept when it is not "".
func getResponse(t *testing.T, url, accept string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestReadyz(t *testing.T) {
	ok := admin.CheckFunc(func(context.Context) error { return nil })
	down := func(msg string) admin.Checker {
		return admin.CheckFunc(func(context.Context) error { return errors.New(msg) })
	}
	tests := []struct {
		name       string
		checks     map[string]admin.Checker
		wantStatus int
		wantBody   map[string]any
	}{
		{
			name:       "all dependencies usable",
			checks:     map[string]admin.Checker{"nats": ok, "provider": ok},
			wantStatus: http.StatusOK,
			wantBody:   map[string]any{"status": "ok", "checks": map[string]any{"nats": "ok", "provider": "ok"}},
		},
		{
			name:       "nats down names the reason",
			checks:     map[string]admin.Checker{"nats": down("not connected"), "provider": ok},
			wantStatus: http.StatusServiceUnavailable,
			wantBody: map[string]any{"status": "unavailable",
				"checks": map[string]any{"nats": "not connected", "provider": "ok"}},
		},
		{
			name: "a dependency the service copes without is shown but keeps it ready",
			checks: map[string]admin.Checker{
				"nats":     admin.CheckFunc(func(context.Context) error { return fmt.Errorf("wrapped: %w", copes("down, spooling")) }),
				"provider": ok,
			},
			wantStatus: http.StatusOK,
			wantBody: map[string]any{"status": "degraded",
				"checks": map[string]any{"nats": "wrapped: down, spooling", "provider": "ok"}},
		},
		{
			name: "degraded and down is down",
			checks: map[string]admin.Checker{
				"nats":     admin.CheckFunc(func(context.Context) error { return copes("down, spooling") }),
				"provider": down("b"),
			},
			wantStatus: http.StatusServiceUnavailable,
			wantBody: map[string]any{"status": "unavailable",
				"checks": map[string]any{"nats": "down, spooling", "provider": "b"}},
		},
		{
			name:       "both down",
			checks:     map[string]admin.Checker{"nats": down("a"), "provider": down("b")},
			wantStatus: http.StatusServiceUnavailable,
			wantBody: map[string]any{"status": "unavailable",
				"checks": map[string]any{"nats": "a", "provider": "b"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(admin.Handler(prometheus.NewRegistry(), tt.checks, slog.New(slog.DiscardHandler)))
			defer srv.Close()
			resp, body := getResponse(t, srv.URL+"/readyz", "")
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status = %d, want %d", resp.StatusCode, tt.wantStatus)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			var got map[string]any
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatalf("body %q: %v", body, err)
			}
			if gj, wj := mustJSON(got), mustJSON(tt.wantBody); gj != wj {
				t.Errorf("body = %s, want %s", gj, wj)
			}
		})
	}
}

func TestHealthzAndMetrics(t *testing.T) {
	reg := admin.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "doorbell_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)
	// /healthz says the process is alive, whatever its dependencies.
	down := admin.CheckFunc(func(context.Context) error { return errors.New("dial tcp 127.0.0.1:587: connection refused") })
	srv := httptest.NewServer(admin.Handler(reg, map[string]admin.Checker{"smtp": down}, slog.New(slog.DiscardHandler)))
	defer srv.Close()

	status, body := get(t, srv.URL+"/healthz")
	if status != http.StatusOK || strings.TrimSpace(body) != `{"status":"ok"}` {
		t.Errorf("/healthz = %d %q", status, body)
	}
	status, body = get(t, srv.URL+"/metrics")
	if status != http.StatusOK {
		t.Fatalf("/metrics status %d", status)
	}
	for _, want := range []string{"doorbell_test_total 3", "go_goroutines", "process_cpu_seconds_total"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if status, _ := get(t, srv.URL+"/nope"); status != http.StatusNotFound {
		t.Errorf("unknown path status = %d, want 404", status)
	}
}

// copes is an error whose dependency the service copes without.
type copes string

func (c copes) Error() string  { return string(c) }
func (c copes) Degraded() bool { return true }

// TestMetricsOfferOpenMetricsWithExemplars: a scraper that asks for
// OpenMetrics gets it, with the trace id exemplars the latency histograms
// carry; the classic text format stays the default.
func TestMetricsOfferOpenMetricsWithExemplars(t *testing.T) {
	reg := admin.NewRegistry()
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "doorbell_test_seconds", Help: "test", Buckets: []float64{1}})
	reg.MustRegister(h)
	h.(prometheus.ExemplarObserver).ObserveWithExemplar(0.5, prometheus.Labels{"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"})
	srv := httptest.NewServer(admin.Handler(reg, nil, slog.New(slog.DiscardHandler)))
	defer srv.Close()

	resp, body := getResponse(t, srv.URL+"/metrics", "application/openmetrics-text; version=1.0.0")
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") {
		t.Errorf("Content-Type = %q, want OpenMetrics", ct)
	}
	if want := `doorbell_test_seconds_bucket{le="1.0"} 1 # {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"} 0.5`; !strings.Contains(body, want) {
		t.Errorf("OpenMetrics lacks %s:\n%s", want, body)
	}

	_, plain := get(t, srv.URL+"/metrics")
	if strings.Contains(plain, "trace_id") || !strings.Contains(plain, `doorbell_test_seconds_bucket{le="1"} 1`) {
		t.Errorf("default format changed:\n%s", plain)
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}
