// Package idp is a minimal OpenID Connect provider for benchmarks:
// discovery, JWKS, an authorization endpoint that signs in whoever the
// X-Bench-User header names without a page, and token and UserInfo
// endpoints. ID tokens are signed with ES256 (P-256), whose signatures cost
// a few tens of microseconds, so that the provider is never what limits a
// sign-in benchmark.
//
// It authenticates nobody: never let it listen beyond loopback.
package idp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// UserHeader names the person an authorization request signs in: their
// email address, which is also the key of their subject.
const UserHeader = "X-Bench-User"

// Config is the single client the provider knows.
type Config struct {
	// Issuer is the provider's URL, e.g. "http://127.0.0.1:5557".
	Issuer       string
	ClientID     string
	ClientSecret string
}

// Provider is the provider's state: its key and the codes and tokens it
// issued. Codes are single use; access tokens live as long as it does.
type Provider struct {
	cfg    Config
	signer jose.Signer
	jwks   []byte
	disco  []byte

	codes  sync.Map // code → grant
	tokens sync.Map // access token → grant
	served sync.Map // email → *atomic.Int64, nanoseconds spent in token and UserInfo handlers
}

// grant is what an authorization request decided.
type grant struct {
	email         string
	nonce         string
	challenge     string
	redirectURI   string
	authenticated time.Time
}

// New makes a provider with a fresh P-256 key.
func New(cfg Config) (*Provider, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	kid := randomToken(8)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		return nil, err
	}
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{
		Key: &key.PublicKey, KeyID: kid, Algorithm: string(jose.ES256), Use: "sig",
	}}})
	if err != nil {
		return nil, err
	}
	disco, err := json.Marshal(map[string]any{
		"issuer":                                cfg.Issuer,
		"authorization_endpoint":                cfg.Issuer + "/authorize",
		"token_endpoint":                        cfg.Issuer + "/token",
		"userinfo_endpoint":                     cfg.Issuer + "/userinfo",
		"jwks_uri":                              cfg.Issuer + "/jwks",
		"response_types_supported":              []string{"code"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{string(jose.ES256)},
		"scopes_supported":                      []string{"openid", "email", "profile"},
		"token_endpoint_auth_methods_supported": []string{"client_secret_basic", "client_secret_post"},
		"code_challenge_methods_supported":      []string{"S256"},
		"claims_supported":                      []string{"sub", "email", "email_verified", "name"},
	})
	if err != nil {
		return nil, err
	}
	return &Provider{cfg: cfg, signer: signer, jwks: jwks, disco: disco}, nil
}

// Handler serves the provider's endpoints.
func (p *Provider) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, p.disco)
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, p.jwks)
	})
	mux.HandleFunc("GET /authorize", p.authorize)
	mux.HandleFunc("POST /token", p.timed(p.token))
	mux.HandleFunc("GET /userinfo", p.timed(p.userinfo))
	return mux
}

// ServedTime returns, and forgets, how long the token and UserInfo handlers
// worked for email's sign-ins: the provider's share of the time the
// relying party spent waiting on it.
func (p *Provider) ServedTime(email string) time.Duration {
	v, ok := p.served.LoadAndDelete(email)
	if !ok {
		return 0
	}
	return time.Duration(v.(*atomic.Int64).Load())
}

// timed adds the handler's duration to ServedTime of the email it served.
func (p *Provider) timed(h func(http.ResponseWriter, *http.Request) string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		email := h(w, r)
		if email == "" {
			return
		}
		d := time.Since(start)
		v, _ := p.served.LoadOrStore(email, new(atomic.Int64))
		v.(*atomic.Int64).Add(int64(d))
	}
}

// authorize signs in the person named by UserHeader and redirects back at
// once. A request it cannot send back gets a plain 400.
func (p *Provider) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	email := r.Header.Get(UserHeader)
	redirect, err := url.Parse(q.Get("redirect_uri"))
	switch {
	case q.Get("client_id") != p.cfg.ClientID:
		http.Error(w, "unknown client_id", http.StatusBadRequest)
		return
	case err != nil || redirect.Host == "":
		http.Error(w, "bad redirect_uri", http.StatusBadRequest)
		return
	case email == "":
		http.Error(w, "no "+UserHeader+" header", http.StatusBadRequest)
		return
	case q.Get("response_type") != "code":
		http.Error(w, "response_type must be code", http.StatusBadRequest)
		return
	case q.Get("code_challenge") != "" && q.Get("code_challenge_method") != "S256":
		http.Error(w, "only S256 PKCE", http.StatusBadRequest)
		return
	}
	code := randomToken(24)
	p.codes.Store(code, grant{
		email: email, nonce: q.Get("nonce"), challenge: q.Get("code_challenge"),
		redirectURI: q.Get("redirect_uri"), authenticated: time.Now(),
	})
	back := redirect.Query()
	back.Set("code", code)
	back.Set("state", q.Get("state"))
	redirect.RawQuery = back.Encode()
	http.Redirect(w, r, redirect.String(), http.StatusFound)
}

// token redeems a code for an ES256-signed ID token and an access token.
// It returns the email it served, or "" after an error answer.
func (p *Provider) token(w http.ResponseWriter, r *http.Request) string {
	if err := r.ParseForm(); err != nil {
		tokenError(w, http.StatusBadRequest, "invalid_request")
		return ""
	}
	id, secret, ok := r.BasicAuth()
	if ok {
		id, _ = url.QueryUnescape(id)
		secret, _ = url.QueryUnescape(secret)
	} else {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if id != p.cfg.ClientID || subtle.ConstantTimeCompare([]byte(secret), []byte(p.cfg.ClientSecret)) != 1 {
		tokenError(w, http.StatusUnauthorized, "invalid_client")
		return ""
	}
	v, ok := p.codes.LoadAndDelete(r.PostForm.Get("code"))
	if !ok || r.PostForm.Get("grant_type") != "authorization_code" {
		tokenError(w, http.StatusBadRequest, "invalid_grant")
		return ""
	}
	g := v.(grant)
	if g.redirectURI != r.PostForm.Get("redirect_uri") || !pkceOK(g.challenge, r.PostForm.Get("code_verifier")) {
		tokenError(w, http.StatusBadRequest, "invalid_grant")
		return ""
	}
	now := time.Now()
	claims, err := json.Marshal(map[string]any{
		"iss": p.cfg.Issuer, "sub": "bench|" + g.email, "aud": p.cfg.ClientID,
		"iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(), "auth_time": g.authenticated.Unix(),
		"nonce": g.nonce, "email": g.email, "email_verified": true, "name": "Bench User",
	})
	if err != nil {
		tokenError(w, http.StatusInternalServerError, "server_error")
		return ""
	}
	jws, err := p.signer.Sign(claims)
	if err != nil {
		tokenError(w, http.StatusInternalServerError, "server_error")
		return ""
	}
	idToken, err := jws.CompactSerialize()
	if err != nil {
		tokenError(w, http.StatusInternalServerError, "server_error")
		return ""
	}
	access := randomToken(24)
	p.tokens.Store(access, g)
	body, _ := json.Marshal(map[string]any{
		"access_token": access, "token_type": "Bearer", "expires_in": 300, "id_token": idToken,
	})
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, body)
	return g.email
}

// userinfo answers the claims of a bearer access token.
func (p *Provider) userinfo(w http.ResponseWriter, r *http.Request) string {
	const prefix = "Bearer "
	auth := r.Header.Get("Authorization")
	v, ok := p.tokens.Load(auth[min(len(prefix), len(auth)):])
	if len(auth) <= len(prefix) || !ok {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		w.WriteHeader(http.StatusUnauthorized)
		return ""
	}
	g := v.(grant)
	body, _ := json.Marshal(map[string]any{
		"sub": "bench|" + g.email, "email": g.email, "email_verified": true, "name": "Bench User",
	})
	writeJSON(w, http.StatusOK, body)
	return g.email
}

// pkceOK checks a PKCE S256 verifier; without a challenge there is nothing
// to check.
func pkceOK(challenge, verifier string) bool {
	if challenge == "" {
		return true
	}
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:]) == challenge
}

func tokenError(w http.ResponseWriter, status int, code string) {
	writeJSON(w, status, fmt.Appendf(nil, `{"error":%q}`, code))
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(body)
}

func randomToken(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
