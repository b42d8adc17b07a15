package login_test

import (
	"encoding/json"
	"html"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

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

func TestLogoutEndsTheSession(t *testing.T) {
	g := newGateway(t)
	b := g.browser()
	if resp := b.finish(b.begin(""), nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in failed: %d %s", resp.StatusCode, resp.body)
	}
	if me := b.get("/me"); me.StatusCode != http.StatusOK {
		t.Fatalf("/me before logout = %d", me.StatusCode)
	}
	// The sign-out button on the start page carries the form's token.
	home := b.get("/")
	mustContain(t, "home page", home.body, `action="/logout"`, `method="post"`, `name="csrf"`)
	out := b.postForm("/logout", url.Values{"csrf": {csrfField(t, home.body)}},
		map[string]string{"Origin": g.url.String(), "Sec-Fetch-Site": "same-origin"})
	if out.StatusCode != http.StatusSeeOther || out.Header.Get("Location") != "/" {
		t.Errorf("logout = %d to %q, want 303 to /", out.StatusCode, out.Header.Get("Location"))
	}
	me := b.get("/me")
	if me.StatusCode != http.StatusUnauthorized {
		t.Fatalf("/me after logout = %d %s", me.StatusCode, me.body)
	}
	var e map[string]string
	if err := json.Unmarshal([]byte(me.body), &e); err != nil || e["error"] != "not_signed_in" || e["message"] == "" {
		t.Errorf("/me body = %s", me.body)
	}
	mustContain(t, "home page", b.get("/").body, `href="/login"`, "Sign in")
	if v := g.counter("doorbell_gateway_logouts_total", map[string]string{"result": "success"}); v != 1 {
		t.Errorf("logouts_total{success} = %v", v)
	}
}

func TestLogoutNeedsThisSitesForm(t *testing.T) {
	sameOrigin := func(g *gateway) map[string]string {
		return map[string]string{"Origin": g.url.String(), "Sec-Fetch-Site": "same-origin"}
	}
	tests := []struct {
		name string
		// post sends the sign-out request with the token from the
		// confirmation page.
		post       func(g *gateway, b *browser, token string) response
		wantStatus int
		wantResult string
	}{
		{
			name: "the form's token, from this site",
			post: func(g *gateway, b *browser, token string) response {
				return b.postForm("/logout", url.Values{"csrf": {token}}, sameOrigin(g))
			},
			wantStatus: http.StatusSeeOther, wantResult: "success",
		},
		{
			name: "no token",
			post: func(g *gateway, b *browser, _ string) response {
				return b.postForm("/logout", nil, sameOrigin(g))
			},
			wantStatus: http.StatusForbidden, wantResult: "rejected",
		},
		{
			name: "another session's token",
			post: func(g *gateway, b *browser, _ string) response {
				other := signedIn(g.t, g)
				return b.postForm("/logout", url.Values{"csrf": {csrfField(g.t, other.get("/logout").body)}}, sameOrigin(g))
			},
			wantStatus: http.StatusForbidden, wantResult: "rejected",
		},
		{
			name: "the right token, posted by another site",
			post: func(g *gateway, b *browser, token string) response {
				return b.postForm("/logout", url.Values{"csrf": {token}},
					map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
			},
			wantStatus: http.StatusForbidden, wantResult: "rejected",
		},
		{
			name: "the right token, posted by a sibling host",
			post: func(g *gateway, b *browser, token string) response {
				return b.postForm("/logout", url.Values{"csrf": {token}}, map[string]string{"Sec-Fetch-Site": "same-site"})
			},
			wantStatus: http.StatusForbidden, wantResult: "rejected",
		},
		{
			name: "the right token, from an old browser with only Origin",
			post: func(g *gateway, b *browser, token string) response {
				return b.postForm("/logout", url.Values{"csrf": {token}}, map[string]string{"Origin": "https://evil.example"})
			},
			wantStatus: http.StatusForbidden, wantResult: "rejected",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGateway(t)
			b := signedIn(t, g)

			// GET shows a confirmation and signs nobody out.
			page := b.get("/logout")
			if page.StatusCode != http.StatusOK {
				t.Fatalf("GET /logout = %d", page.StatusCode)
			}
			mustContain(t, "confirmation page", page.body, "Sign out of Doorbell?", `method="post"`, `action="/logout"`,
				`type="submit"`, "Stay signed in")
			if b.get("/me").StatusCode != http.StatusOK {
				t.Fatal("GET /logout ended the session")
			}

			resp := tt.post(g, b, csrfField(t, page.body))
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("POST /logout = %d, want %d: %s", resp.StatusCode, tt.wantStatus, resp.body)
			}
			stillIn := b.get("/me").StatusCode == http.StatusOK
			if tt.wantResult == "success" {
				if stillIn {
					t.Error("still signed in after a good sign-out")
				}
				if loc := resp.Header.Get("Location"); loc != "/" {
					t.Errorf("Location = %q, want / (mockoidc has no end_session_endpoint)", loc)
				}
			} else {
				if !stillIn {
					t.Error("a refused sign-out ended the session")
				}
				mustContain(t, "refusal page", resp.body, "You are still signed in", `href="/logout"`)
			}
			if v := g.logouts(tt.wantResult); v != 1 {
				t.Errorf("logouts_total{%s} = %v, want 1", tt.wantResult, v)
			}
		})
	}
}

func TestLogoutWithoutASession(t *testing.T) {
	g := newGateway(t)
	b := g.browser()
	page := b.get("/logout")
	mustContain(t, "page", page.body, "You are signed out")
	if strings.Contains(page.body, `name="csrf"`) {
		t.Error("signed-out page offers a sign-out form")
	}
	out := b.postForm("/logout", nil, nil)
	if out.StatusCode != http.StatusSeeOther || out.Header.Get("Location") != "/" {
		t.Errorf("POST /logout = %d to %q", out.StatusCode, out.Header.Get("Location"))
	}
	if v := g.logouts("no_session"); v != 1 {
		t.Errorf("logouts_total{no_session} = %v", v)
	}
}
