package login_test

import (
	"net/http"
	"testing"
)

func TestGitHubSignIn(t *testing.T) {
	gh := newFakeGitHub(t)
	g := newGateway(t, withProviders(gh.provider("github")))
	b := g.browser()
	resp := b.finish(b.begin("/after"), nil)
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/after" {
		t.Fatalf("callback = %d to %q: %s", resp.StatusCode, resp.Header.Get("Location"), resp.body)
	}
	events := g.events()
	if len(events) != 1 {
		t.Fatalf("%d events, want 1", len(events))
	}
	ev := decodeEvent(t, events[0])
	if ev.Issuer != gh.srv.URL+"/api" || ev.Subject != "4242" || ev.Provider != "github" ||
		ev.Email != "octocat@example.com" || ev.Name != "The Octocat" {
		t.Errorf("event = issuer %q subject %q provider %q email %q name %q", ev.Issuer, ev.Subject, ev.Provider, ev.Email, ev.Name)
	}
	me := b.get("/me")
	mustContain(t, "/me", me.body, `"email":"octocat@example.com"`, `"subject":"4242"`, `"provider":"github"`)
	if v := g.loginsFor("github", "success"); v != 1 {
		t.Errorf("logins_total{github,success} = %v", v)
	}
	if v := g.counter("doorbell_gateway_login_started_total", map[string]string{"provider": "github"}); v != 1 {
		t.Errorf("login_started_total{github} = %v", v)
	}
}

func TestGitHubEmailRules(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(f *fakeGitHub)
		domains []string
		status  int
		result  string
		page    []string
	}{
		{
			name: "primary address not verified, another one is",
			setup: func(f *fakeGitHub) {
				f.emails = []map[string]any{
					{"email": "octocat@example.com", "primary": true, "verified": false},
					{"email": "octo@verified.example", "primary": false, "verified": true},
				}
			},
			status: http.StatusForbidden, result: "email_unverified",
			page: []string{"Your primary email address on GitHub, octocat@example.com, is not verified", "GitHub email settings"},
		},
		{
			name:   "no addresses",
			setup:  func(f *fakeGitHub) { f.emails = nil },
			status: http.StatusForbidden, result: "email_missing",
			page: []string{"no primary email address"},
		},
		{
			name:   "email scope not granted",
			setup:  func(f *fakeGitHub) { f.emailsStatus = http.StatusForbidden },
			status: http.StatusForbidden, result: "email_missing",
			page: []string{"allow access to your email addresses"},
		},
		{
			name:    "domain not allowed",
			domains: []string{"corp.example"},
			status:  http.StatusForbidden, result: "email_domain_not_allowed",
			page: []string{"This address is not allowed", "octocat@example.com cannot sign in with GitHub"},
		},
		{
			name:   "user API fails",
			setup:  func(f *fakeGitHub) { f.userStatus = http.StatusInternalServerError },
			status: http.StatusBadGateway, result: "exchange_failed",
			page: []string{"We could not get your account details from GitHub"},
		},
		{
			name: "address that would read as two",
			setup: func(f *fakeGitHub) {
				f.emails = []map[string]any{{"email": "a@example.com,b@example.com", "primary": true, "verified": true}}
			},
			status: http.StatusForbidden, result: "email_invalid",
			page: []string{"not one we can send to"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gh := newFakeGitHub(t)
			if tt.setup != nil {
				gh.set(tt.setup)
			}
			g := newGateway(t, withProviders(gh.provider("github", tt.domains...)))
			b := g.browser()
			assertRefused(t, g, b.finish(b.begin(""), nil), tt.status, "github", tt.result, tt.page...)
		})
	}
}

func TestGitHubAllowedDomainLetsItsAddressesIn(t *testing.T) {
	gh := newFakeGitHub(t)
	g := newGateway(t, withProviders(gh.provider("github", "corp.example", "example.com")))
	b := g.browser()
	if resp := b.finish(b.begin(""), nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("allowed domain refused: %d %s", resp.StatusCode, resp.body)
	}
}

func TestGitHubBadCodeIsABadGateway(t *testing.T) {
	gh := newFakeGitHub(t)
	g := newGateway(t, withProviders(gh.provider("github")))
	b := g.browser()
	resp := b.finish(withQuery(b.begin(""), "code", "not-a-code-github-issued"), nil)
	assertRefused(t, g, resp, http.StatusBadGateway, "github", "exchange_failed", "Please try again")
	mustContain(t, "log", g.logs.String(), "bad_verification_code")
	if n := gh.tokenCalls.Load(); n != 1 {
		t.Errorf("token endpoint called %d times, want 1 (never a retry with the spent code)", n)
	}
}
