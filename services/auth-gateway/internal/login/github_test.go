package login_test

import (
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/login"
)

// fakeGitHub is a small GitHub over real HTTP: the OAuth authorize page
// (which approves at once), the token endpoint (form-encoded answers and
// 200-with-error like GitHub's), GET /user and GET /user/emails under
// /api, as on GitHub Enterprise.
type fakeGitHub struct {
	t            *testing.T
	srv          *httptest.Server
	clientID     string
	clientSecret string

	mu     sync.Mutex
	userID int64
	login  string
	name   string
	emails []map[string]any
	// emailsStatus, when not 0, is the status of GET /user/emails.
	emailsStatus int
	// userStatus, when not 0, is the status of GET /user.
	userStatus int
	codes      map[string]ghGrant
	tokens     map[string]bool

	tokenCalls atomic.Int32
}

type ghGrant struct{ challenge, redirectURI string }

func newFakeGitHub(t *testing.T) *fakeGitHub {
	t.Helper()
	f := &fakeGitHub{
		t: t, clientID: "gh-client-id", clientSecret: "gh-client-secret-value",
		userID: 4242, login: "octocat", name: "The Octocat",
		emails: []map[string]any{
			{"email": "octo@old.example", "primary": false, "verified": true},
			{"email": "octocat@example.com", "primary": true, "verified": true, "visibility": "private"},
		},
		codes: map[string]ghGrant{}, tokens: map[string]bool{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /login/oauth/authorize", f.authorize)
	mux.HandleFunc("POST /login/oauth/access_token", f.token)
	mux.HandleFunc("GET /api/user", f.user)
	mux.HandleFunc("GET /api/user/emails", f.userEmails)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeGitHub) provider(id string, domains ...string) login.ProviderConfig {
	return login.ProviderConfig{
		ID: id, Type: login.TypeGitHub, ClientID: f.clientID, ClientSecret: f.clientSecret,
		AllowedEmailDomains: domains,
		GitHubAPIURL:        f.srv.URL + "/api",
		GitHubAuthURL:       f.srv.URL + "/login/oauth/authorize",
		GitHubTokenURL:      f.srv.URL + "/login/oauth/access_token",
	}.WithDefaults()
}

func (f *fakeGitHub) set(change func(f *fakeGitHub)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(f)
}

func (f *fakeGitHub) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("client_id") != f.clientID || q.Get("state") == "" || q.Get("code_challenge_method") != "S256" ||
		!slices.Contains(strings.Fields(q.Get("scope")), "user:email") {
		http.Error(w, "bad authorization request: "+r.URL.RawQuery, http.StatusBadRequest)
		return
	}
	code := "gh-code-" + randomString(f.t)
	f.mu.Lock()
	f.codes[code] = ghGrant{challenge: q.Get("code_challenge"), redirectURI: q.Get("redirect_uri")}
	f.mu.Unlock()
	http.Redirect(w, r, q.Get("redirect_uri")+"?"+url.Values{"code": {code}, "state": {q.Get("state")}}.Encode(), http.StatusFound)
}

// token answers like GitHub: form-encoded, and 200 with an error field for
// a bad code.
func (f *fakeGitHub) token(w http.ResponseWriter, r *http.Request) {
	f.tokenCalls.Add(1)
	w.Header().Set("Content-Type", "application/x-www-form-urlencoded")
	if err := r.ParseForm(); err != nil || r.PostForm.Get("client_id") != f.clientID || r.PostForm.Get("client_secret") != f.clientSecret {
		_, _ = w.Write([]byte("error=incorrect_client_credentials"))
		return
	}
	code := r.PostForm.Get("code")
	f.mu.Lock()
	g, ok := f.codes[code]
	delete(f.codes, code)
	f.mu.Unlock()
	sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
	if !ok || base64.RawURLEncoding.EncodeToString(sum[:]) != g.challenge || r.PostForm.Get("redirect_uri") != g.redirectURI {
		_, _ = w.Write([]byte("error=bad_verification_code&error_description=The+code+passed+is+incorrect+or+expired."))
		return
	}
	token := "gho_" + randomString(f.t)
	f.mu.Lock()
	f.tokens[token] = true
	f.mu.Unlock()
	body := url.Values{"access_token": {token}, "scope": {"user:email"}, "token_type": {"bearer"}}.Encode()
	suite.tokenResponse([]byte(body))
	_, _ = w.Write([]byte(body))
}

// authorized checks the bearer token and the API headers.
func (f *fakeGitHub) authorized(w http.ResponseWriter, r *http.Request) bool {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	f.mu.Lock()
	known := ok && f.tokens[token]
	f.mu.Unlock()
	if !known || !strings.Contains(r.Header.Get("Accept"), "application/vnd.github+json") {
		writeTestJSON(w, http.StatusUnauthorized, map[string]string{"message": "Bad credentials"})
		return false
	}
	return true
}

func (f *fakeGitHub) user(w http.ResponseWriter, r *http.Request) {
	if !f.authorized(w, r) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.userStatus != 0 {
		writeTestJSON(w, f.userStatus, map[string]string{"message": "Server Error"})
		return
	}
	writeTestJSON(w, http.StatusOK, map[string]any{"id": f.userID, "login": f.login, "name": f.name, "email": nil})
}

func (f *fakeGitHub) userEmails(w http.ResponseWriter, r *http.Request) {
	if !f.authorized(w, r) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.emailsStatus != 0 {
		writeTestJSON(w, f.emailsStatus, map[string]string{"message": "Resource not accessible by integration"})
		return
	}
	writeTestJSON(w, http.StatusOK, f.emails)
}

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

// TestMixUpBetweenProviders: an answer carrying one provider's iss for an
// attempt that went to another is refused before the code is redeemed.
func TestMixUpBetweenProviders(t *testing.T) {
	gh := newFakeGitHub(t)
	g := newGateway(t, withExtraProviders(gh.provider("github")))
	b := g.browser()
	// The browser went to GitHub, which sent it back to the callback.
	resp := b.get("/login?provider=github")
	callback, err := resp.Location()
	if err != nil || callback.Path != "/auth/callback/github" {
		t.Fatalf("GitHub did not redirect back: %d %s", resp.StatusCode, resp.body)
	}
	out := b.finish(withQuery(callback, "iss", g.idp.Issuer()), nil)
	assertRefused(t, g, out, http.StatusBadRequest, "github", "issuer_mismatch", "did not come from the identity provider we asked")
	if gh.tokenCalls.Load() != 0 {
		t.Error("the code was redeemed")
	}
}
