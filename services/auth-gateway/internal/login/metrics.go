package login

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Results of a login, the values of the result label on
// doorbell_gateway_logins_total. The set is closed: dashboards and alerts
// rely on it.
const (
	resultSuccess               = "success"
	resultProviderError         = "provider_error"
	resultAccessDenied          = "access_denied"
	resultStateInvalid          = "state_invalid"
	resultIssuerMismatch        = "issuer_mismatch"
	resultExchangeFailed        = "exchange_failed"
	resultTokenInvalid          = "token_invalid"
	resultNonceMismatch         = "nonce_mismatch"
	resultEmailMissing          = "email_missing"
	resultEmailUnverified       = "email_unverified"
	resultEmailInvalid          = "email_invalid"
	resultEmailDomainNotAllowed = "email_domain_not_allowed"
	resultPublishFailed         = "publish_failed"
	resultProviderUnavailable   = "provider_unavailable"
	resultProviderUnknown       = "provider_unknown"
	resultRateLimited           = "rate_limited"
	resultRequestTooLarge       = "request_too_large"
)

var results = []string{
	resultSuccess, resultProviderError, resultAccessDenied, resultStateInvalid, resultIssuerMismatch,
	resultExchangeFailed, resultTokenInvalid, resultNonceMismatch, resultEmailMissing,
	resultEmailUnverified, resultEmailInvalid, resultEmailDomainNotAllowed, resultPublishFailed,
	resultProviderUnavailable, resultProviderUnknown, resultRateLimited, resultRequestTooLarge,
}

// unknownProviderResults are the results that can be counted under
// provider="unknown": failures that happen before a request names a
// configured provider.
var unknownProviderResults = []string{
	resultStateInvalid, resultProviderUnknown, resultRateLimited, resultRequestTooLarge,
}

// Values of the result label of doorbell_gateway_verify_requests_total.
const (
	verifyAuthorized   = "authorized"
	verifyUnauthorized = "unauthorized"
)

// Values of the result label of doorbell_gateway_logouts_total.
const (
	logoutSuccess   = "success"
	logoutNoSession = "no_session"
	logoutRejected  = "rejected"
)

// Metrics are the login flow's Prometheus series.
type Metrics struct {
	logins           *prometheus.CounterVec
	started          *prometheus.CounterVec
	callbackDuration *prometheus.HistogramVec
	verify           *prometheus.CounterVec
	logouts          *prometheus.CounterVec
}

// NewMetrics builds the login metrics and registers them on reg. It panics
// if they are already registered there, which is a wiring mistake. New
// initialises every series of its providers to zero.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "doorbell", Subsystem: "gateway", Name: "logins_total",
			Help: "Completed or failed sign-ins by provider and result (success or a failure reason). " +
				`Failures that cannot be tied to a provider count under provider="unknown" when several are configured.`,
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
		verify: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "doorbell", Subsystem: "gateway", Name: "verify_requests_total",
			Help: "Forward-auth requests to /auth/verify by result (authorized or unauthorized).",
		}, []string{"result"}),
		logouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "doorbell", Subsystem: "gateway", Name: "logouts_total",
			Help: "Sign-out requests by result: success, no_session, or rejected (cross-site or bad CSRF token).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.logins, m.started, m.callbackDuration, m.verify, m.logouts)
	for _, r := range []string{verifyAuthorized, verifyUnauthorized} {
		m.verify.WithLabelValues(r)
	}
	for _, r := range []string{logoutSuccess, logoutNoSession, logoutRejected} {
		m.logouts.WithLabelValues(r)
	}
	return m
}

func (m *Metrics) initProvider(provider string) {
	for _, r := range results {
		m.logins.WithLabelValues(provider, r)
	}
	m.started.WithLabelValues(provider)
	m.callbackDuration.WithLabelValues(provider)
}

func (m *Metrics) initUnknownProvider() {
	for _, r := range unknownProviderResults {
		m.logins.WithLabelValues(UnknownProvider, r)
	}
	m.callbackDuration.WithLabelValues(UnknownProvider)
}
