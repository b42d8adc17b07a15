package login_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// maxSealedCookie is the most a Doorbell cookie may take (name and value):
// browsers keep 4096 bytes per cookie, and proxies limit whole headers.
const maxSealedCookie = 3584

// attemptCookies returns the sign-in attempt cookies the browser would
// send to the callback.
func (b *browser) attemptCookies() []*http.Cookie {
	var out []*http.Cookie
	for _, c := range b.jar.Cookies(b.g.url.ResolveReference(&url.URL{Path: "/auth/callback"})) {
		if strings.HasPrefix(c.Name, "doorbell_login_") {
			out = append(out, c)
		}
	}
	return out
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

// TestAttemptCookiesStaySmall: a long return path full of characters JSON
// would HTML-escape still fits the attempt cookie, and the person lands
// there.
func TestAttemptCookiesStaySmall(t *testing.T) {
	g := newGateway(t)
	b := g.browser()
	// 2003 bytes, under the 2 KiB rd limit; its 1000 '&' would each
	// become \u0026 in HTML-escaped JSON.
	rd := "/s?" + strings.Repeat("q&", 1000)
	cb := b.begin(rd)
	cookies := b.attemptCookies()
	if len(cookies) != 1 {
		t.Fatalf("%d attempt cookies, want 1", len(cookies))
	}
	if n := len(cookies[0].Name) + len(cookies[0].Value); n > maxSealedCookie {
		t.Errorf("attempt cookie takes %d bytes, want at most %d", n, maxSealedCookie)
	}
	resp := b.finish(cb, nil)
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != rd {
		t.Errorf("sign-in = %d to %q, want 302 to the return path", resp.StatusCode, resp.Header.Get("Location"))
	}
}

// TestAttemptCookiesDoNotPileUp: someone (or a page) starts sign-in after
// sign-in without finishing; the oldest attempts are dropped so the cookie
// header stays small, and the newest ones still work.
func TestAttemptCookiesDoNotPileUp(t *testing.T) {
	g := newGateway(t)
	b := g.browser()
	var starts []*url.URL
	for range 10 {
		starts = append(starts, b.authRequest("/login"))
	}
	cookies := b.attemptCookies()
	if len(cookies) > 4 {
		t.Errorf("%d attempt cookies after 10 unfinished sign-ins, want at most 4", len(cookies))
	}
	total := 0
	for _, c := range cookies {
		total += len(c.Name) + len(c.Value) + 2
	}
	if total > 6<<10 {
		t.Errorf("attempt cookies take %d bytes of the Cookie header", total)
	}
	// The last two tabs finish.
	for _, start := range starts[8:] {
		resp := b.do(http.MethodGet, start.String(), nil)
		cb, err := resp.Location()
		if err != nil {
			t.Fatalf("provider did not redirect back: %d", resp.StatusCode)
		}
		if out := b.finish(cb, nil); out.StatusCode != http.StatusFound {
			t.Errorf("a recent attempt = %d %s", out.StatusCode, out.body)
		}
	}
}

// TestAnOversizedDoorbellCookieIsDeletedNotAnswered: a Doorbell cookie
// larger than the gateway ever sets (left by an older version, or by a
// neighbour) is deleted and ignored, so the person can start again at
// once instead of getting a 400 on every page until it expires.
func TestAnOversizedDoorbellCookieIsDeletedNotAnswered(t *testing.T) {
	for _, name := range []string{"doorbell_session", "doorbell_login_0123456789abcdef"} {
		t.Run(name, func(t *testing.T) {
			g := newGateway(t)
			b := g.browser()
			huge := map[string]string{"Cookie": name + "=v1." + strings.Repeat("a", 4000)}
			home := b.do(http.MethodGet, g.gatewayURL("/"), huge)
			if home.StatusCode != http.StatusOK || !strings.Contains(home.body, "Sign in") {
				t.Fatalf("GET / with an oversized %s = %d, want the sign-in page: %.300s", name, home.StatusCode, home.body)
			}
			if c := setCookie(home, name); c == nil || c.MaxAge >= 0 {
				t.Errorf("the oversized cookie was not deleted: %+v", c)
			}
			mustContain(t, "log", g.logs.String(), "level=WARN", "cookie", name)
			if resp := b.finish(b.begin(""), nil); resp.StatusCode != http.StatusFound {
				t.Errorf("sign-in afterwards = %d", resp.StatusCode)
			}
		})
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
