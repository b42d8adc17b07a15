package login_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/login"
	"github.com/go-jose/go-jose/v4"
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
