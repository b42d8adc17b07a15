// Package admin serves a Doorbell service's operator endpoints on their own
// port: /metrics for Prometheus, /healthz (the process is alive) and
// /readyz (its dependencies are usable). None of them shows personal data.
// Bind it to a private address; it is not for the public.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Checker reports whether one dependency is usable. Ready may try to repair
// the dependency (reconnect, rediscover) but must respect ctx.
//
// An error with a method Degraded() bool that returns true means the
// dependency is not usable but the service copes without it (the gateway
// spools events while NATS is down): /readyz shows the error's text for it
// and still answers 200.
type Checker interface {
	Ready(ctx context.Context) error
}

// CheckFunc adapts a function to Checker.
type CheckFunc func(ctx context.Context) error

// Ready calls f.
func (f CheckFunc) Ready(ctx context.Context) error { return f(ctx) }

// NewRegistry returns a fresh registry holding the Go runtime and process
// collectors, for the service's own metrics to join.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// checkTimeout bounds one /readyz request, well under the usual probe
// timeout of orchestrators.
const checkTimeout = 3 * time.Second

// Handler returns the admin mux. gatherer is the registry /metrics exposes;
// checks are named dependencies /readyz reports on, each run in turn.
// /readyz answers 200 with status "ok", or "degraded" when a check reports
// a degraded dependency, and 503 with status "unavailable" when any check
// fails; its checks object says "ok" or what is wrong for each.
func Handler(gatherer prometheus.Gatherer, checks map[string]Checker, log *slog.Logger) http.Handler {
	names := make([]string, 0, len(checks))
	for name := range checks {
		names = append(names, name)
	}
	sort.Strings(names)

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelError),
		// OpenMetrics, when the scraper asks for it, carries the trace id
		// exemplars of the latency histograms.
		EnableOpenMetrics: true,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), checkTimeout)
		defer cancel()
		results := make(map[string]string, len(names))
		status := "ok"
		for _, name := range names {
			err := checks[name].Ready(ctx)
			switch {
			case err == nil:
				results[name] = "ok"
			case isDegraded(err):
				results[name] = err.Error()
				if status == "ok" {
					status = "degraded"
				}
			default:
				results[name] = err.Error()
				status = "unavailable"
			}
		}
		if status == "unavailable" {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": status, "checks": results})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"status": status, "checks": results})
	})
	return mux
}

// isDegraded reports whether err says its dependency is down but the
// service copes.
func isDegraded(err error) bool {
	var d interface{ Degraded() bool }
	return errors.As(err, &d) && d.Degraded()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
