package login_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

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

func TestSeveralProvidersAtOnce(t *testing.T) {
	gh := newFakeGitHub(t)
	hostile := newHostileIdP(t)
	named := hostile.provider("corp")
	named.Name = "Corp <SSO>"
	g := newGateway(t, withExtraProviders(gh.provider("github"), named))
	b := g.browser()

	// One button per provider, in order, names escaped.
	home := b.get("/?rd=/inbox")
	mustContain(t, "start page", home.body,
		`href="/login?provider=test-idp&amp;rd=%2Finbox">Sign in with 127.0.0.1:`,
		`href="/login?provider=github&amp;rd=%2Finbox">Sign in with GitHub</a>`,
		`href="/login?provider=corp&amp;rd=%2Finbox">Sign in with Corp &lt;SSO&gt;</a>`)
	if i, j := strings.Index(home.body, "provider=test-idp"), strings.Index(home.body, "provider=github"); i < 0 || j < i {
		t.Error("buttons not in configuration order")
	}
	// Without a provider, /login offers the same choice.
	choice := b.get("/login?rd=/inbox")
	if choice.StatusCode != http.StatusOK {
		t.Fatalf("/login without a provider = %d", choice.StatusCode)
	}
	mustContain(t, "choice", choice.body, `href="/login?provider=github&amp;rd=%2Finbox"`)

	// Each provider signs in and names itself in the event and session.
	for _, id := range []string{"github", "test-idp", "corp"} {
		b := g.browser()
		resp := b.get("/login?provider=" + id)
		loc, err := resp.Location()
		if err != nil || resp.StatusCode != http.StatusFound {
			t.Fatalf("%s: /login = %d", id, resp.StatusCode)
		}
		if done := b.finish(loc, nil); done.StatusCode != http.StatusFound {
			t.Fatalf("%s: callback = %d %s", id, done.StatusCode, done.body)
		}
		mustContain(t, id+" /me", b.get("/me").body, `"provider":"`+id+`"`)
		if v := g.loginsFor(id, "success"); v != 1 {
			t.Errorf("logins_total{%s,success} = %v", id, v)
		}
	}
	var providers []string
	for _, m := range g.events() {
		providers = append(providers, decodeEvent(t, m).Provider)
	}
	if strings.Join(providers, ",") != "github,test-idp,corp" {
		t.Errorf("event providers = %v", providers)
	}

	// An unknown provider is a 400 page, counted under provider="unknown".
	bad := b.get("/login?provider=nope")
	if bad.StatusCode != http.StatusBadRequest {
		t.Errorf("/login?provider=nope = %d", bad.StatusCode)
	}
	mustContain(t, "page", bad.body, "Unknown sign-in option", "<code>provider_unknown</code>", `href="/"`)
	if v := g.loginsFor("unknown", "provider_unknown"); v != 1 {
		t.Errorf("logins_total{unknown,provider_unknown} = %v", v)
	}
	// A forged callback cannot be tied to a provider either.
	forged := b.get("/auth/callback?code=x&state=" + strings.Repeat("A", 43))
	if forged.StatusCode != http.StatusBadRequest || g.loginsFor("unknown", "state_invalid") != 1 {
		t.Errorf("forged callback = %d, logins_total{unknown,state_invalid} = %v", forged.StatusCode, g.loginsFor("unknown", "state_invalid"))
	}
	// Every provider's series exist from the start, and the unknown ones.
	for _, s := range []struct{ provider, result string }{
		{"github", "email_domain_not_allowed"}, {"corp", "rate_limited"}, {"test-idp", "request_too_large"},
		{"unknown", "rate_limited"}, {"unknown", "request_too_large"},
	} {
		if v := g.loginsFor(s.provider, s.result); v != 0 {
			t.Errorf("logins_total{%s,%s} = %v, want 0", s.provider, s.result, v)
		}
	}
}

// TestLogsHoldNoSecrets runs a full successful sign-in and the failures
// most likely to leak (a code the provider echoes back in its error, a
// forged state) and checks the captured log for every code, token and
// cookie value involved. TestMain does the same over the whole suite.
func TestLogsHoldNoSecrets(t *testing.T) {
	g := newGateway(t)
	g.idp.QueueUser(alice())
	var secrets []string
	addCookies := func(resp response) {
		for _, c := range resp.Cookies() {
			if c.Value != "" {
				secrets = append(secrets, c.Value)
			}
		}
	}

	// A full successful sign-in.
	b := g.browser()
	cb := b.begin("/")
	state := cb.Query().Get("state")
	secrets = append(secrets, cb.Query().Get("code"), b.cookie("/auth/callback", "doorbell_login_"+state[:16]))
	resp := b.finish(cb, nil)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in failed: %d %s", resp.StatusCode, resp.body)
	}
	addCookies(resp)
	b.get("/")
	b.get("/me")
	b.get("/auth/verify")

	// A code the provider does not know: mockoidc puts it in its error.
	bogus := "bogus-code-that-the-provider-will-echo"
	secrets = append(secrets, bogus)
	if resp := b.finish(withQuery(b.begin(""), "code", bogus), nil); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("bogus code: status %d", resp.StatusCode)
	}
	// A forged state for a real code.
	cb = b.begin("")
	secrets = append(secrets, cb.Query().Get("code"))
	if resp := b.finish(withQuery(cb, "state", strings.Repeat("Z", 43)), nil); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("forged state: status %d", resp.StatusCode)
	}
	// A sign-out with a wrong token, then a right one.
	b.postForm("/logout", url.Values{"csrf": {"forged-token-value"}}, nil)
	logoutPage := b.get("/logout")
	token := csrfField(t, logoutPage.body)
	secrets = append(secrets, token)
	if out := b.postForm("/logout", url.Values{"csrf": {token}}, nil); out.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: status %d", out.StatusCode)
	}

	secrets = append(secrets, g.issuedTokens()...)
	secrets = append(secrets, g.idp.ClientSecret)
	logs := g.logs.String()
	// The log is not empty: it does say what happened.
	mustContain(t, "log", logs, "event published", "reason=exchange_failed", "reason=state_invalid",
		"reason=logout_rejected", "signed out", "msg=login provider="+providerID+" result=success",
		"msg=login provider="+providerID+" result=exchange_failed")
	if len(g.issuedTokens()) < 3 {
		t.Fatalf("captured %d tokens, want access, refresh and ID tokens", len(g.issuedTokens()))
	}
	for _, s := range secrets {
		if s == "" {
			t.Fatal("a secret to look for is empty; the test lost track of it")
		}
		if strings.Contains(logs, s) {
			t.Errorf("log contains a secret %.12q…", s)
		}
	}
	if strings.Contains(logs, "alice@example.com") {
		t.Error("log contains the email address")
	}
	if t.Failed() {
		t.Logf("log:\n%s", logs)
	}
	// The suite-wide check knows these secrets too.
	suite.mu.Lock()
	defer suite.mu.Unlock()
	for _, s := range secrets {
		if _, ok := suite.secrets[s]; !ok && len(s) >= 8 && s != bogus && s != token {
			t.Errorf("the suite-wide log check does not know the secret %.12q…", s)
		}
	}
}
