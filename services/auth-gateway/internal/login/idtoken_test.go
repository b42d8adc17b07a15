package login_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/login"
)

// hostRoute is the provider client's transport in tests where a provider's
// issuer names a host that does not exist here: requests to that host go,
// over plain HTTP, to the test server at target instead (as a resolver
// entry would send them); every other request goes out unchanged.
type hostRoute struct {
	host   string
	target *url.URL
}

func (h hostRoute) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Host == h.host {
		r = r.Clone(r.Context())
		r.URL.Scheme, r.URL.Host, r.Host = h.target.Scheme, h.target.Host, h.target.Host
	}
	return http.DefaultTransport.RoundTrip(r)
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

// TestALongNameIsCutInTheEventAsInTheSession: the display name is the
// provider's to choose; a huge one must not make the event too large for
// JetStream (which would then refuse it, or stall the spool).
func TestALongNameIsCutInTheEventAsInTheSession(t *testing.T) {
	h := newHostileIdP(t)
	long := strings.Repeat("é", 40_000) // 80 KB
	h.set(func(h *hostileIdP) { h.claims = func(c map[string]any) { c["name"] = long } })
	g := hostileGateway(t, h)
	b := g.browser()
	if resp := b.finish(b.begin(""), nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in = %d %s", resp.StatusCode, resp.body)
	}
	name := decodeEvent(t, g.events()[0]).GetName()
	if len(name) > 256 || !utf8.ValidString(name) || !strings.HasPrefix(long, name) {
		t.Errorf("event name has %d bytes (valid UTF-8: %v), want the first at most 256 bytes of the name", len(name), utf8.ValidString(name))
	}
	var who map[string]string
	if err := json.Unmarshal([]byte(b.get("/me").body), &who); err != nil || who["name"] != name {
		t.Errorf("session name differs from the event's (%d vs %d bytes)", len(who["name"]), len(name))
	}
}
