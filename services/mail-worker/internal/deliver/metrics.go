package deliver

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/doorbell/doorbell/services/mail-worker/internal/deadletter"
	"github.com/doorbell/doorbell/services/mail-worker/internal/ledger"
)

// Values of the "result" label of emails_total.
const (
	ResultSent      = "sent"
	ResultDuplicate = "duplicate"
	ResultFailed    = "failed"
	// ResultFolded counts new-device sign-ins told of in another alert
	// (one alert per person per MAIL_ALERT_WINDOW).
	ResultFolded = "folded"
)

// Values of the "reason" label of deadletters_total, and of the
// Doorbell-Dlq-Reason header.
const (
	ReasonUndecodable = deadletter.ReasonUndecodable
	ReasonPermanent   = deadletter.ReasonPermanent
	ReasonExpired     = deadletter.ReasonExpired
	ReasonPoison      = deadletter.ReasonPoison
	ReasonUnconfirmed = deadletter.ReasonUnconfirmed
)

// Values of the "cause" label of retries_total: why a message was handed
// back to JetStream.
const (
	causeEmail    = "email"    // an attempt failed because of this email (a 4xx for it, an unknown outcome)
	causeRelay    = "relay"    // the relay fails every email; charged to none
	causeBusy     = "busy"     // another delivery holds the email
	causeStore    = "store"    // the person's record or the dead letter could not be read or written
	causeShutdown = "shutdown" // the worker is stopping
	causeWindow   = "window"   // a new-device alert waits for the alert window to end
)

// Metrics are the event-side series of the mail-worker.
type Metrics struct {
	received    prometheus.Counter
	emails      *prometheus.CounterVec
	decisions   *prometheus.CounterVec
	loginToMail prometheus.Histogram
	retries     *prometheus.CounterVec
	deadletters *prometheus.CounterVec
}

// NewMetrics registers the series on reg, every label value already at zero.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	const ns, sub = "doorbell", "mailworker"
	m := &Metrics{
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "events_received_total",
			Help: "user.authenticated messages delivered to this worker, redeliveries included.",
		}),
		emails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "emails_total",
			Help: "Emails by kind (welcome, new_device) and result: sent, duplicate (already sent, or held by another message with the same event; suppressed), failed (given up) " +
				"or folded (a new-device sign-in told of in another alert: one alert per person per MAIL_ALERT_WINDOW).",
		}, []string{"kind", "result"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "decisions_total",
			Help: "What the worker decided to send for a delivered sign-in (redeliveries included): welcome, new_device or none.",
		}, []string{"kind"}),
		loginToMail: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "login_to_email_seconds",
			Help:    "Time from the sign-in (authenticated_at) to the SMTP server accepting its email.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600},
		}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "retries_total",
			Help: "Messages handed back to JetStream for a later attempt, by cause: email (this email failed; its delay grows), " +
				"relay (the relay fails every email; charged to none), busy (another delivery holds the email), " +
				"store (NATS could not be read or written), shutdown or window (a new-device alert waits for the alert window to end).",
		}, []string{"cause"}),
		deadletters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "deadletters_total",
			Help: "Messages stored in MAIL_DEADLETTER by reason: undecodable, permanent (SMTP 5xx, bad message), " +
				"expired (still failing after WORKER_RETRY_HORIZON), poison (the worker died sending it, time after time) " +
				"or unconfirmed (twice the relay did not say whether it took it: it may have arrived).",
		}, []string{"reason"}),
	}
	for _, k := range []ledger.Kind{ledger.Welcome, ledger.NewDevice} {
		for _, r := range []string{ResultSent, ResultDuplicate, ResultFailed, ResultFolded} {
			m.emails.WithLabelValues(string(k), r)
		}
	}
	for _, k := range []ledger.Kind{ledger.Welcome, ledger.NewDevice, ledger.None} {
		m.decisions.WithLabelValues(string(k))
	}
	for _, r := range []string{ReasonUndecodable, ReasonPermanent, ReasonExpired, ReasonPoison, ReasonUnconfirmed} {
		m.deadletters.WithLabelValues(r)
	}
	for _, c := range []string{causeEmail, causeRelay, causeBusy, causeStore, causeShutdown, causeWindow} {
		m.retries.WithLabelValues(c)
	}
	for _, c := range []prometheus.Collector{m.received, m.emails, m.decisions, m.loginToMail, m.retries, m.deadletters} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register consume metrics: %w", err)
		}
	}
	return m, nil
}
