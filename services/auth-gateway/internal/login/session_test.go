package login_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/cookie"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/login"
)

func TestForwardAuth(t *testing.T) {
	g := newGateway(t)
	anon := g.browser()
	for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodPost} {
		resp := anon.do(method, g.gatewayURL("/auth/verify"), nil)
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Location") != "" {
			t.Errorf("%s /auth/verify without a session = %d Location %q, want 401 and no redirect",
				method, resp.StatusCode, resp.Header.Get("Location"))
		}
		if resp.Header.Get("X-Auth-Request-Email") != "" {
			t.Error("401 carries identity headers")
		}
	}

	g.idp.QueueUser(alice())
	b := signedIn(t, g)
	for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodPost} {
		resp := b.do(method, g.gatewayURL("/auth/verify"), map[string]string{"X-Original-URI": "/app/page"})
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("%s /auth/verify with a session = %d, want 204", method, resp.StatusCode)
		}
		for k, v := range map[string]string{
			"X-Auth-Request-Email":    "alice@example.com",
			"X-Auth-Request-User":     g.idp.Issuer() + "|alice-1",
			"X-Auth-Request-Provider": providerID,
		} {
			if got := resp.Header.Get(k); got != v {
				t.Errorf("%s = %q, want %q", k, got, v)
			}
		}
		if len(resp.Cookies()) != 0 {
			t.Error("/auth/verify set a cookie")
		}
	}
	if v := g.counter("doorbell_gateway_verify_requests_total", map[string]string{"result": "authorized"}); v != 3 {
		t.Errorf("verify_requests_total{authorized} = %v, want 3", v)
	}
	if v := g.counter("doorbell_gateway_verify_requests_total", map[string]string{"result": "unauthorized"}); v != 3 {
		t.Errorf("verify_requests_total{unauthorized} = %v, want 3", v)
	}
}

func TestSessionLifetimeIsCheckedInsideTheCookie(t *testing.T) {
	g := newGateway(t)
	b := signedIn(t, g)
	session := b.cookie("/", "doorbell_session")
	// A replica configured with a shorter lifetime refuses a session issued
	// under the longer one once it is older than the new limit, although
	// the cookie's own expiry is still hours away.
	short := g.replica(func(c *login.Config) { c.SessionTTL = time.Hour })

	g.clock.advance(61 * time.Minute)
	if got := verifyWith(t, g.gatewayURL("/auth/verify"), session); got != http.StatusNoContent {
		t.Errorf("original gateway after 61m = %d, want 204 (12h lifetime)", got)
	}
	if got := verifyWith(t, short.url+"/auth/verify", session); got != http.StatusUnauthorized {
		t.Errorf("replica with a 1h lifetime after 61m = %d, want 401", got)
	}
	g.clock.advance(11 * time.Hour)
	if got := verifyWith(t, g.gatewayURL("/auth/verify"), session); got != http.StatusUnauthorized {
		t.Errorf("after 12h = %d, want 401", got)
	}
	if me := b.get("/me"); me.StatusCode != http.StatusUnauthorized {
		t.Errorf("/me after 12h = %d", me.StatusCode)
	}
}

func TestSessionEndsWhenItsProviderIsRemovedOrChanged(t *testing.T) {
	g := newGateway(t)
	b := signedIn(t, g)
	session := b.cookie("/", "doorbell_session")
	removed := g.replica(func(c *login.Config) {
		p := g.mockProvider()
		p.ID = "another"
		c.Providers = []login.ProviderConfig{p}
	})
	changed := g.replica(func(c *login.Config) {
		p := g.mockProvider()
		p.Issuer = "https://other-issuer.example"
		c.Providers = []login.ProviderConfig{p}
	})
	if got := verifyWith(t, removed.url+"/auth/verify", session); got != http.StatusUnauthorized {
		t.Errorf("provider removed: %d, want 401", got)
	}
	if got := verifyWith(t, changed.url+"/auth/verify", session); got != http.StatusUnauthorized {
		t.Errorf("provider's issuer changed: %d, want 401", got)
	}
	if got := verifyWith(t, g.gatewayURL("/auth/verify"), session); got != http.StatusNoContent {
		t.Errorf("unchanged gateway: %d, want 204", got)
	}
}

func TestTamperedSessionCookiesAreIgnored(t *testing.T) {
	g := newGateway(t)
	b := signedIn(t, g)
	good := b.cookie("/", "doorbell_session")
	otherKey, err := cookie.New([][]byte{bytes.Repeat([]byte{9}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := otherKey.Seal("doorbell_session", []byte(`{"id":"x","issuer":"`+g.idp.Issuer()+
		`","subject":"root","provider":"`+providerID+`","email":"root@example.com","iat":1,"expires":9999999999}`),
		time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	attempt := g.browser()
	cb := attempt.begin("")
	attemptValue := attempt.cookie("/auth/callback", "doorbell_login_"+cb.Query().Get("state")[:16])

	tests := []struct{ name, value string }{
		{"flipped byte", flip(good)},
		{"truncated", good[:len(good)-10]},
		{"sealed with another key", foreign},
		{"an attempt cookie's value", attemptValue},
		{"not sealed at all", "eyJlbWFpbCI6InJvb3RAZXhhbXBsZS5jb20ifQ"},
		{"empty", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := verifyWith(t, g.gatewayURL("/auth/verify"), tt.value); got != http.StatusUnauthorized {
				t.Errorf("/auth/verify = %d, want 401", got)
			}
			req, _ := http.NewRequest(http.MethodGet, g.gatewayURL("/me"), nil)
			req.AddCookie(&http.Cookie{Name: "doorbell_session", Value: tt.value})
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("/me = %d, want 401", resp.StatusCode)
			}
		})
	}
	if got := verifyWith(t, g.gatewayURL("/auth/verify"), good); got != http.StatusNoContent {
		t.Errorf("the untouched cookie = %d, want 204", got)
	}
}

func TestSessionCookieDomain(t *testing.T) {
	g := newGateway(t, withConfig(func(c *login.Config) { c.CookieDomain = "example.com" }))
	b := g.browser()
	resp := b.finish(b.begin(""), nil)
	sc := setCookie(resp, "doorbell_session")
	if sc == nil || sc.Domain != "example.com" {
		t.Fatalf("session cookie = %+v, want Domain=example.com", sc)
	}
	// Attempt and device cookies stay host-only.
	for _, c := range resp.Cookies() {
		if c.Name != "doorbell_session" && c.Domain != "" {
			t.Errorf("cookie %s has Domain %q", c.Name, c.Domain)
		}
	}
	// Signing out deletes both the host-only and the domain cookie. (The
	// test browser cannot keep a domain cookie for 127.0.0.1, so the
	// session is sent by hand.)
	req, _ := http.NewRequest(http.MethodPost, g.gatewayURL("/logout"), nil)
	req.AddCookie(&http.Cookie{Name: "doorbell_session", Value: sc.Value})
	out, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out.Body.Close()
	if out.StatusCode != http.StatusForbidden {
		t.Fatalf("logout without the form token = %d, want 403", out.StatusCode)
	}
	page, err := http.NewRequest(http.MethodGet, g.gatewayURL("/logout"), nil)
	if err != nil {
		t.Fatal(err)
	}
	page.AddCookie(&http.Cookie{Name: "doorbell_session", Value: sc.Value})
	pr, err := http.DefaultClient.Do(page)
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	_, _ = body.ReadFrom(pr.Body)
	pr.Body.Close()
	form := url.Values{"csrf": {csrfField(t, body.String())}}
	req, _ = http.NewRequest(http.MethodPost, g.gatewayURL("/logout"), strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(&http.Cookie{Name: "doorbell_session", Value: sc.Value})
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	out, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out.Body.Close()
	domains := map[string]bool{}
	for _, c := range out.Cookies() {
		if c.Name == "doorbell_session" && c.MaxAge < 0 {
			domains[c.Domain] = true
		}
	}
	if !domains[""] || !domains["example.com"] {
		t.Errorf("logout deleted the session cookie for %v, want host-only and example.com", domains)
	}
}

// verifyWith calls /auth/verify at target with session as the session
// cookie and returns the status.
func verifyWith(t *testing.T, target, session string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	if session != "" {
		req.AddCookie(&http.Cookie{Name: "doorbell_session", Value: session})
	} else {
		req.Header.Set("Cookie", "doorbell_session=")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// flip changes one character near the end of a sealed value.
func flip(v string) string {
	b := []byte(v)
	i := len(b) - 5
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

// TestSessionCookieIsHostPrefixedOverHTTPS: on https, with no cookie
// domain, the session cookie is __Host-doorbell_session (Secure, Path=/, no
// Domain), which a sibling subdomain cannot set or overwrite; a
// doorbell_session cookie such a neighbour planted is not a session.
func TestSessionCookieIsHostPrefixedOverHTTPS(t *testing.T) {
	g := newGateway(t, withTLS())
	b := g.browser()
	resp := b.finish(b.begin(""), nil)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in = %d %s", resp.StatusCode, resp.body)
	}
	sc := setCookie(resp, "__Host-doorbell_session")
	if sc == nil || !sc.Secure || sc.Path != "/" || sc.Domain != "" || !sc.HttpOnly {
		t.Fatalf("session cookie = %+v, want __Host-doorbell_session, Secure, Path=/, no Domain", sc)
	}
	if setCookie(resp, "doorbell_session") != nil {
		t.Error("a doorbell_session cookie was set too")
	}
	if me := b.get("/me"); me.StatusCode != http.StatusOK {
		t.Errorf("/me with the session = %d", me.StatusCode)
	}

	// A neighbour plants a session of its own, sealed validly (as a leaked
	// old cookie would be), under the unprefixed name.
	payload, _ := json.Marshal(map[string]any{
		"id": "planted", "issuer": g.idp.Issuer(), "subject": "mallory", "provider": providerID,
		"email": "mallory@example.com", "iat": time.Now().Unix(), "expires": time.Now().Add(time.Hour).Unix(),
	})
	planted, err := g.sealer.Seal("doorbell_session", payload, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	victim := g.browser()
	if me := victim.do(http.MethodGet, g.gatewayURL("/me"), map[string]string{"Cookie": "doorbell_session=" + planted}); me.StatusCode != http.StatusUnauthorized {
		t.Errorf("/me with a planted doorbell_session = %d %s, want 401", me.StatusCode, me.body)
	}
}

// TestAnOversizedHostSessionCookieIsDeletedOnce: the __Host- session
// cookie exists only at Path=/ for the host, so deleting an oversized one
// takes one Set-Cookie, not one per path the gateway ever used, and a
// sign-out that deletes the session again does not repeat it.
func TestAnOversizedHostSessionCookieIsDeletedOnce(t *testing.T) {
	const name = "__Host-doorbell_session"
	g := newGateway(t, withTLS())
	huge := map[string]string{"Cookie": name + "=v1." + strings.Repeat("a", 4000)}
	for _, tc := range []struct {
		what string
		send func(b *browser) response
	}{
		{"GET /", func(b *browser) response { return b.do(http.MethodGet, g.gatewayURL("/"), huge) }},
		{"POST /logout", func(b *browser) response { return b.postForm("/logout", url.Values{}, huge) }},
	} {
		t.Run(tc.what, func(t *testing.T) {
			resp := tc.send(g.browser())
			var deletes []string
			for _, v := range resp.Header.Values("Set-Cookie") {
				if strings.HasPrefix(v, name+"=") {
					deletes = append(deletes, v)
				}
			}
			if len(deletes) != 1 || !strings.Contains(deletes[0], "Max-Age=0") {
				t.Errorf("%s with an oversized %s: Set-Cookie for it = %q, want one deletion", tc.what, name, deletes)
			}
		})
	}
}
