package login_test

import (
	"net/http"
	"strings"
	"testing"
)

// TestLogsHoldNoSecrets runs a full successful sign-in and the failures
// most likely to leak (a code the provider echoes back in its error, a
// forged state) and checks the captured log for every code, token and
// cookie value involved.
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

	secrets = append(secrets, g.issuedTokens()...)
	secrets = append(secrets, g.idp.ClientSecret)
	logs := g.logs.String()
	// The log is not empty: it does say what happened.
	mustContain(t, "log", logs, "event published", "reason=exchange_failed", "reason=state_invalid")
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
}
