package smtpsend

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of a send attempt, the values of the "outcome" label.
const (
	OutcomeSuccess   = "success"
	OutcomeTransient = "transient"  // 4xx, or the relay is unusable
	OutcomePermanent = "permanent"  // 5xx to this email, or it cannot be built
	OutcomeConfig    = "config"     // authentication or policy refusal, TLS trust: alert
	OutcomeMaybeSent = "maybe_sent" // connection lost after the end of data
)

// Metrics are the SMTP-side series of the mail-worker.
type Metrics struct {
	attempts    *prometheus.CounterVec
	duration    prometheus.Histogram
	poolWait    prometheus.Histogram
	connections prometheus.Gauge
	lastSuccess prometheus.Gauge
}

// NewMetrics registers the series on reg, every label value already at zero.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	const ns, sub = "doorbell", "mailworker"
	m := &Metrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "send_attempts_total",
			Help: "SMTP send attempts by outcome: success, transient (4xx or relay unusable; retried), permanent (5xx; given up), " +
				"config (authentication or policy refusal, untrusted TLS: an operator must act; retried) or maybe_sent (connection lost after the end of data; retried).",
		}, []string{"outcome"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "smtp_send_duration_seconds",
			Help:    "Time to hand one email to the SMTP server, including a dial when no idle connection was open.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		poolWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "smtp_pool_wait_seconds",
			Help:    "Time an email waited for a free SMTP connection slot (after the rate limit, if any).",
			Buckets: []float64{.0001, .001, .005, .01, .05, .1, .5, 1, 5, 30},
		}),
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "smtp_connections_open",
			Help: "SMTP connections currently open (in use and idle).",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "last_success_timestamp_seconds",
			Help: "Unix time at which the SMTP server last accepted an email; 0 until the first.",
		}),
	}
	for _, o := range []string{OutcomeSuccess, OutcomeTransient, OutcomePermanent, OutcomeConfig, OutcomeMaybeSent} {
		m.attempts.WithLabelValues(o)
	}
	for _, c := range []prometheus.Collector{m.attempts, m.duration, m.poolWait, m.connections, m.lastSuccess} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register smtpsend metrics: %w", err)
		}
	}
	return m, nil
}
