// Package login runs the sign-in with one or more identity providers (any
// OpenID Connect provider, and GitHub): it sends people to the provider,
// checks what comes back, publishes a UserAuthenticated event for a
// verified email and keeps a session in a sealed cookie. It also answers
// forward-auth requests (/auth/verify) from reverse proxies.
//
// The flow is the authorization code flow with PKCE (S256) and state
// always, and a nonce for OIDC. Each attempt keeps its secrets in its own
// short-lived cookie, named from its state, so several tabs can sign in at
// once. The callback checks the attempt before it redeems the code, and it
// publishes no event and sets no session unless the provider vouched for
// the email and the publisher stored the event durably (JetStream
// acknowledged it, or the publisher's disk spool took it).
//
// The handlers never log authorization codes, tokens or cookie values.
package login

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/time/rate"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/config"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/cookie"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/publish"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/ratelimit"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/redirect"
)

// Publisher stores an event durably before returning, in JetStream or in a
// spool it publishes from later (Ack.Spooled); ctx bounds the wait.
type Publisher interface {
	Publish(ctx context.Context, ev *eventsv1.UserAuthenticated) (publish.Ack, error)
}

// Provider types, as the configuration names them.
const (
	TypeOIDC   = config.TypeOIDC
	TypeGitHub = config.TypeGitHub
)

// UnknownProvider is the provider label of failures that cannot be tied to
// one configured provider while several are configured.
const UnknownProvider = config.UnknownProvider

// ProviderConfig is one identity provider, as the configuration describes
// it (see config.Provider for what each field promises). New takes it
// complete, as config.Load returns it, and fills in nothing: a provider
// built by hand goes through config.Provider.WithDefaults first.
type ProviderConfig = config.Provider

// Config is the login flow's configuration.
type Config struct {
	// Providers people can sign in with, in the order the sign-in page
	// lists them; at least one.
	Providers []ProviderConfig
	// PublicURL is the gateway's external base URL, scheme://host[:port].
	// The callback is PublicURL/auth/callback with a single provider, and
	// PublicURL/auth/callback/{id} for each of several (see CallbackURL);
	// https turns on Secure cookies.
	PublicURL *url.URL
	// CookieDomain, when set, is the session cookie's Domain, so that
	// forward-auth requests from sibling hosts carry the session.
	CookieDomain string
	// PublishTimeout bounds publishing one event, ack included.
	PublishTimeout time.Duration
	// SessionTTL bounds a session's lifetime from sign-in. It is checked
	// inside the sealed session, so lowering it also ends older sessions.
	SessionTTL time.Duration
	// DeviceKey is the 32-byte key of the device-id HMAC. Device ids, and
	// with them "new device" emails, change when it changes.
	DeviceKey []byte
	// RedirectHosts are the hosts (with optional port) an rd parameter may
	// name, besides paths on the gateway.
	RedirectHosts []string
	// RateLimit and RateBurst limit /login and /auth/callback per client IP.
	RateLimit rate.Limit
	RateBurst int
	// TrustedProxies are the reverse proxies whose X-Forwarded-For names
	// the client; empty means the peer address is the client.
	TrustedProxies []netip.Prefix
	// HTTPClient makes every request to the providers. Nil means
	// providerClient: a 10-second timeout, and connections kept for reuse.
	HTTPClient *http.Client
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// TracerProvider makes the spans of sign-ins; nil means no spans.
	// Incoming trace headers are ignored: browsers are not trusted to pick
	// a trace, so each sign-in starts its own.
	TracerProvider trace.TracerProvider
	// LogEmails adds the email address to the info-level "login" line
	// each callback logs. Off (the default), no log line carries one.
	LogEmails bool
}

// Lifetimes of the cookies.
const (
	attemptTTL = 10 * time.Minute
	deviceTTL  = 365 * 24 * time.Hour
)

// callbackPath is where providers send the browser back: itself with a
// single provider (what deployments have registered since the start), and
// with "/{id}" appended for each of several, so that an answer shows which
// provider it is from even when the provider sends no iss (mix-up defence,
// RFC 9700 §4.4).
const callbackPath = "/auth/callback"

// Cookie names. The session cookie is hostSessionCookie over https when no
// cookie domain is set: the __Host- prefix makes browsers refuse it unless
// it is Secure, host-only and for Path=/, so a sibling subdomain cannot set
// or overwrite it (session fixation).
const (
	cookiePrefix        = "doorbell_"
	attemptCookiePrefix = "doorbell_login_"
	sessionCookie       = "doorbell_session"
	hostPrefix          = "__Host-"
	hostSessionCookie   = hostPrefix + sessionCookie
	deviceCookie        = "doorbell_device"
)

// Bounds on the cookies: a browser keeps at most 4096 bytes per cookie, and
// proxies refuse requests whose Cookie header passes about 8 KiB.
const (
	// maxCookieBytes bounds one Doorbell cookie, name and value: the
	// gateway never sets a larger one, and deletes one it receives.
	maxCookieBytes = 3584
	// maxAttempts and attemptBudget bound the sign-in attempts a browser
	// holds at once, and the bytes they take: starting another deletes
	// the oldest.
	maxAttempts   = 4
	attemptBudget = 5 << 10
)

// tracerName names the spans this package makes.
const tracerName = "github.com/doorbell/doorbell/services/auth-gateway/internal/login"

// maxRateLimitedClients bounds the rate limiter's memory (about 200 bytes
// per client).
const maxRateLimitedClients = 100_000

// Handler serves the gateway's public endpoints: /, /login,
// /auth/callback[/{provider}], /auth/verify, /me and /logout. It is safe for concurrent
// use.
type Handler struct {
	cfg       Config
	sealer    *cookie.Sealer
	publisher Publisher
	metrics   *Metrics
	log       *slog.Logger
	pages     *pages
	deviceKey []byte
	csrfKey   []byte
	secure    bool
	// sessionCookie is the session cookie's name.
	sessionCookie string
	mux           *http.ServeMux

	providers map[string]*provider
	// order is the providers as configured.
	order     []*provider
	redirects *redirect.Allowlist
	limiter   *ratelimit.Limiter
	spent     *spentStates
	origin    *http.CrossOriginProtection
	tracer    trace.Tracer
	// untrustedXFF is set once X-Forwarded-For from an untrusted peer
	// was logged.
	untrustedXFF atomic.Bool
}

// New builds the handler. It does no I/O: provider discovery happens on the
// first call to Ready or on the first sign-in with each provider.
func New(cfg Config, sealer *cookie.Sealer, pub Publisher, m *Metrics, log *slog.Logger) (*Handler, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	tracer := cfg.TracerProvider.Tracer(tracerName)
	pg, err := parsePages()
	if err != nil {
		return nil, err
	}
	csrfKey, err := sealer.DeriveKey("logout csrf")
	if err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	secure := cfg.PublicURL.Scheme == "https"
	redirects, err := redirect.New(append([]string{cfg.PublicURL.Host}, cfg.RedirectHosts...), secure)
	if err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	origin := http.NewCrossOriginProtection()
	if err := origin.AddTrustedOrigin(cfg.PublicURL.Scheme + "://" + cfg.PublicURL.Host); err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	h := &Handler{
		cfg:       cfg,
		sealer:    sealer,
		publisher: pub,
		metrics:   m,
		log:       log,
		pages:     pg,
		deviceKey: cfg.DeviceKey,
		csrfKey:   csrfKey,
		secure:    secure,
		mux:       http.NewServeMux(),
		providers: make(map[string]*provider, len(cfg.Providers)),
		redirects: redirects,
		limiter:   ratelimit.New(cfg.RateLimit, cfg.RateBurst, maxRateLimitedClients),
		spent:     newSpentStates(maxSpentStates),
		origin:    origin,
		tracer:    tracer,
	}
	h.sessionCookie = sessionCookie
	if secure && cfg.CookieDomain == "" {
		h.sessionCookie = hostSessionCookie
	}
	if err := h.addProviders(); err != nil {
		return nil, err
	}
	h.route()
	return h, nil
}

// validate checks the settings New has no default for.
func (cfg Config) validate() error {
	switch {
	case len(cfg.Providers) == 0:
		return errors.New("login: at least one provider is required")
	case cfg.PublicURL == nil || cfg.PublicURL.Host == "":
		return errors.New("login: public URL is required")
	case cfg.PublishTimeout <= 0:
		return errors.New("login: publish timeout must be positive")
	case cfg.SessionTTL <= 0:
		return errors.New("login: session lifetime must be positive")
	case len(cfg.DeviceKey) != 32:
		return errors.New("login: device key must be 32 bytes")
	case !(cfg.RateLimit > 0) || cfg.RateBurst < 1: // NaN too
		return errors.New("login: rate limit and burst must be positive")
	}
	return nil
}

// withDefaults returns cfg with the defaults Config promises for its nil
// fields: the HTTP client, the clock and the tracer provider.
func (cfg Config) withDefaults() Config {
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = providerClient()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = noop.NewTracerProvider()
	}
	return cfg
}

// addProviders builds the configured providers, each with its callback
// path, in order, and starts their metric series at zero. It fails on an
// id that is empty, reserved or used twice.
func (h *Handler) addProviders() error {
	for _, pc := range h.cfg.Providers {
		if _, dup := h.providers[pc.ID]; dup {
			return fmt.Errorf("login: provider id %q used twice", pc.ID)
		}
		if pc.ID == "" || pc.ID == UnknownProvider {
			return fmt.Errorf("login: provider id %q is not usable", pc.ID)
		}
		path := callbackPath
		if len(h.cfg.Providers) > 1 {
			path += "/" + pc.ID
		}
		p, err := newProvider(pc, path, h.cfg.PublicURL.String()+path, h.cfg.HTTPClient, h.tracer)
		if err != nil {
			return err
		}
		h.providers[pc.ID] = p
		h.order = append(h.order, p)
		h.metrics.initProvider(pc.ID)
	}
	if len(h.order) > 1 {
		h.metrics.initUnknownProvider()
	}
	return nil
}

// route registers the public endpoints on h.mux.
func (h *Handler) route() {
	h.mux.HandleFunc("GET /{$}", h.home)
	h.mux.HandleFunc("GET /login", h.login)
	h.mux.HandleFunc("GET "+callbackPath, h.callback)
	h.mux.HandleFunc("GET "+callbackPath+"/{provider}", h.callback)
	h.mux.HandleFunc("/auth/verify", h.verify)
	h.mux.HandleFunc("GET /me", h.me)
	h.mux.HandleFunc("GET /logout", h.logoutPage)
	h.mux.HandleFunc("POST /logout", h.logout)
	h.mux.HandleFunc("/", h.notFound)
}

// CallbackURL is the redirect URI to register for the provider id at the
// provider, or "" when there is no such provider.
func (h *Handler) CallbackURL(id string) string {
	p := h.providers[id]
	if p == nil {
		return ""
	}
	return h.cfg.PublicURL.String() + p.callbackPath
}

// Ready reports whether people can sign in: nil when at least one provider
// is usable, loading discovery documents that are not loaded yet; ctx
// bounds the attempt. Providers that fail while another works are logged,
// not returned, so that one broken provider does not take the others out
// of service.
func (h *Handler) Ready(ctx context.Context) error {
	errs := make([]error, len(h.order))
	var wg sync.WaitGroup
	for i, p := range h.order {
		wg.Go(func() { errs[i] = p.flow.ready(ctx) })
	}
	wg.Wait()
	var failed []error
	for i, err := range errs {
		if err != nil {
			failed = append(failed, fmt.Errorf("provider %s: %w", h.order[i].cfg.ID, err))
		}
	}
	if len(failed) == len(h.order) {
		return errors.Join(failed...)
	}
	for _, err := range failed {
		h.log.Warn("identity provider not usable; the others are", "error", err)
	}
	return nil
}

// ServeHTTP routes the request, after the checks every request gets, and
// sets headers every response needs.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	// The callback URL holds the authorization code: never send it onwards.
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Content-Security-Policy",
		"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	if r.URL.Path != "/auth/verify" {
		// Proxies call it on every request: it only reads the session.
		r = h.dropOversizedCookies(w, r)
	}
	if f := h.guard(w, r); f != nil {
		h.fail(w, r, f)
		return
	}
	h.mux.ServeHTTP(w, r)
}

func (h *Handler) notFound(w http.ResponseWriter, r *http.Request) {
	h.fail(w, r, failed(reasonNotFound, ""))
}

// label is the provider label for metrics about p, which may be nil when
// the request names no configured provider: then the only provider, or
// UnknownProvider when there are several.
func (h *Handler) label(p *provider) string {
	switch {
	case p != nil:
		return p.cfg.ID
	case len(h.order) == 1:
		return h.order[0].cfg.ID
	default:
		return UnknownProvider
	}
}

// randomToken returns n random bytes, base64url without padding.
func randomToken(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("login: random: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// providerIdleConns is how many idle connections to one provider the
// gateway keeps for the next sign-ins: net/http keeps 2, so under a few
// concurrent sign-ins most token exchanges paid for a new TCP and TLS
// handshake with the provider.
const providerIdleConns = 64

// providerClient is the HTTP client for the providers when Config has none:
// net/http's default transport (proxy from the environment, HTTP/2, its
// dial and TLS timeouts) keeping up to providerIdleConns idle connections
// per provider, and a 10-second bound on each request.
func providerClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 4 * providerIdleConns
	t.MaxIdleConnsPerHost = providerIdleConns
	return &http.Client{Transport: t, Timeout: 10 * time.Second}
}
