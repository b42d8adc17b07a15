package login_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/login"
)

func TestReturnTargetsAfterSignIn(t *testing.T) {
	tests := []struct{ rd, want string }{
		{"/welcome?tab=2", "/welcome?tab=2"},
		{"https://app.example.com/inbox", "https://app.example.com/inbox"},
		{"http://app.example.com/inbox", "http://app.example.com/inbox"},
		{"//evil.example/", "/"},
		{"https://evil.example/", "/"},
		{"/%2F%2Fevil.example", "/"},
		{"https://app.example.com@evil.example/", "/"},
		{"javascript:alert(document.cookie)", "/"},
		{"/\\evil.example", "/"},
	}
	g := newGateway(t, withConfig(func(c *login.Config) { c.RedirectHosts = []string{"app.example.com"} }))
	for _, tt := range tests {
		t.Run(tt.rd, func(t *testing.T) {
			b := g.browser()
			resp := b.finish(b.begin(tt.rd), nil)
			if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != tt.want {
				t.Errorf("rd %q: callback = %d to %q, want 302 to %q", tt.rd, resp.StatusCode, resp.Header.Get("Location"), tt.want)
			}
		})
	}
	// The start page carries a good rd into its button, and drops a bad one.
	b := g.browser()
	mustContain(t, "start page", b.get("/?rd="+url.QueryEscape("https://app.example.com/x")).body,
		`href="/login?rd=https%3A%2F%2Fapp.example.com%2Fx"`)
	mustContain(t, "start page", b.get("/?rd="+url.QueryEscape("https://evil.example/")).body, `href="/login"`)
}

// maxSealedCookie is the most a Doorbell cookie may take (name and value):
// browsers keep 4096 bytes per cookie, and proxies limit whole headers.
const maxSealedCookie = 3584

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
