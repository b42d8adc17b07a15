// Package admin serves the mail-worker's operator endpoints: /metrics for
// Prometheus, /healthz (the process is alive) and /readyz (its dependencies
// are usable). Bind it to a private address; it is not for the public.
package admin

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check reports whether one dependency is usable: nil when it is, else an
// error saying why not. It must return promptly; ctx carries a deadline.
type Check func(ctx context.Context) error

// checkTimeout bounds all checks of one /readyz request together.
const checkTimeout = 3 * time.Second

// Handler returns the admin routes. reg is what /metrics exposes; checks
// are what /readyz runs, by name.
func Handler(reg prometheus.Gatherer, checks map[string]Check) http.Handler {
	mux := http.NewServeMux()
	// OpenMetrics when the scraper asks for it: only that format carries
	// the exemplars (trace ids) of the latency histograms.
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), checkTimeout)
		defer cancel()
		names := make([]string, 0, len(checks))
		for name := range checks {
			names = append(names, name)
		}
		sort.Strings(names)
		results := make(map[string]string, len(checks))
		ready := true
		for _, name := range names {
			if err := checks[name](ctx); err != nil {
				results[name] = err.Error()
				ready = false
			} else {
				results[name] = "ok"
			}
		}
		if !ready {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "checks": results})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "checks": results})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
