package login_test

import (
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/login"
)

func TestSignInIsRateLimitedPerClient(t *testing.T) {
	g := newGateway(t, slowRate(3))
	b := g.browser()
	cb := b.begin("")                                                   // /login: 1 of 3
	if resp := b.finish(cb, nil); resp.StatusCode != http.StatusFound { // /auth/callback: 2 of 3
		t.Fatalf("sign-in = %d", resp.StatusCode)
	}
	b.begin("") // 3 of 3

	limited := b.get("/login")
	if limited.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("4th request = %d, want 429", limited.StatusCode)
	}
	secs, err := strconv.Atoi(limited.Header.Get("Retry-After"))
	if err != nil || secs < 1 || secs > 3600 {
		t.Errorf("Retry-After = %q, want whole seconds up to an hour", limited.Header.Get("Retry-After"))
	}
	mustContain(t, "page", limited.body, "Too many sign-in attempts", "Please wait 60 minutes", "<code>rate_limited</code>", `href="/"`)

	// The callback shares the budget, and other pages are not limited.
	if cbResp := b.get("/auth/callback?state=" + strings.Repeat("A", 43)); cbResp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("callback = %d, want 429", cbResp.StatusCode)
	}
	if home := b.get("/"); home.StatusCode != http.StatusOK {
		t.Errorf("/ = %d", home.StatusCode)
	}
	if v := b.get("/auth/verify"); v.StatusCode != http.StatusNoContent {
		t.Errorf("/auth/verify = %d, want 204 (never rate limited)", v.StatusCode)
	}
	if v := g.logins("rate_limited"); v != 2 {
		t.Errorf("logins_total{rate_limited} = %v, want 2", v)
	}
	if n := len(g.events()); n != 1 {
		t.Errorf("%d events, want the one sign-in before the limit", n)
	}
	// X-Forwarded-For from a peer that is not a trusted proxy changes
	// nothing.
	spoofed := b.do(http.MethodGet, g.gatewayURL("/login"), map[string]string{"X-Forwarded-For": "203.0.113.50"})
	if spoofed.StatusCode != http.StatusTooManyRequests {
		t.Errorf("spoofed X-Forwarded-For = %d, want 429", spoofed.StatusCode)
	}
}

func TestTrustedProxyNamesTheClient(t *testing.T) {
	g := newGateway(t, slowRate(1), withConfig(func(c *login.Config) {
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8")}
	}))
	from := func(xff string) map[string]string { return map[string]string{"X-Forwarded-For": xff} }
	b := g.browser()

	// Two clients behind the proxy get a bucket each.
	if r := b.do(http.MethodGet, g.gatewayURL("/login"), from("198.51.100.1")); r.StatusCode != http.StatusFound {
		t.Fatalf("client 1 = %d", r.StatusCode)
	}
	if r := b.do(http.MethodGet, g.gatewayURL("/login"), from("198.51.100.2")); r.StatusCode != http.StatusFound {
		t.Errorf("client 2 = %d, want its own bucket", r.StatusCode)
	}
	// A client cannot escape by prepending addresses: the last untrusted
	// hop counts.
	if r := b.do(http.MethodGet, g.gatewayURL("/login"), from("192.0.2.99, 198.51.100.1, 10.1.2.3")); r.StatusCode != http.StatusTooManyRequests {
		t.Errorf("client 1 with a forged first hop = %d, want 429", r.StatusCode)
	}
	// IPv6 clients are limited per /64.
	if r := b.do(http.MethodGet, g.gatewayURL("/login"), from("2001:db8:1:2::1")); r.StatusCode != http.StatusFound {
		t.Errorf("IPv6 client = %d", r.StatusCode)
	}
	if r := b.do(http.MethodGet, g.gatewayURL("/login"), from("2001:db8:1:2::ffff")); r.StatusCode != http.StatusTooManyRequests {
		t.Errorf("same /64 = %d, want 429", r.StatusCode)
	}

	// The event carries the client's address, not the proxy's.
	g2 := newGateway(t, withConfig(func(c *login.Config) {
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	}))
	b2 := g2.browser()
	cb := b2.begin("")
	if resp := b2.finish(cb, from("203.0.113.7")); resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in = %d", resp.StatusCode)
	}
	if ip := decodeEvent(t, g2.events()[0]).Client.Ip; ip != "203.0.113.7" {
		t.Errorf("event client ip = %q, want 203.0.113.7", ip)
	}
}

func TestOversizedRequestsAreRefused(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	tests := []struct {
		name   string
		path   func(b *browser) string
		cookie string
		status int
		// counted is whether logins_total{request_too_large} moves.
		counted bool
	}{
		{"query string over 4 KiB on /login", func(*browser) string { return "/login?rd=/" + long(5000) }, "", http.StatusBadRequest, true},
		{"state over 1 KiB", func(*browser) string { return "/auth/callback?code=x&state=" + long(1100) }, "", http.StatusBadRequest, true},
		{"code over 1 KiB", func(b *browser) string {
			cb := b.begin("")
			return "/auth/callback?" + withQuery(cb, "code", long(1100)).RawQuery
		}, "", http.StatusBadRequest, true},
		{"session cookie over 4 KiB on /login is dropped, not refused", func(*browser) string { return "/login" }, "doorbell_session=" + long(5000), http.StatusFound, false},
		{"query string over 4 KiB elsewhere", func(*browser) string { return "/?x=" + long(5000) }, "", http.StatusBadRequest, false},
		{"another app's big cookie is its own business", func(*browser) string { return "/" }, "app_state=" + long(5000), http.StatusOK, false},
		{"forward auth ignores sizes", func(*browser) string { return "/auth/verify?x=" + long(5000) }, "", http.StatusUnauthorized, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGateway(t)
			b := g.browser()
			header := map[string]string{}
			if tt.cookie != "" {
				header["Cookie"] = tt.cookie
			}
			resp := b.do(http.MethodGet, g.gatewayURL(tt.path(b)), header)
			if resp.StatusCode != tt.status {
				t.Fatalf("status = %d, want %d: %.300s", resp.StatusCode, tt.status, resp.body)
			}
			want := 0.0
			if tt.counted {
				want = 1
				mustContain(t, "page", resp.body, "Request too large", "<code>request_too_large</code>")
			}
			if v := g.logins("request_too_large"); v != want {
				t.Errorf("logins_total{request_too_large} = %v, want %v", v, want)
			}
			if len(g.events()) != 0 {
				t.Error("published an event")
			}
		})
	}
}

// TestForwardedForFromAnUntrustedPeerIsLoggedOnce: a proxy the gateway
// does not trust sends X-Forwarded-For. The header is ignored (the client
// cannot pick its own address), and the operator is told once, with the
// peer to add to GATEWAY_TRUSTED_PROXIES.
func TestForwardedForFromAnUntrustedPeerIsLoggedOnce(t *testing.T) {
	g := newGateway(t)
	b := g.browser()
	for range 3 {
		cb := b.begin("")
		if resp := b.finish(cb, map[string]string{"X-Forwarded-For": "203.0.113.7"}); resp.StatusCode != http.StatusFound {
			t.Fatalf("sign-in = %d", resp.StatusCode)
		}
	}
	for _, m := range g.events() {
		if ip := decodeEvent(t, m).Client.Ip; ip != "127.0.0.1" {
			t.Errorf("event client ip = %q, want the peer's 127.0.0.1", ip)
		}
	}
	logs := g.logs.String()
	if n := strings.Count(logs, "GATEWAY_TRUSTED_PROXIES"); n != 1 {
		t.Errorf("logged %d lines about GATEWAY_TRUSTED_PROXIES, want 1:\n%s", n, logs)
	}
	mustContain(t, "log", logs, "level=WARN", "X-Forwarded-For", "peer=127.0.0.1")
	if strings.Contains(logs, "203.0.113.7") {
		t.Error("the log repeats the address the client claimed")
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

// TestEveryProvidersCallbackSharesTheRateLimit: the per-provider callbacks
// are sign-in endpoints like /auth/callback, limited per client.
func TestEveryProvidersCallbackSharesTheRateLimit(t *testing.T) {
	a, c := newHostileIdP(t), newHostileIdP(t)
	g := newGateway(t, withProviders(a.provider("alpha"), c.provider("charlie")), slowRate(1))
	b := g.browser()
	b.authRequest("/login?provider=alpha") // the one request allowed
	if resp := b.get("/auth/callback/charlie?state=" + strings.Repeat("A", 43)); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("/auth/callback/charlie past the limit = %d, want 429", resp.StatusCode)
	}
}
