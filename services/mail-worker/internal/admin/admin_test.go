package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestEndpoints(t *testing.T) {
	ok := func(context.Context) error { return nil }
	down := func(context.Context) error { return errors.New("dial tcp 127.0.0.1:587: connection refused") }

	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "doorbell_mailworker_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)

	tests := []struct {
		name     string
		path     string
		checks   map[string]Check
		wantCode int
		wantBody map[string]any // decoded JSON; nil to skip
		wantText string         // substring; "" to skip
	}{
		{name: "healthz answers while dependencies are down", path: "/healthz",
			checks: map[string]Check{"smtp": down}, wantCode: 200,
			wantBody: map[string]any{"status": "ok"}},
		{name: "readyz is ready when every check passes", path: "/readyz",
			checks: map[string]Check{"nats": ok, "smtp": ok}, wantCode: 200,
			wantBody: map[string]any{"status": "ok", "checks": map[string]any{"nats": "ok", "smtp": "ok"}}},
		{name: "readyz says which check failed and why", path: "/readyz",
			checks: map[string]Check{"nats": ok, "smtp": down}, wantCode: 503,
			wantBody: map[string]any{"status": "unavailable", "checks": map[string]any{
				"nats": "ok", "smtp": "dial tcp 127.0.0.1:587: connection refused"}}},
		{name: "metrics exposes the registry", path: "/metrics",
			wantCode: 200, wantText: "doorbell_mailworker_test_total 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(Handler(reg, tt.checks))
			defer srv.Close()
			resp, err := http.Get(srv.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.wantCode {
				t.Errorf("status = %d, want %d; body %s", resp.StatusCode, tt.wantCode, body)
			}
			if tt.wantText != "" && !strings.Contains(string(body), tt.wantText) {
				t.Errorf("body lacks %q:\n%s", tt.wantText, body)
			}
			if tt.wantBody != nil {
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type = %q", ct)
				}
				var got map[string]any
				if err := json.Unmarshal(body, &got); err != nil {
					t.Fatalf("body is not JSON: %v\n%s", err, body)
				}
				gotJSON, _ := json.Marshal(got)
				wantJSON, _ := json.Marshal(tt.wantBody)
				if string(gotJSON) != string(wantJSON) {
					t.Errorf("body = %s, want %s", gotJSON, wantJSON)
				}
			}
		})
	}
}
