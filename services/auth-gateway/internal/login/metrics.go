package login

import "github.com/prometheus/client_golang/prometheus"

// Results of a login, the values of the result label on
// doorbell_gateway_logins_total. The set is closed: dashboards and alerts
// rely on it.
const (
	resultSuccess             = "success"
	resultProviderError       = "provider_error"
	resultAccessDenied        = "access_denied"
	resultStateInvalid        = "state_invalid"
	resultIssuerMismatch      = "issuer_mismatch"
	resultExchangeFailed      = "exchange_failed"
	resultTokenInvalid        = "token_invalid"
	resultNonceMismatch       = "nonce_mismatch"
	resultEmailMissing        = "email_missing"
	resultEmailUnverified     = "email_unverified"
	resultPublishFailed       = "publish_failed"
	resultProviderUnavailable = "provider_unavailable"
)

var results = []string{
	resultSuccess, resultProviderError, resultAccessDenied, resultStateInvalid, resultIssuerMismatch,
	resultExchangeFailed, resultTokenInvalid, resultNonceMismatch, resultEmailMissing,
	resultEmailUnverified, resultPublishFailed, resultProviderUnavailable,
}

// Metrics are the login flow's Prometheus series.
type Metrics struct {
	logins           *prometheus.CounterVec
	started          *prometheus.CounterVec
	callbackDuration *prometheus.HistogramVec
}

// NewMetrics builds the login metrics and registers them on reg. It panics
// if they are already registered there, which is a wiring mistake. New
// initialises every series of its provider to zero.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "doorbell", Subsystem: "gateway", Name: "logins_total",
			Help: "Completed or failed sign-ins by provider and result (success or a failure reason).",
		}, []string{"provider", "result"}),
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "doorbell", Subsystem: "gateway", Name: "login_started_total",
			Help: "Sign-ins sent to the identity provider.",
		}, []string{"provider"}),
		callbackDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "doorbell", Subsystem: "gateway", Name: "callback_duration_seconds",
			Help:    "Time to handle the provider's callback: code exchange, token checks and publishing.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 20},
		}, []string{"provider"}),
	}
	reg.MustRegister(m.logins, m.started, m.callbackDuration)
	return m
}

func (m *Metrics) initProvider(provider string) {
	for _, r := range results {
		m.logins.WithLabelValues(provider, r)
	}
	m.started.WithLabelValues(provider)
	m.callbackDuration.WithLabelValues(provider)
}
