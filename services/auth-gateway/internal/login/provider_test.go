package login_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/login"
	"github.com/oauth2-proxy/mockoidc"
)

func TestIssuerParameterMustNameOurProvider(t *testing.T) {
	tests := []struct {
		name       string
		iss        func(g *gateway) string
		wantStatus int
		wantResult string
	}{
		{"another issuer (mix-up)", func(*gateway) string { return "https://evil.example" }, http.StatusBadRequest, "issuer_mismatch"},
		{"our issuer", func(g *gateway) string { return g.idp.Issuer() }, http.StatusFound, "success"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGateway(t)
			b := g.browser()
			resp := b.finish(withQuery(b.begin(""), "iss", tt.iss(g)), nil)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d, want %d: %s", resp.StatusCode, tt.wantStatus, resp.body)
			}
			if v := g.logins(tt.wantResult); v != 1 {
				t.Errorf("logins_total{%s} = %v", tt.wantResult, v)
			}
			if tt.wantResult != "success" && (g.tokenCallCount() != 0 || len(g.events()) != 0) {
				t.Error("mismatched issuer still redeemed the code or published")
			}
		})
	}
}

func TestEmailMustBeSharedAndVerified(t *testing.T) {
	tests := []struct {
		name       string
		user       func() mockoidc.User
		wantStatus int
		wantResult string
		wantEmail  string // of the published event, when one is expected
		wantIn     []string
	}{
		{
			name: "provider omits email_verified and UserInfo does not verify (escaped on the page)",
			user: func() mockoidc.User {
				return &mockoidc.MockUser{Subject: "eve", Email: "<b>eve</b>@example.com", EmailVerified: false}
			},
			wantStatus: http.StatusForbidden, wantResult: "email_unverified",
			wantIn: []string{"Your email address &lt;b&gt;eve&lt;/b&gt;@example.com is not verified by 127.0.0.1:",
				"Verify it there, then sign in again."},
		},
		{
			name: "ID token says email_verified false",
			user: func() mockoidc.User {
				return &testUser{sub: "u1", idClaims: map[string]any{"email": "u1@example.com", "email_verified": false},
					userinfo: map[string]any{"email": "u1@example.com", "email_verified": true}}
			},
			wantStatus: http.StatusForbidden, wantResult: "email_unverified",
			wantIn: []string{"u1@example.com is not verified"},
		},
		{
			name: "email_verified as the string \"true\"",
			user: func() mockoidc.User {
				return &testUser{sub: "u2", idClaims: map[string]any{"email": "u2@example.com", "email_verified": "true"}}
			},
			wantStatus: http.StatusFound, wantResult: "success", wantEmail: "u2@example.com",
		},
		{
			name: "email_verified as the string \"false\"",
			user: func() mockoidc.User {
				return &testUser{sub: "u3", idClaims: map[string]any{"email": "u3@example.com", "email_verified": "false"}}
			},
			wantStatus: http.StatusForbidden, wantResult: "email_unverified",
		},
		{
			name: "email and verification only from UserInfo",
			user: func() mockoidc.User {
				return &testUser{sub: "u4", userinfo: map[string]any{"email": "u4@example.com", "email_verified": true}}
			},
			wantStatus: http.StatusFound, wantResult: "success", wantEmail: "u4@example.com",
		},
		{
			name: "verification only from UserInfo, as a string",
			user: func() mockoidc.User {
				return &testUser{sub: "u5", idClaims: map[string]any{"email": "u5@example.com"},
					userinfo: map[string]any{"email": "u5@example.com", "email_verified": "true"}}
			},
			wantStatus: http.StatusFound, wantResult: "success", wantEmail: "u5@example.com",
		},
		{
			name:       "no email anywhere",
			user:       func() mockoidc.User { return &testUser{sub: "u6"} },
			wantStatus: http.StatusForbidden, wantResult: "email_missing",
			wantIn: []string{"did not share an email address"},
		},
		{
			name: "UserInfo about another subject is not trusted",
			user: func() mockoidc.User {
				return &testUser{sub: "u7", userinfo: map[string]any{"sub": "mallory", "email": "m@example.com", "email_verified": true}}
			},
			wantStatus: http.StatusUnauthorized, wantResult: "token_invalid",
			wantIn: []string{"invalid token"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGateway(t)
			g.idp.QueueUser(tt.user())
			b := g.browser()
			resp := b.finish(b.begin(""), nil)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d, want %d: %s", resp.StatusCode, tt.wantStatus, resp.body)
			}
			mustContain(t, "page", resp.body, tt.wantIn...)
			if v := g.logins(tt.wantResult); v != 1 {
				t.Errorf("logins_total{%s} = %v", tt.wantResult, v)
			}
			events := g.events()
			if tt.wantEmail == "" {
				if len(events) != 0 || setCookie(resp, "doorbell_session") != nil {
					t.Errorf("refused sign-in published %d events or set a session", len(events))
				}
				mustContain(t, "page", resp.body, `href="/"`)
				return
			}
			if len(events) != 1 {
				t.Fatalf("%d events, want 1", len(events))
			}
			if got := decodeEvent(t, events[0]).Email; got != tt.wantEmail {
				t.Errorf("event email = %q, want %q", got, tt.wantEmail)
			}
		})
	}
}

func TestIDTokenChecks(t *testing.T) {
	tests := []struct {
		name       string
		user       *testUser
		wantResult string
	}{
		{
			name:       "nonce of another sign-in",
			user:       &testUser{sub: "n1", nonce: "someone-elses-nonce", idClaims: map[string]any{"email": "n1@example.com", "email_verified": true}},
			wantResult: "nonce_mismatch",
		},
		{
			name:       "token for another client",
			user:       &testUser{sub: "n2", idClaims: map[string]any{"aud": "another-client", "email": "n2@example.com", "email_verified": true}},
			wantResult: "token_invalid",
		},
		{
			name:       "token from another issuer",
			user:       &testUser{sub: "n3", idClaims: map[string]any{"iss": "https://evil.example", "email": "n3@example.com", "email_verified": true}},
			wantResult: "token_invalid",
		},
		{
			name:       "expired token",
			user:       &testUser{sub: "n4", idClaims: map[string]any{"exp": time.Now().Add(-time.Hour).Unix(), "email": "n4@example.com", "email_verified": true}},
			wantResult: "token_invalid",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGateway(t)
			g.idp.QueueUser(tt.user)
			b := g.browser()
			resp := b.finish(b.begin(""), nil)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("status = %d, want 401: %s", resp.StatusCode, resp.body)
			}
			mustContain(t, "page", resp.body, "Sign-in could not be verified", `href="/"`)
			if v := g.logins(tt.wantResult); v != 1 {
				t.Errorf("logins_total{%s} = %v", tt.wantResult, v)
			}
			if len(g.events()) != 0 || setCookie(resp, "doorbell_session") != nil {
				t.Error("rejected token still published or set a session")
			}
		})
	}
}

func TestExchangeFailureIsABadGateway(t *testing.T) {
	g := newGateway(t)
	b := g.browser()
	resp := b.finish(withQuery(b.begin(""), "code", "not-a-code-the-provider-issued"), nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status = %d, want 502: %s", resp.StatusCode, resp.body)
	}
	mustContain(t, "page", resp.body, "Please try again", `href="/"`)
	if v := g.logins("exchange_failed"); v != 1 {
		t.Errorf("logins_total{exchange_failed} = %v", v)
	}
	if len(g.events()) != 0 {
		t.Error("published after a failed exchange")
	}
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

// TestTheIdentityKeyIsTheConfiguredIssuer: Google may put its issuer
// without the scheme into ID tokens ("accounts.google.com"), which go-oidc
// accepts for https://accounts.google.com. The session and the event still
// carry the configured issuer, so the person stays signed in and the
// mail-worker sees the same user as at every other sign-in.
func TestTheIdentityKeyIsTheConfiguredIssuer(t *testing.T) {
	const google = "https://accounts.google.com"
	h := newHostileIdP(t)
	h.set(func(h *hostileIdP) {
		h.meta = map[string]any{"issuer": google}
		h.claims = func(c map[string]any) { c["iss"] = "accounts.google.com" }
	})
	p := h.provider("google")
	p.Issuer = google
	target, _ := url.Parse(h.srv.URL)
	g := newGateway(t, withProviders(p), withConfig(func(c *login.Config) {
		c.HTTPClient = &http.Client{Transport: hostRoute{host: "accounts.google.com", target: target}}
	}))

	b := g.browser()
	if resp := b.finish(b.begin(""), nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in = %d %s", resp.StatusCode, resp.body)
	}
	msgs := g.events()
	if len(msgs) != 1 {
		t.Fatalf("%d events, want 1", len(msgs))
	}
	if ev := decodeEvent(t, msgs[0]); ev.GetIssuer() != google {
		t.Errorf("event issuer = %q, want the configured %q", ev.GetIssuer(), google)
	}
	me := b.get("/me")
	var who map[string]string
	if me.StatusCode != http.StatusOK || json.Unmarshal([]byte(me.body), &who) != nil || who["issuer"] != google {
		t.Errorf("/me after signing in = %d %s; want the session, with issuer %s", me.StatusCode, me.body, google)
	}
}

// TestAuthorizedPartyMustBeUs: an ID token for several audiences is ours
// only when its azp names our client (OIDC Core 3.1.3.7); an azp naming
// another client is refused whatever the audience.
func TestAuthorizedPartyMustBeUs(t *testing.T) {
	const other = "another-client"
	tests := []struct {
		name   string
		claims func(c map[string]any, us string)
		want   string
	}{
		{"one audience, no azp", func(map[string]any, string) {}, "success"},
		{"one audience, azp us", func(c map[string]any, us string) { c["azp"] = us }, "success"},
		{"one audience, azp another client", func(c map[string]any, _ string) { c["azp"] = other }, "token_invalid"},
		{"several audiences, azp us", func(c map[string]any, us string) { c["aud"] = []string{us, other}; c["azp"] = us }, "success"},
		{"several audiences, no azp", func(c map[string]any, us string) { c["aud"] = []string{us, other} }, "token_invalid"},
		{"several audiences, azp another client", func(c map[string]any, us string) {
			c["aud"] = []string{us, other}
			c["azp"] = other
		}, "token_invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHostileIdP(t)
			h.set(func(h *hostileIdP) { h.claims = func(c map[string]any) { tt.claims(c, h.clientID) } })
			g := hostileGateway(t, h)
			b := g.browser()
			resp := b.finish(b.begin(""), nil)
			if tt.want == "success" {
				if resp.StatusCode != http.StatusFound || len(g.events()) != 1 {
					t.Fatalf("sign-in = %d, %d events; want 302 and one event: %s", resp.StatusCode, len(g.events()), resp.body)
				}
				return
			}
			assertRefused(t, g, resp, http.StatusUnauthorized, "hostile", tt.want)
			mustContain(t, "log", g.logs.String(), "azp")
		})
	}
}
