package login_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/login"
)

// hostileIdP is a small OpenID Connect provider, real over HTTP, that the
// test can make misbehave: it mints ID tokens through forge, which may
// sign with the wrong key or algorithm, or change any claim.
type hostileIdP struct {
	t            testing.TB
	srv          *httptest.Server
	clientID     string
	clientSecret string

	mu sync.Mutex
	// published are the keys the JWKS endpoint serves; signing signs.
	published []signingKey
	signing   signingKey
	codes     map[string]*grant
	// forge turns the standard claims into the ID token; nil signs them
	// with the signing key.
	forge func(claims map[string]any) string
	// claims changes the standard claims before forging.
	claims func(claims map[string]any)
	// tokenHandler, when set, answers the token endpoint instead.
	tokenHandler http.HandlerFunc
	// release is closed when the test ends.
	release chan struct{}
	// sendIss adds RFC 9207's iss to authorization responses.
	sendIss bool
	// meta is added to the discovery document.
	meta map[string]any

	jwksFetches atomic.Int32
	tokenCalls  atomic.Int32
	// refused counts token requests refused for a spent or unknown code.
	refused atomic.Int32
}

// signingKey is an RSA key (RS256) or a P-256 key (ES256).
type signingKey struct {
	kid string
	key crypto.Signer
}

// alg is the JWS algorithm k signs with.
func (k signingKey) alg() jose.SignatureAlgorithm {
	if _, ok := k.key.(*ecdsa.PrivateKey); ok {
		return jose.ES256
	}
	return jose.RS256
}

type grant struct {
	nonce, challenge, redirectURI string
	used                          bool
}

var (
	rsaKeysOnce sync.Once
	rsaKeys     []*rsa.PrivateKey
)

// testKeys returns three RSA keys, made once for the whole package.
func testKeys(t testing.TB) []*rsa.PrivateKey {
	rsaKeysOnce.Do(func() {
		for range 3 {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			rsaKeys = append(rsaKeys, k)
		}
	})
	return rsaKeys
}

func newHostileIdP(t testing.TB) *hostileIdP {
	t.Helper()
	keys := testKeys(t)
	h := &hostileIdP{
		t: t, clientID: "doorbell-hostile", clientSecret: "hostile-client-secret-value",
		codes:   map[string]*grant{},
		signing: signingKey{kid: "key-1", key: keys[0]},
	}
	h.published = []signingKey{h.signing}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", h.discovery)
	mux.HandleFunc("GET /authorize", h.authorize)
	mux.HandleFunc("POST /token", h.token)
	mux.HandleFunc("GET /jwks", h.jwks)
	mux.HandleFunc("GET /end-session", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	h.srv = httptest.NewServer(mux)
	t.Cleanup(h.srv.Close)
	// Runs before Close: lets handlers that hang on purpose return.
	h.release = make(chan struct{})
	t.Cleanup(func() { close(h.release) })
	return h
}

func (h *hostileIdP) issuer() string { return h.srv.URL }

func (h *hostileIdP) provider(id string) login.ProviderConfig {
	return login.ProviderConfig{
		ID: id, Type: login.TypeOIDC, Issuer: h.issuer(), ClientID: h.clientID, ClientSecret: h.clientSecret,
		Scopes: []string{"openid", "email"},
	}.WithDefaults()
}

func (h *hostileIdP) discovery(w http.ResponseWriter, _ *http.Request) {
	doc := map[string]any{
		"issuer":                                h.issuer(),
		"authorization_endpoint":                h.issuer() + "/authorize",
		"token_endpoint":                        h.issuer() + "/token",
		"jwks_uri":                              h.issuer() + "/jwks",
		"response_types_supported":              []string{"code"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"code_challenge_methods_supported":      []string{"S256"},
	}
	h.mu.Lock()
	for k, v := range h.meta {
		doc[k] = v
	}
	h.mu.Unlock()
	writeTestJSON(w, http.StatusOK, doc)
}

func (h *hostileIdP) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("client_id") != h.clientID || q.Get("response_type") != "code" || q.Get("code_challenge_method") != "S256" ||
		q.Get("code_challenge") == "" || q.Get("state") == "" || q.Get("nonce") == "" {
		http.Error(w, "bad authorization request: "+r.URL.RawQuery, http.StatusBadRequest)
		return
	}
	code := "hostile-code-" + randomString(h.t)
	h.mu.Lock()
	h.codes[code] = &grant{nonce: q.Get("nonce"), challenge: q.Get("code_challenge"), redirectURI: q.Get("redirect_uri")}
	sendIss := h.sendIss
	h.mu.Unlock()
	back := url.Values{"code": {code}, "state": {q.Get("state")}}
	if sendIss {
		back.Set("iss", h.issuer())
	}
	http.Redirect(w, r, q.Get("redirect_uri")+"?"+back.Encode(), http.StatusFound)
}

func (h *hostileIdP) token(w http.ResponseWriter, r *http.Request) {
	h.tokenCalls.Add(1)
	h.mu.Lock()
	custom := h.tokenHandler
	h.mu.Unlock()
	if custom != nil {
		custom(w, r)
		return
	}
	if err := r.ParseForm(); err != nil {
		writeTestJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request"})
		return
	}
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if id != h.clientID || secret != h.clientSecret {
		writeTestJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_client"})
		return
	}
	code := r.PostForm.Get("code")
	h.mu.Lock()
	g := h.codes[code]
	spent := g == nil || g.used
	if g != nil {
		g.used = true
	}
	h.mu.Unlock()
	if spent {
		h.refused.Add(1)
		// Like several real providers, echo the code back.
		writeTestJSON(w, http.StatusBadRequest, map[string]string{
			"error": "invalid_grant", "error_description": "code " + code + " is unknown or was already used",
		})
		return
	}
	sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
	if base64.RawURLEncoding.EncodeToString(sum[:]) != g.challenge || r.PostForm.Get("redirect_uri") != g.redirectURI {
		writeTestJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant", "error_description": "PKCE or redirect_uri mismatch"})
		return
	}
	now := time.Now()
	claims := map[string]any{
		"iss": h.issuer(), "sub": "hostile-user-1", "aud": h.clientID,
		"exp": now.Add(5 * time.Minute).Unix(), "iat": now.Unix(), "nonce": g.nonce,
		"email": "hostile@example.com", "email_verified": true, "name": "Hostile User",
	}
	h.mu.Lock()
	change, forge := h.claims, h.forge
	h.mu.Unlock()
	if change != nil {
		change(claims)
	}
	var idToken string
	if forge != nil {
		idToken = forge(claims)
	} else {
		idToken = h.sign(claims, h.currentKey())
	}
	access := "hostile-access-" + randomString(h.t)
	body := map[string]any{"access_token": access, "token_type": "Bearer", "expires_in": 300, "id_token": idToken}
	raw, _ := json.Marshal(body)
	suite.tokenResponse(raw)
	writeTestJSON(w, http.StatusOK, body)
}

func (h *hostileIdP) jwks(w http.ResponseWriter, _ *http.Request) {
	h.jwksFetches.Add(1)
	h.mu.Lock()
	defer h.mu.Unlock()
	var set jose.JSONWebKeySet
	for _, k := range h.published {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.key.Public(), KeyID: k.kid, Algorithm: string(k.alg()), Use: "sig"})
	}
	writeTestJSON(w, http.StatusOK, set)
}

func (h *hostileIdP) currentKey() signingKey {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.signing
}

// rotate starts signing with a new key and publishes only that one.
func (h *hostileIdP) rotate(k signingKey) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.signing = k
	h.published = []signingKey{k}
}

func (h *hostileIdP) set(change func(h *hostileIdP)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	change(h)
}

// sign returns claims as a JWT signed by k.
func (h *hostileIdP) sign(claims map[string]any, k signingKey) string {
	h.t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: k.alg(), Key: jose.JSONWebKey{Key: k.key, KeyID: k.kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		h.t.Fatal(err)
	}
	payload, _ := json.Marshal(claims)
	jws, err := signer.Sign(payload)
	if err != nil {
		h.t.Fatal(err)
	}
	s, err := jws.CompactSerialize()
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

// rawJWT builds header.payload.signature with sign computing the signature
// over the first two parts; it can produce what no JOSE library will.
func rawJWT(header, claims map[string]any, sign func(input []byte) []byte) string {
	hb, _ := json.Marshal(header)
	cb, _ := json.Marshal(claims)
	input := base64.RawURLEncoding.EncodeToString(hb) + "." + base64.RawURLEncoding.EncodeToString(cb)
	return input + "." + base64.RawURLEncoding.EncodeToString(sign([]byte(input)))
}

func randomString(t testing.TB) string {
	b := make([]byte, 18)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func writeTestJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// hostileGateway is a gateway whose only provider is h, as id "hostile".
func hostileGateway(t *testing.T, h *hostileIdP, opts ...gatewayOption) *gateway {
	t.Helper()
	return newGateway(t, append([]gatewayOption{withProviders(h.provider("hostile"))}, opts...)...)
}

// assertRefused checks what the person, the operator and the stream see
// after a refused sign-in.
func assertRefused(t *testing.T, g *gateway, resp response, status int, provider, result string, page ...string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("status = %d, want %d: %s", resp.StatusCode, status, resp.body)
	}
	mustContain(t, "page", resp.body, append(page, `href="/"`, "<code>"+result+"</code>")...)
	want := map[string]float64{provider + "/" + result: 1}
	if got := g.loginTotals(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("logins_total moved %v, want exactly %v", got, want)
	}
	if n := len(g.events()); n != 0 {
		t.Errorf("%d events published", n)
	}
	if setCookie(resp, "doorbell_session") != nil {
		t.Error("session cookie set")
	}
	mustContain(t, "log", g.logs.String(), "reason="+result)
}

func TestForgedAndInvalidIDTokensAreRefused(t *testing.T) {
	keys := testKeys(t)
	tests := []struct {
		name  string
		setup func(h *hostileIdP)
		want  string
	}{
		{
			name: "alg none",
			setup: func(h *hostileIdP) {
				h.forge = func(c map[string]any) string {
					return rawJWT(map[string]any{"alg": "none", "typ": "JWT"}, c, func([]byte) []byte { return nil })
				}
			},
			want: "token_invalid",
		},
		{
			name: "alg none with the real key's kid",
			setup: func(h *hostileIdP) {
				h.forge = func(c map[string]any) string {
					return rawJWT(map[string]any{"alg": "none", "kid": "key-1"}, c, func([]byte) []byte { return nil })
				}
			},
			want: "token_invalid",
		},
		{
			name: "HS256 keyed with the RSA public key (PEM)",
			setup: func(h *hostileIdP) {
				der, _ := x509.MarshalPKIXPublicKey(&keys[0].PublicKey)
				pemKey := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
				h.forge = func(c map[string]any) string {
					return rawJWT(map[string]any{"alg": "HS256", "typ": "JWT", "kid": "key-1"}, c, func(in []byte) []byte {
						m := hmac.New(sha256.New, pemKey)
						m.Write(in)
						return m.Sum(nil)
					})
				}
			},
			want: "token_invalid",
		},
		{
			name: "HS256 keyed with the RSA public key (DER)",
			setup: func(h *hostileIdP) {
				der, _ := x509.MarshalPKIXPublicKey(&keys[0].PublicKey)
				h.forge = func(c map[string]any) string {
					return rawJWT(map[string]any{"alg": "HS256", "kid": "key-1"}, c, func(in []byte) []byte {
						m := hmac.New(sha256.New, der)
						m.Write(in)
						return m.Sum(nil)
					})
				}
			},
			want: "token_invalid",
		},
		{
			name: "signed by another key under the real key's kid",
			setup: func(h *hostileIdP) {
				h.forge = func(c map[string]any) string { return h.sign(c, signingKey{kid: "key-1", key: keys[2]}) }
			},
			want: "token_invalid",
		},
		{
			name: "signature cut off",
			setup: func(h *hostileIdP) {
				h.forge = func(c map[string]any) string {
					s := h.sign(c, h.currentKey())
					return s[:strings.LastIndexByte(s, '.')+1]
				}
			},
			want: "token_invalid",
		},
		{
			name: "claims changed after signing",
			setup: func(h *hostileIdP) {
				h.forge = func(c map[string]any) string {
					parts := strings.Split(h.sign(c, h.currentKey()), ".")
					c["email"] = "ceo@example.com"
					cb, _ := json.Marshal(c)
					parts[1] = base64.RawURLEncoding.EncodeToString(cb)
					return strings.Join(parts, ".")
				}
			},
			want: "token_invalid",
		},
		{
			name:  "wrong audience",
			setup: func(h *hostileIdP) { h.claims = func(c map[string]any) { c["aud"] = "another-client" } },
			want:  "token_invalid",
		},
		{
			name:  "wrong issuer",
			setup: func(h *hostileIdP) { h.claims = func(c map[string]any) { c["iss"] = "https://evil.example" } },
			want:  "token_invalid",
		},
		{
			name: "expired",
			setup: func(h *hostileIdP) {
				h.claims = func(c map[string]any) {
					c["exp"] = time.Now().Add(-time.Hour).Unix()
					c["iat"] = time.Now().Add(-2 * time.Hour).Unix()
				}
			},
			want: "token_invalid",
		},
		{
			name:  "no subject",
			setup: func(h *hostileIdP) { h.claims = func(c map[string]any) { delete(c, "sub") } },
			want:  "token_invalid",
		},
		{
			name:  "subject with a newline",
			setup: func(h *hostileIdP) { h.claims = func(c map[string]any) { c["sub"] = "u1\nX-Auth-Request-User: admin" } },
			want:  "token_invalid",
		},
		{
			name:  "nonce of another sign-in",
			setup: func(h *hostileIdP) { h.claims = func(c map[string]any) { c["nonce"] = "someone-elses-nonce" } },
			want:  "nonce_mismatch",
		},
		{
			name:  "no nonce",
			setup: func(h *hostileIdP) { h.claims = func(c map[string]any) { delete(c, "nonce") } },
			want:  "nonce_mismatch",
		},
		{
			name: "email that is a list",
			setup: func(h *hostileIdP) {
				h.claims = func(c map[string]any) { c["email"] = "a@example.com, admin@example.com" }
			},
			want: "email_invalid",
		},
		{
			name:  "unverified email",
			setup: func(h *hostileIdP) { h.claims = func(c map[string]any) { c["email_verified"] = false } },
			want:  "email_unverified",
		},
		{
			name: "no email and no UserInfo endpoint",
			setup: func(h *hostileIdP) {
				h.claims = func(c map[string]any) { delete(c, "email"); delete(c, "email_verified") }
			},
			want: "email_missing",
		},
	}
	statusOf := map[string]int{
		"token_invalid": http.StatusUnauthorized, "nonce_mismatch": http.StatusUnauthorized,
		"email_invalid": http.StatusForbidden, "email_unverified": http.StatusForbidden, "email_missing": http.StatusForbidden,
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHostileIdP(t)
			h.set(tt.setup)
			g := hostileGateway(t, h)
			b := g.browser()
			resp := b.finish(b.begin(""), nil)
			assertRefused(t, g, resp, statusOf[tt.want], "hostile", tt.want)
			if h.tokenCalls.Load() != 1 {
				t.Errorf("token endpoint called %d times, want 1", h.tokenCalls.Load())
			}
		})
	}
}

func TestSigningKeyRotationFetchesTheNewKeys(t *testing.T) {
	keys := testKeys(t)
	h := newHostileIdP(t)
	g := hostileGateway(t, h)
	b := g.browser()
	if resp := b.finish(b.begin(""), nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("first sign-in = %d: %s", resp.StatusCode, resp.body)
	}
	if n := h.jwksFetches.Load(); n != 1 {
		t.Fatalf("JWKS fetched %d times for the first sign-in, want 1", n)
	}
	if resp := b.finish(b.begin(""), nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("second sign-in = %d: %s", resp.StatusCode, resp.body)
	}
	if n := h.jwksFetches.Load(); n != 1 {
		t.Fatalf("JWKS fetched %d times after two sign-ins with the same key, want 1 (cached)", n)
	}

	// The provider rotates: a token under an unknown kid makes the gateway
	// fetch the key set again, and the new key works.
	h.rotate(signingKey{kid: "key-2", key: keys[1]})
	if resp := b.finish(b.begin(""), nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in after rotation = %d: %s", resp.StatusCode, resp.body)
	}
	if n := h.jwksFetches.Load(); n != 2 {
		t.Errorf("JWKS fetched %d times after rotation, want 2", n)
	}

	// A kid that is not published even after fetching again is refused.
	h.set(func(h *hostileIdP) {
		h.forge = func(c map[string]any) string { return h.sign(c, signingKey{kid: "key-unpublished", key: keys[2]}) }
	})
	resp := b.finish(b.begin(""), nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unpublished kid = %d, want 401", resp.StatusCode)
	}
	if v := g.loginsFor("hostile", "token_invalid"); v != 1 {
		t.Errorf("logins_total{token_invalid} = %v", v)
	}
	if v := g.loginsFor("hostile", "success"); v != 3 {
		t.Errorf("logins_total{success} = %v, want 3", v)
	}
	if n := len(g.events()); n != 3 {
		t.Errorf("%d events, want 3", n)
	}
}

func TestCodeReplay(t *testing.T) {
	h := newHostileIdP(t)
	g := hostileGateway(t, h)
	b := g.browser()
	cb := b.begin("")
	state := cb.Query().Get("state")
	attemptName := "doorbell_login_" + state[:16]
	copied := b.cookie("/auth/callback", attemptName)
	if resp := b.finish(cb, nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in = %d: %s", resp.StatusCode, resp.body)
	}

	// The same browser again: the attempt cookie is gone.
	again := b.finish(cb, nil)
	if again.StatusCode != http.StatusBadRequest || !strings.Contains(again.body, expiredPage) {
		t.Errorf("replay in the browser = %d, want 400 with the expired page", again.StatusCode)
	}
	// Someone who copied the attempt cookie: this replica remembers the
	// state as spent.
	replay := func(target string) response {
		req, _ := http.NewRequest(http.MethodGet, target+"/auth/callback?"+cb.RawQuery, nil)
		req.AddCookie(&http.Cookie{Name: attemptName, Value: copied})
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return response{Response: resp, body: string(body)}
	}
	copiedHere := replay(g.url.String())
	if copiedHere.StatusCode != http.StatusBadRequest || !strings.Contains(copiedHere.body, expiredPage) {
		t.Errorf("replay with a copied cookie = %d, want 400", copiedHere.StatusCode)
	}
	if n := h.tokenCalls.Load(); n != 1 {
		t.Errorf("token endpoint called %d times, want 1: a replay must not reach it", n)
	}
	// Another replica does not share that memory, so the code reaches the
	// provider, which refuses it: no second sign-in either way.
	other := g.replica(nil)
	elsewhere := replay(other.url)
	if elsewhere.StatusCode != http.StatusBadGateway {
		t.Errorf("replay at another replica = %d, want 502: %s", elsewhere.StatusCode, elsewhere.body)
	}
	if h.refused.Load() != 1 {
		t.Errorf("provider refused %d codes, want 1", h.refused.Load())
	}
	if v := counterIn(t, other.reg, "doorbell_gateway_logins_total", map[string]string{"provider": "hostile", "result": "exchange_failed"}); v != 1 {
		t.Errorf("replica logins_total{exchange_failed} = %v", v)
	}
	if v := g.loginsFor("hostile", "state_invalid"); v != 2 {
		t.Errorf("logins_total{state_invalid} = %v, want 2", v)
	}
	if n := len(g.events()); n != 1 {
		t.Errorf("%d events, want 1", n)
	}
}

func TestProviderErrorResponses(t *testing.T) {
	tests := []struct {
		name   string
		token  http.HandlerFunc
		status int
		result string
		page   string
	}{
		{
			name: "token endpoint says invalid_grant",
			token: func(w http.ResponseWriter, _ *http.Request) {
				writeTestJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant"})
			},
			status: http.StatusBadGateway, result: "exchange_failed", page: "Please try again",
		},
		{
			name: "token endpoint fails with an HTML page",
			token: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "text/html")
				w.WriteHeader(http.StatusInternalServerError)
				_, _ = w.Write([]byte("<h1>Internal Server Error</h1>"))
			},
			status: http.StatusBadGateway, result: "exchange_failed", page: "Please try again",
		},
		{
			name: "token endpoint answers 200 with an error",
			token: func(w http.ResponseWriter, _ *http.Request) {
				writeTestJSON(w, http.StatusOK, map[string]string{"error": "server_error"})
			},
			status: http.StatusBadGateway, result: "exchange_failed", page: "Please try again",
		},
		{
			name: "token response without an ID token",
			token: func(w http.ResponseWriter, _ *http.Request) {
				writeTestJSON(w, http.StatusOK, map[string]any{"access_token": "at-without-id-token", "token_type": "Bearer"})
			},
			status: http.StatusUnauthorized, result: "token_invalid", page: "invalid token",
		},
		{
			name: "token response is not JSON",
			token: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte("{not json"))
			},
			status: http.StatusBadGateway, result: "exchange_failed", page: "Please try again",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHostileIdP(t)
			h.set(func(h *hostileIdP) { h.tokenHandler = tt.token })
			g := hostileGateway(t, h)
			b := g.browser()
			assertRefused(t, g, b.finish(b.begin(""), nil), tt.status, "hostile", tt.result, tt.page)
			// The code goes to the provider once: no retry with the other
			// client authentication style.
			if n := h.tokenCalls.Load(); n != 1 {
				t.Errorf("token endpoint called %d times, want 1", n)
			}
		})
	}

	t.Run("provider reports an error on the callback", func(t *testing.T) {
		h := newHostileIdP(t)
		g := hostileGateway(t, h)
		b := g.browser()
		cb := b.begin("")
		errURL := *cb
		errURL.RawQuery = url.Values{"error": {"server_error"}, "state": {cb.Query().Get("state")}}.Encode()
		assertRefused(t, g, b.finish(&errURL, nil), http.StatusBadRequest, "hostile", "provider_error", "server_error")
		if h.tokenCalls.Load() != 0 {
			t.Error("token endpoint called")
		}
	})
	t.Run("discovery fails", func(t *testing.T) {
		h := newHostileIdP(t)
		h.set(func(h *hostileIdP) { h.meta = map[string]any{"issuer": "https://not-the-issuer.example"} })
		g := hostileGateway(t, h)
		resp := g.browser().get("/login")
		assertRefused(t, g, resp, http.StatusServiceUnavailable, "hostile", "provider_unavailable", "identity provider is unreachable")
	})
}

func TestProviderDownAtCallbackTime(t *testing.T) {
	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String() + "/token"
	ln.Close()

	tests := []struct {
		name  string
		setup func(h *hostileIdP)
	}{
		{"token endpoint unreachable", func(h *hostileIdP) { h.meta = map[string]any{"token_endpoint": dead} }},
		{"token endpoint never answers", func(h *hostileIdP) {
			h.tokenHandler = func(_ http.ResponseWriter, r *http.Request) {
				// Reading the body lets the server notice the client leave.
				_, _ = io.Copy(io.Discard, r.Body)
				select {
				case <-r.Context().Done():
				case <-h.release:
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHostileIdP(t)
			h.set(tt.setup)
			// The provider client's timeout is what bounds the wait. It also
			// bounds the discovery before it, real work on a loaded machine,
			// so it is not short.
			g := hostileGateway(t, h, withConfig(func(c *login.Config) { c.HTTPClient = &http.Client{Timeout: 10 * time.Second} }))
			b := g.browser()
			resp := b.finish(b.begin(""), nil)
			assertRefused(t, g, resp, http.StatusBadGateway, "hostile", "exchange_failed",
				"We could not complete the sign-in with your identity provider")
			if n := h.tokenCalls.Load(); n > 1 {
				t.Errorf("token endpoint called %d times; one timeout must be the whole wait", n)
			}
		})
	}
}

func TestIssuerParameterPromisedByDiscovery(t *testing.T) {
	tests := []struct {
		name    string
		sendIss bool
		strip   bool
		status  int
		result  string
	}{
		{"promised and sent", true, false, http.StatusFound, "success"},
		{"promised but missing", true, true, http.StatusBadRequest, "issuer_mismatch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHostileIdP(t)
			h.set(func(h *hostileIdP) {
				h.sendIss = tt.sendIss
				h.meta = map[string]any{"authorization_response_iss_parameter_supported": true}
			})
			g := hostileGateway(t, h)
			b := g.browser()
			cb := b.begin("")
			if cb.Query().Get("iss") != h.issuer() {
				t.Fatalf("provider did not send iss: %s", cb)
			}
			if tt.strip {
				cb = withQuery(cb, "iss", "")
			}
			resp := b.finish(cb, nil)
			if resp.StatusCode != tt.status {
				t.Fatalf("status = %d, want %d: %s", resp.StatusCode, tt.status, resp.body)
			}
			if v := g.loginsFor("hostile", tt.result); v != 1 {
				t.Errorf("logins_total{%s} = %v", tt.result, v)
			}
			if tt.result != "success" && h.tokenCalls.Load() != 0 {
				t.Error("code redeemed despite the missing iss")
			}
		})
	}
}

func TestRPInitiatedLogout(t *testing.T) {
	h := newHostileIdP(t)
	var issued []string
	h.set(func(h *hostileIdP) {
		h.meta = map[string]any{"end_session_endpoint": h.issuer() + "/end-session?tenant=7"}
		h.forge = func(c map[string]any) string {
			tok := h.sign(c, h.currentKey())
			issued = append(issued, tok)
			return tok
		}
	})
	g := hostileGateway(t, h)
	b := signedIn(t, g)
	if b.cookie("/logout", "doorbell_logout") == "" {
		t.Fatal("the sign-in kept no ID token for signing out")
	}
	if b.cookie("/", "doorbell_logout") != "" {
		t.Error("the ID token cookie is sent beyond /logout")
	}
	out := b.postForm("/logout", url.Values{"csrf": {csrfField(t, b.get("/logout").body)}},
		map[string]string{"Sec-Fetch-Site": "same-origin"})

	// Not a redirect (Chromium would block it under form-action 'self'),
	// but a page that moves on at once, with a button.
	refresh := out.Header.Get("Refresh")
	if out.StatusCode != http.StatusOK || !strings.HasPrefix(refresh, "0; url=") {
		t.Fatalf("logout = %d with Refresh %q, want 200 and a Refresh to the provider", out.StatusCode, refresh)
	}
	loc, err := url.Parse(strings.TrimPrefix(refresh, "0; url="))
	if err != nil {
		t.Fatal(err)
	}
	q := loc.Query()
	idToken := issued[len(issued)-1]
	if loc.Host != h.srv.Listener.Addr().String() || loc.Path != "/end-session" || q.Get("tenant") != "7" ||
		q.Get("client_id") != h.clientID || q.Get("post_logout_redirect_uri") != g.url.String()+"/" || q.Get("id_token_hint") != idToken {
		t.Errorf("logout goes to %s, want the end_session_endpoint with client_id, id_token_hint and post_logout_redirect_uri", loc)
	}
	mustContain(t, "page", out.body, "signed out of Doorbell", `href="`+html.EscapeString(loc.String())+`"`)
	if c := setCookie(out, "doorbell_logout"); c == nil || c.MaxAge >= 0 {
		t.Errorf("the kept ID token was not deleted: %+v", c)
	}
	if b.get("/me").StatusCode != http.StatusUnauthorized {
		t.Error("still signed in at the gateway")
	}
	if end := b.do(http.MethodGet, loc.String(), nil); end.StatusCode != http.StatusOK {
		t.Errorf("the provider's end-session endpoint = %d", end.StatusCode)
	}
}
