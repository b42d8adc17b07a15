package smtpsend

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of a send attempt, the values of the "outcome" label.
const (
	OutcomeSuccess   = "success"
	OutcomeTransient = "transient"
	OutcomePermanent = "permanent"
)

// Metrics are the SMTP-side series of the mail-worker.
type Metrics struct {
	attempts    *prometheus.CounterVec
	duration    prometheus.Histogram
	connections prometheus.Gauge
	lastSuccess prometheus.Gauge
}

// NewMetrics registers the series on reg, every label value already at zero.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	const ns, sub = "doorbell", "mailworker"
	m := &Metrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "send_attempts_total",
			Help: "SMTP send attempts by outcome: success, transient (will be retried) or permanent (given up).",
		}, []string{"outcome"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "smtp_send_duration_seconds",
			Help:    "Time to hand one email to the SMTP server, including a dial when no connection was open.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "smtp_connections_open",
			Help: "SMTP connections currently open.",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "last_success_timestamp_seconds",
			Help: "Unix time at which the SMTP server last accepted an email; 0 until the first.",
		}),
	}
	for _, o := range []string{OutcomeSuccess, OutcomeTransient, OutcomePermanent} {
		m.attempts.WithLabelValues(o)
	}
	for _, c := range []prometheus.Collector{m.attempts, m.duration, m.connections, m.lastSuccess} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register smtpsend metrics: %w", err)
		}
	}
	return m, nil
}
