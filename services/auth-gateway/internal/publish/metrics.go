package publish

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the publisher's Prometheus series.
type Metrics struct {
	published prometheus.Counter
	failures  prometheus.Counter
	duration  prometheus.Histogram
}

// NewMetrics builds the publisher's metrics and registers them on reg. It
// panics if they are already registered there, which is a wiring mistake.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "doorbell", Subsystem: "gateway", Name: "events_published_total",
			Help: "Events JetStream acknowledged (including ones it reported as duplicates).",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "doorbell", Subsystem: "gateway", Name: "events_publish_failures_total",
			Help: "Events that could not be published: NATS unreachable, no stream, or no ack in time.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "doorbell", Subsystem: "gateway", Name: "publish_duration_seconds",
			Help:    "Time from starting a publish to its ack or failure.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
	}
	reg.MustRegister(m.published, m.failures, m.duration)
	return m
}
