package login_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
)

// suite collects the log output of every gateway this package's tests
// start, and every secret they see go by: authorization codes and states
// in URLs, cookie values, tokens the providers issued, client secrets and
// cookie keys. TestMain fails the run if any secret shows up in any log
// line.
var suite = &suiteRecorder{secrets: map[string]string{}}

type suiteRecorder struct {
	mu      sync.Mutex
	logs    bytes.Buffer
	secrets map[string]string // value → kind
}

func (s *suiteRecorder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logs.Write(p)
}

// secret records values of kind; values too short to search for reliably
// are skipped.
func (s *suiteRecorder) secret(kind string, values ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range values {
		if len(v) >= 8 {
			s.secrets[v] = kind
		}
	}
}

// url records the code and state of a URL, if any.
func (s *suiteRecorder) url(u *url.URL) {
	q := u.Query()
	s.secret("authorization code", q.Get("code"))
	s.secret("state", q.Get("state"))
}

// response records the cookies a response sets and the code in its
// redirect.
func (s *suiteRecorder) response(resp *http.Response) {
	for _, c := range resp.Cookies() {
		s.secret("cookie "+c.Name, c.Value)
	}
	if loc, err := resp.Location(); err == nil {
		s.url(loc)
	}
}

// tokenResponse records the tokens in a token endpoint's answer (JSON or
// form-encoded).
func (s *suiteRecorder) tokenResponse(body []byte) {
	var tr map[string]any
	if json.Unmarshal(body, &tr) == nil {
		for _, k := range []string{"access_token", "refresh_token", "id_token"} {
			if v, ok := tr[k].(string); ok {
				s.secret(k, v)
			}
		}
		return
	}
	if q, err := url.ParseQuery(string(body)); err == nil {
		for _, k := range []string{"access_token", "refresh_token", "id_token"} {
			s.secret(k, q.Get(k))
		}
	}
}

// leaks returns a line per secret found in the logs.
func (s *suiteRecorder) leaks() (leaks []string, secrets int, logBytes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	logs := s.logs.String()
	for v, kind := range s.secrets {
		if strings.Contains(logs, v) {
			leaks = append(leaks, fmt.Sprintf("%s %.12q…", kind, v))
		}
	}
	sort.Strings(leaks)
	return leaks, len(s.secrets), len(logs)
}

func TestMain(m *testing.M) {
	code := m.Run()
	leaks, secrets, logBytes := suite.leaks()
	if len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: the log output of this package's tests contains %d secrets:\n  %s\n",
			len(leaks), strings.Join(leaks, "\n  "))
		code = 1
	} else if testing.Verbose() {
		fmt.Printf("log check: %d secrets, none in %d bytes of log output\n", secrets, logBytes)
	}
	os.Exit(code)
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
