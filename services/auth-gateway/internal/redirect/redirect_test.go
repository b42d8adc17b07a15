package redirect_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/redirect"
)

var allowed = []string{"app.example.com", "wiki.example.com:8443", "[::1]:9000"}

func mustNew(t testing.TB, httpsOnly bool) *redirect.Allowlist {
	t.Helper()
	a, err := redirect.New(allowed, httpsOnly)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAcceptedTargets(t *testing.T) {
	a := mustNew(t, false)
	for _, target := range []string{
		"/",
		"/settings",
		"/a/b?x=1&y=2",
		"/welcome?tab=2#top",
		"/.well-known/thing",
		"/a%2Fb",            // an encoded slash inside a segment stays a path
		"/search?q=%2F%2Fx", // the query is not part of the path
		"/caf%C3%A9",        // percent-encoded UTF-8
		"https://app.example.com",
		"https://app.example.com/inbox?id=7#m",
		"http://app.example.com/",
		"https://APP.example.com/", // host names are case-insensitive
		"https://wiki.example.com:8443/page",
		"http://[::1]:9000/x",
	} {
		if got, ok := a.Check(target); !ok || got != target {
			t.Errorf("Check(%q) = %q, %v; want it accepted unchanged", target, got, ok)
		}
	}
}

// TestOpenRedirectTricksAreRefused lists the ways people have turned
// redirect parameters into open redirects, and a few more.
func TestOpenRedirectTricksAreRefused(t *testing.T) {
	a := mustNew(t, false)
	tests := []struct{ name, target string }{
		{"empty", ""},
		{"absolute URL to another host", "https://evil.example/"},
		{"scheme-relative", "//evil.example/x"},
		{"scheme-relative to an allowed host", "//app.example.com/x"},
		{"triple slash", "///evil.example"},
		{"slash backslash", `/\evil.example`},
		{"backslash backslash", `\\evil.example`},
		{"backslash later in the path", `/a\..\\evil`},
		{"mixed slashes", `/\/evil.example`},
		{"backslash after the scheme", `https:\\evil.example`},
		{"backslash in the authority", `https://app.example.com\@evil.example`},
		{"encoded double slash", "/%2F%2Fevil.example"},
		{"encoded double slash, lowercase", "/%2f%2fevil.example"},
		{"encoded double slash without a leading slash", "%2F%2Fevil.example"},
		{"double-encoded double slash", "/%252F%252Fevil.example"},
		{"encoded backslash", "/%5Cevil.example"},
		{"encoded backslash, lowercase", "/%5cevil.example"},
		{"double-encoded backslash", "/%255Cevil.example"},
		{"encoded tab", "/%09/evil.example"},
		{"encoded newline", "/%0A/evil.example"},
		{"encoded null", "/a%00b"},
		{"malformed percent-encoding", "/a%zz"},
		{"dot segments", "/./evil"},
		{"dot-dot segments", "/a/../../evil"},
		{"encoded dot-dot", "/a/%2e%2e/%2e%2e//evil"},
		{"empty segment", "/a//b"},
		{"userinfo with an allowed host", "https://app.example.com@evil.example/"},
		{"userinfo with port", "https://app.example.com:443@evil.example/"},
		{"userinfo, encoded at sign", "https://app.example.com%40evil.example/"},
		{"encoded host", "https://%61pp.example.com/"},
		{"leading space", " /settings"},
		{"leading space before a URL", " https://app.example.com/"},
		{"tab that browsers drop", "/\t/evil.example"},
		{"newline that browsers drop", "/\n/evil.example"},
		{"carriage return", "/\r/evil.example"},
		{"tab inside the scheme", "ht\ttps://evil.example"},
		{"trailing space", "/settings "},
		{"DEL", "/a\x7fb"},
		{"javascript URL", "javascript:alert(1)"},
		{"javascript URL with a path look", "javascript://app.example.com/%0Aalert(1)"},
		{"uppercase javascript", "JAVASCRIPT:alert(1)"},
		{"data URL", "data:text/html,<script>alert(1)</script>"},
		{"vbscript URL", "vbscript:msgbox(1)"},
		{"uppercase scheme", "HTTPS://app.example.com/"},
		{"mixed-case scheme", "hTTps://app.example.com/"},
		{"ftp", "ftp://app.example.com/"},
		{"scheme without slashes", "https:app.example.com"},
		{"scheme with one slash", "https:/app.example.com"},
		{"relative path", "settings"},
		{"question mark first", "?next=/"},
		{"fragment first", "#x"},
		{"subdomain of an allowed host", "https://evil.app.example.com/"},
		{"allowed host as a subdomain", "https://app.example.com.evil.example/"},
		{"trailing dot", "https://app.example.com./"},
		{"allowed host on another port", "https://app.example.com:444/"},
		{"allowed host with its default port written", "https://app.example.com:443/"},
		{"port-only allowed host without its port", "https://wiki.example.com/"},
		{"empty port", "https://app.example.com:/"},
		{"IDN look-alike (Cyrillic a)", "https://\u0430pp.example.com/"},
		{"IDN look-alike as punycode", "https://xn--pp-8cd.example.com/"},
		{"fullwidth slash", "/\uff0fevil.example"},
		{"non-ASCII in a path", "/caf\u00e9"},
		{"very long path", "/" + strings.Repeat("a", 3000)},
		{"very long URL on an allowed host", "https://app.example.com/" + strings.Repeat("a", 3000)},
		{"IP address", "http://127.0.0.1/"},
		{"decimal IP", "http://2130706433/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, ok := a.Check(tt.target); ok || got != "" {
				t.Errorf("Check(%q) = %q, %v; want it refused", tt.target, got, ok)
			}
		})
	}
}

func TestHTTPSOnlyRefusesPlainHTTP(t *testing.T) {
	a := mustNew(t, true)
	if _, ok := a.Check("http://app.example.com/"); ok {
		t.Error("http target accepted with httpsOnly")
	}
	if _, ok := a.Check("https://app.example.com/"); !ok {
		t.Error("https target refused with httpsOnly")
	}
}

func TestNewRejectsPatternsAndURLs(t *testing.T) {
	for _, h := range []string{"*.example.com", "https://app.example.com", "app.example.com/x", "user@app", ""} {
		if _, err := redirect.New([]string{h}, false); err == nil {
			t.Errorf("New(%q) accepted", h)
		}
	}
}

// FuzzRedirect checks the property the gateway relies on: an accepted
// target is either a path starting with a single "/" with no backslash or
// control characters, or an absolute http(s) URL whose host is on the
// allowlist.
func FuzzRedirect(f *testing.F) {
	for _, seed := range []string{
		"/", "/settings?x=1", "//evil", `/\evil`, "/%2F%2Fevil", "/%5Cevil", "https://app.example.com/x",
		"https://app.example.com@evil", "https://evil", "javascript:alert(1)", "/\t/evil", "HTTPS://app.example.com",
		"http://[::1]:9000/", "https://wiki.example.com:8443", "/a/../b", "https://app.example.com\\@evil",
	} {
		f.Add(seed)
	}
	a := mustNew(f, false)
	f.Fuzz(func(t *testing.T, target string) {
		got, ok := a.Check(target)
		if !ok {
			if got != "" {
				t.Fatalf("refused %q but returned %q", target, got)
			}
			return
		}
		if got != target {
			t.Fatalf("accepted %q as %q; targets must come back unchanged", target, got)
		}
		if strings.ContainsAny(got, "\\") || strings.ContainsFunc(got, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			t.Fatalf("accepted %q with a backslash or control character", got)
		}
		if strings.HasPrefix(got, "/") {
			if strings.HasPrefix(got, "//") {
				t.Fatalf("accepted scheme-relative %q", got)
			}
			u, err := url.Parse(got)
			if err != nil || u.Host != "" || u.Scheme != "" {
				t.Fatalf("accepted path %q parses with a host or scheme", got)
			}
			if d, err := url.PathUnescape(u.EscapedPath()); err != nil || strings.HasPrefix(d, "//") || strings.Contains(d, `\`) {
				t.Fatalf("accepted path %q decodes to %q", got, d)
			}
			return
		}
		u, err := url.Parse(got)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.User != nil || u.Opaque != "" {
			t.Fatalf("accepted %q, which is not an absolute http(s) URL without user information", got)
		}
		onList := false
		for _, h := range allowed {
			onList = onList || strings.EqualFold(u.Host, h)
		}
		if !onList {
			t.Fatalf("accepted %q, whose host %q is not on the allowlist", got, u.Host)
		}
	})
}
