// Package login runs the OpenID Connect sign-in: it sends people to the
// identity provider, checks what comes back, publishes a UserAuthenticated
// event for a verified email and keeps a session in a sealed cookie.
//
// The flow is the authorization code flow with PKCE (S256), state and nonce,
// all three always. Each attempt keeps its secrets in its own short-lived
// cookie, named from its state, so several tabs can sign in at once. The
// callback checks the attempt before it redeems the code, and it publishes
// no event and sets no session unless the provider vouched for the email
// and JetStream acknowledged the event.
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
	"net/url"
	"time"
	"unicode/utf8"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/cookie"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/publish"
)

// Publisher stores an event durably before returning; ctx bounds the wait.
type Publisher interface {
	Publish(ctx context.Context, ev *eventsv1.UserAuthenticated) (publish.Ack, error)
}

// Config is the login flow's configuration.
type Config struct {
	// Issuer is the provider's issuer URL, exactly as in its tokens.
	Issuer       string
	ClientID     string
	ClientSecret string
	// Scopes requested; must include "openid".
	Scopes []string
	// ProviderID names the provider in events and metric labels.
	ProviderID string
	// PublicURL is the gateway's external base URL, scheme://host[:port].
	// The callback is PublicURL/auth/callback; https turns on Secure cookies.
	PublicURL *url.URL
	// PublishTimeout bounds publishing one event, ack included.
	PublishTimeout time.Duration
	// HTTPClient makes every request to the provider. Nil means a client
	// with a 10-second timeout.
	HTTPClient *http.Client
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Lifetimes of the cookies.
const (
	attemptTTL = 10 * time.Minute
	sessionTTL = 12 * time.Hour
	deviceTTL  = 365 * 24 * time.Hour
)

// Cookie names.
const (
	attemptCookiePrefix = "doorbell_login_"
	sessionCookie       = "doorbell_session"
	deviceCookie        = "doorbell_device"
)

// Handler serves the gateway's public endpoints: /, /login,
// /auth/callback, /me and /logout. It is safe for concurrent use.
type Handler struct {
	cfg       Config
	sealer    *cookie.Sealer
	publisher Publisher
	metrics   *Metrics
	log       *slog.Logger
	provider  *provider
	pages     *pages
	deviceKey []byte
	secure    bool
	mux       *http.ServeMux
}

// New builds the handler. It does no I/O: provider discovery happens on the
// first call to Ready or on the first sign-in.
func New(cfg Config, sealer *cookie.Sealer, pub Publisher, m *Metrics, log *slog.Logger) (*Handler, error) {
	switch {
	case cfg.Issuer == "" || cfg.ClientID == "":
		return nil, errors.New("login: issuer and client id are required")
	case cfg.PublicURL == nil || cfg.PublicURL.Host == "":
		return nil, errors.New("login: public URL is required")
	case cfg.ProviderID == "":
		return nil, errors.New("login: provider id is required")
	case cfg.PublishTimeout <= 0:
		return nil, errors.New("login: publish timeout must be positive")
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	pg, err := parsePages()
	if err != nil {
		return nil, err
	}
	deviceKey, err := sealer.DeriveKey("device id")
	if err != nil {
		return nil, fmt.Errorf("login: %w", err)
	}
	m.initProvider(cfg.ProviderID)
	h := &Handler{
		cfg:       cfg,
		sealer:    sealer,
		publisher: pub,
		metrics:   m,
		log:       log,
		provider:  newProvider(cfg, cfg.HTTPClient),
		pages:     pg,
		deviceKey: deviceKey,
		secure:    cfg.PublicURL.Scheme == "https",
		mux:       http.NewServeMux(),
	}
	h.mux.HandleFunc("GET /{$}", h.home)
	h.mux.HandleFunc("GET /login", h.login)
	h.mux.HandleFunc("GET /auth/callback", h.callback)
	h.mux.HandleFunc("GET /me", h.me)
	h.mux.HandleFunc("POST /logout", h.logout)
	h.mux.HandleFunc("GET /logout", h.logout)
	h.mux.HandleFunc("/", h.notFound)
	return h, nil
}

// Ready reports whether the provider's discovery document is loaded,
// loading it if not; ctx bounds the attempt.
func (h *Handler) Ready(ctx context.Context) error {
	_, err := h.provider.get(ctx)
	return err
}

// ServeHTTP routes the request and sets headers every response needs.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	// The callback URL holds the authorization code: never send it onwards.
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Content-Security-Policy",
		"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.mux.ServeHTTP(w, r)
}

func (h *Handler) notFound(w http.ResponseWriter, r *http.Request) {
	h.fail(w, r, failure{
		status: http.StatusNotFound, reason: "not_found", level: slog.LevelDebug,
		title:   "Page not found",
		message: "There is no page at this address. Check the link, or go back to the start page.",
	})
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
