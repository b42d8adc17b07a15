// Package devidp is a development OpenID Connect provider: a real OIDC server
// over HTTP (discovery, JWKS, authorization code flow with PKCE, token and
// userinfo endpoints) whose sign-in page lets anyone type any email address.
//
// It is built on github.com/oauth2-proxy/mockoidc for tokens and keys, with
// its own sign-in form in place of mockoidc's queue of canned users. It must
// never be exposed beyond loopback: it authenticates nobody.
//
// Differences from a production provider, on purpose: codes never expire
// (they are single use), signing keys are made fresh at every Start and
// live only in memory, and there is no consent screen.
package devidp

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/oauth2-proxy/mockoidc"
)

// Defaults used when the corresponding Config field is empty.
const (
	DefaultAddr         = "127.0.0.1:5556"
	DefaultClientID     = "doorbell"
	DefaultClientSecret = "doorbell-dev-secret"
)

// Config sets where the provider listens and which single client it knows.
type Config struct {
	Addr         string   // "127.0.0.1:5556"; "127.0.0.1:0" for a random port
	ClientID     string   // default "doorbell"
	ClientSecret string   // default "doorbell-dev-secret"
	RedirectURIs []string // allowed redirect URIs, compared exactly; empty = any http(s) URI
}

// Server is a running development OIDC provider.
type Server struct {
	cfg    Config
	logger *slog.Logger
	oidc   *mockoidc.MockOIDC
	http   *http.Server
	served chan error // receives Serve's result once

	closeOnce sync.Once
	closeErr  error

	// mu serialises every call into mockoidc: its SessionStore is a plain
	// map without locking.
	mu sync.Mutex
}

// Start listens on cfg.Addr and serves the provider until Close. The issuer
// is http://ADDR/oidc; discovery is at ISSUER/.well-known/openid-configuration.
func Start(cfg Config, logger *slog.Logger) (*Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	if cfg.ClientID == "" {
		cfg.ClientID = DefaultClientID
	}
	if cfg.ClientSecret == "" {
		cfg.ClientSecret = DefaultClientSecret
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	for _, uri := range cfg.RedirectURIs {
		if err := checkRedirectURI(uri); err != nil {
			return nil, fmt.Errorf("devidp: configured redirect URI %q: %w", uri, err)
		}
	}

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("devidp: generate signing key: %w", err)
	}
	m, err := mockoidc.NewServer(key)
	if err != nil {
		return nil, fmt.Errorf("devidp: create provider: %w", err)
	}
	m.ClientID = cfg.ClientID
	m.ClientSecret = cfg.ClientSecret
	m.CodeChallengeMethodsSupported = []string{"S256", "plain"}

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("devidp: listen on %s: %w", cfg.Addr, err)
	}
	// mockoidc derives its issuer and endpoint URLs from Server.Addr; the
	// server that actually serves is s.http below.
	m.Server = &http.Server{Addr: ln.Addr().String()}

	s := &Server{
		cfg:    cfg,
		logger: logger,
		oidc:   m,
		served: make(chan error, 1),
	}
	s.http = &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	go func() { s.served <- s.http.Serve(ln) }()
	logger.Info("dev identity provider listening", "issuer", s.Issuer(), "client_id", cfg.ClientID)
	return s, nil
}

// Issuer is the provider's issuer URL, e.g. http://127.0.0.1:5556/oidc.
func (s *Server) Issuer() string { return s.oidc.Issuer() }

// ClientID is the one client ID the provider accepts.
func (s *Server) ClientID() string { return s.cfg.ClientID }

// ClientSecret is the one client secret the provider accepts.
func (s *Server) ClientSecret() string { return s.cfg.ClientSecret }

// Close stops accepting requests, lets requests in flight finish (up to five
// seconds) and returns once the server has stopped. Later calls return the
// first call's result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := s.http.Shutdown(ctx)
		if err != nil {
			err = errors.Join(err, s.http.Close())
		}
		if serveErr := <-s.served; serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
			err = errors.Join(err, serveErr)
		}
		if err != nil {
			s.closeErr = fmt.Errorf("devidp: close: %w", err)
		}
	})
	return s.closeErr
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+mockoidc.AuthorizationEndpoint, s.signInPage)
	mux.HandleFunc("POST "+mockoidc.AuthorizationEndpoint, s.signIn)
	mux.Handle("POST "+mockoidc.TokenEndpoint, s.locked(clientSecretBasic(s.secondsExpiry(s.oidc.Token))))
	mux.Handle("GET "+mockoidc.UserinfoEndpoint, s.locked(s.oidc.Userinfo))
	mux.Handle("POST "+mockoidc.UserinfoEndpoint, s.locked(s.oidc.Userinfo))
	mux.Handle("GET "+mockoidc.JWKSEndpoint, s.locked(s.oidc.JWKS))
	mux.Handle("GET "+mockoidc.DiscoveryEndpoint, s.locked(s.oidc.Discovery))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, mockoidc.DiscoveryEndpoint, http.StatusFound)
	})
	return mux
}

// locked runs h while holding s.mu.
func (s *Server) locked(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		h(w, r)
	})
}

// clientSecretBasic lets clients authenticate at the token endpoint with
// HTTP Basic credentials (client_secret_basic, the method discovery lists
// first), which mockoidc itself only accepts as form fields. Per RFC 6749
// §2.3.1 the credentials are form-encoded before Base64.
func clientSecretBasic(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, secret, ok := r.BasicAuth()
		if ok {
			if err := r.ParseForm(); err != nil {
				http.Error(w, "bad form", http.StatusBadRequest)
				return
			}
			if r.Form.Get("client_id") == "" && r.Form.Get("client_secret") == "" {
				r.Form.Set("client_id", unescapeCredential(id))
				r.Form.Set("client_secret", unescapeCredential(secret))
			}
		}
		next(w, r)
	}
}

func unescapeCredential(v string) string {
	if u, err := url.QueryUnescape(v); err == nil {
		return u
	}
	return v
}

// secondsExpiry rewrites expires_in in successful token responses from
// mockoidc's nanoseconds to the seconds RFC 6749 §5.1 requires; left alone,
// OAuth clients overflow computing the expiry and see expired tokens.
func (s *Server) secondsExpiry(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rec := &bufferedResponse{header: w.Header(), status: http.StatusOK}
		next(rec, r)
		body := rec.body.Bytes()
		if rec.status == http.StatusOK {
			var fields map[string]any
			if err := json.Unmarshal(body, &fields); err == nil {
				if _, ok := fields["expires_in"]; ok {
					fields["expires_in"] = int64(s.oidc.AccessTTL / time.Second)
					if b, err := json.Marshal(fields); err == nil {
						body = b
					}
				}
			}
		}
		w.Header().Del("Content-Length")
		w.WriteHeader(rec.status)
		_, _ = w.Write(body)
	}
}

// bufferedResponse holds a handler's response so it can be rewritten.
type bufferedResponse struct {
	header      http.Header
	status      int
	wroteHeader bool
	body        bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header { return b.header }

func (b *bufferedResponse) WriteHeader(status int) {
	if !b.wroteHeader {
		b.status, b.wroteHeader = status, true
	}
}

func (b *bufferedResponse) Write(p []byte) (int, error) {
	b.wroteHeader = true
	return b.body.Write(p)
}
