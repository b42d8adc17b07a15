package login_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/oauth2-proxy/mockoidc"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/publish"
)

func TestProviderReportedErrors(t *testing.T) {
	tests := []struct {
		name       string
		errorCode  string
		accept     string
		wantStatus int
		wantResult string
		wantIn     []string
		wantNotIn  []string
	}{
		{
			name: "person declined", errorCode: "access_denied",
			wantStatus: http.StatusForbidden, wantResult: "access_denied",
			wantIn: []string{"You declined", `href="/"`},
		},
		{
			name: "person declined, asked by a machine", errorCode: "access_denied", accept: "application/json",
			wantStatus: http.StatusForbidden, wantResult: "access_denied",
			wantIn: []string{`"error":"access_denied"`, `"message":"You declined`},
		},
		{
			name: "provider failure shows its code", errorCode: "temporarily_unavailable",
			wantStatus: http.StatusBadRequest, wantResult: "provider_error",
			wantIn: []string{"temporarily_unavailable", `href="/"`},
		},
		{
			name: "provider error code is escaped", errorCode: `<script>alert(1)</script>`,
			wantStatus: http.StatusBadRequest, wantResult: "provider_error",
			wantIn:    []string{"&lt;script&gt;alert(1)&lt;/script&gt;"},
			wantNotIn: []string{"<script>"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGateway(t)
			b := g.browser()
			cb := b.begin("")
			state := cb.Query().Get("state")
			errURL := *cb
			errURL.RawQuery = url.Values{"error": {tt.errorCode}, "state": {state}}.Encode()

			resp := b.finish(&errURL, map[string]string{"Accept": tt.accept})
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status = %d, want %d", resp.StatusCode, tt.wantStatus)
			}
			mustContain(t, "response", resp.body, tt.wantIn...)
			for _, s := range tt.wantNotIn {
				if strings.Contains(resp.body, s) {
					t.Errorf("response contains %q", s)
				}
			}
			if b.cookie("/auth/callback", "doorbell_login_"+state[:16]) != "" {
				t.Error("attempt cookie not deleted")
			}
			if g.tokenCallCount() != 0 || len(g.events()) != 0 || setCookie(resp, "doorbell_session") != nil {
				t.Error("a refused sign-in redeemed the code, published or started a session")
			}
			if v := g.logins(tt.wantResult); v != 1 {
				t.Errorf("logins_total{%s} = %v", tt.wantResult, v)
			}
		})
	}
}

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

func TestNATSDownMeansNoSession(t *testing.T) {
	g := newGateway(t)
	b := g.browser()
	cb := b.begin("")
	g.nats.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	waitNotConnected(ctx, t, g.pub)

	resp := b.finish(cb, nil)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status = %d, want 503: %s", resp.StatusCode, resp.body)
	}
	mustContain(t, "page", resp.body, "We could not finish signing you in. Please try again in a moment.", `href="/"`)
	if setCookie(resp, "doorbell_session") != nil {
		t.Fatal("session cookie set although the event was not published")
	}
	if me := b.get("/me"); me.StatusCode != http.StatusUnauthorized {
		t.Errorf("/me = %d, want 401", me.StatusCode)
	}
	if v := g.logins("publish_failed"); v != 1 {
		t.Errorf("logins_total{publish_failed} = %v", v)
	}
	if v := g.counter("doorbell_gateway_events_publish_failures_total", nil); v != 1 {
		t.Errorf("events_publish_failures_total = %v", v)
	}
	mustContain(t, "log", g.logs.String(), "reason=publish_failed")
}

func TestSeveralTabsCanSignInAtOnce(t *testing.T) {
	g := newGateway(t)
	b := g.browser()
	first := b.begin("/one")
	second := b.begin("/two")

	for _, step := range []struct {
		cb   *url.URL
		want string
	}{{second, "/two"}, {first, "/one"}} {
		resp := b.finish(step.cb, nil)
		if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != step.want {
			t.Fatalf("callback = %d to %q, want 302 to %s: %s",
				resp.StatusCode, resp.Header.Get("Location"), step.want, resp.body)
		}
	}
	events := g.events()
	if len(events) != 2 {
		t.Fatalf("%d events, want 2", len(events))
	}
	a, c := decodeEvent(t, events[0]), decodeEvent(t, events[1])
	if a.EventId == c.EventId {
		t.Error("both sign-ins got the same event id")
	}
	if a.Client.DeviceId != c.Client.DeviceId {
		t.Error("the same browser got two device ids")
	}
	if v := g.logins("success"); v != 2 {
		t.Errorf("logins_total{success} = %v", v)
	}
}

func TestProviderUnreachableAtStart(t *testing.T) {
	g := newGateway(t, withDiscoveryDown())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := g.handler.Ready(ctx); err == nil {
		t.Fatal("Ready with discovery failing = nil")
	}
	b := g.browser()

	page := b.get("/login")
	if page.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/login = %d, want 503", page.StatusCode)
	}
	mustContain(t, "page", page.body, "identity provider is unreachable", `href="/"`)
	machine := b.do(http.MethodGet, g.gatewayURL("/login"), map[string]string{"Accept": "application/json"})
	var e map[string]string
	if err := json.Unmarshal([]byte(machine.body), &e); err != nil || e["error"] != "provider_unavailable" {
		t.Errorf("JSON answer = %s", machine.body)
	}
	if v := g.logins("provider_unavailable"); v != 2 {
		t.Errorf("logins_total{provider_unavailable} = %v, want 2", v)
	}

	// The provider comes back: the next sign-in discovers it.
	g.discoveryDown.Store(false)
	if resp := b.finish(b.begin(""), nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in after recovery = %d: %s", resp.StatusCode, resp.body)
	}
	if err := g.handler.Ready(ctx); err != nil {
		t.Errorf("Ready after recovery: %v", err)
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

func TestUnknownPathsAndHeaders(t *testing.T) {
	g := newGateway(t)
	b := g.browser()

	page := b.get("/no/such/page")
	if page.StatusCode != http.StatusNotFound {
		t.Errorf("status = %d, want 404", page.StatusCode)
	}
	mustContain(t, "404 page", page.body, "Page not found", `href="/"`)
	if ct := page.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type = %q", ct)
	}
	for k, v := range map[string]string{
		"Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
	} {
		if got := page.Header.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if csp := page.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy = %q", csp)
	}

	machine := b.do(http.MethodGet, g.gatewayURL("/no/such/page"), map[string]string{"Accept": "application/json"})
	var e map[string]string
	if err := json.Unmarshal([]byte(machine.body), &e); err != nil || machine.StatusCode != http.StatusNotFound ||
		e["error"] != "not_found" || e["message"] == "" {
		t.Errorf("JSON 404 = %d %s", machine.StatusCode, machine.body)
	}
}

// waitNotConnected polls until the publisher has noticed that NATS is
// gone; each probe is short so that one sent just before the disconnect
// does not hold up the loop.
func waitNotConnected(ctx context.Context, t *testing.T, pub *publish.Publisher) {
	t.Helper()
	for {
		probe, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := pub.Ready(probe)
		cancel()
		if errors.Is(err, publish.ErrNotConnected) || errors.Is(err, publish.ErrSpooling) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("publisher did not notice NATS went down (last: %v)", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
