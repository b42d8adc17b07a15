package publish

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/spool"
)

// Metrics are the publisher's Prometheus series. The spool series exist,
// at zero, when there is no spool, so dashboards and alerts need no
// special case.
type Metrics struct {
	published prometheus.Counter
	failures  prometheus.Counter
	duration  prometheus.Histogram
	spooled   prometheus.Counter
	drained   prometheus.Counter
	// spool is the spool the depth and age gauges read, once there is one.
	spool atomic.Pointer[spool.Spool]
}

// NewMetrics builds the publisher's metrics and registers them on reg. It
// panics if they are already registered there, which is a wiring mistake.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "doorbell", Subsystem: "gateway", Name: "events_published_total",
			Help: "Events JetStream acknowledged (including ones it reported as duplicates), directly or from the spool.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "doorbell", Subsystem: "gateway", Name: "events_publish_failures_total",
			Help: "Sign-in publishes JetStream did not acknowledge: NATS unreachable, no stream, or no ack in time. " +
				"With the spool on, such events are spooled (events_spooled_total) unless the spool write fails too.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "doorbell", Subsystem: "gateway", Name: "publish_duration_seconds",
			Help:    "Time from starting a sign-in's publish to its ack or failure (spool writes and drains excluded).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		spooled: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "doorbell", Subsystem: "gateway", Name: "events_spooled_total",
			Help: "Events written to the local disk spool because JetStream did not acknowledge them in time.",
		}),
		drained: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "doorbell", Subsystem: "gateway", Name: "spool_drained_total",
			Help: "Spooled events JetStream later acknowledged and that were removed from the spool.",
		}),
	}
	depth := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "doorbell", Subsystem: "gateway", Name: "spool_depth",
		Help: "Events in the local disk spool waiting to be published.",
	}, func() float64 {
		if s := m.spool.Load(); s != nil {
			return float64(s.Len())
		}
		return 0
	})
	age := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "doorbell", Subsystem: "gateway", Name: "spool_oldest_age_seconds",
		Help: "How long the oldest spooled event has waited; 0 when the spool is empty. Growing means the spool is not draining.",
	}, func() float64 {
		if s := m.spool.Load(); s != nil {
			if _, oldest := s.Stats(); !oldest.IsZero() {
				return max(time.Since(oldest).Seconds(), 0)
			}
		}
		return 0
	})
	setAside := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "doorbell", Subsystem: "gateway", Name: "spool_set_aside_files",
		Help: "Files set aside in the spool's bad/ folder, or left in the spool directory when the move failed: spooled sign-ins " +
			"the gateway could not read back or JetStream refuses for good. Each may be an email not sent; an operator inspects " +
			"and deletes them (or moves them back). -1 when the folder cannot be read.",
	}, func() float64 {
		if s := m.spool.Load(); s != nil {
			n, err := s.SetAsideFiles()
			if err != nil {
				return -1
			}
			return float64(n)
		}
		return 0
	})
	reg.MustRegister(m.published, m.failures, m.duration, m.spooled, m.drained, depth, age, setAside)
	return m
}
