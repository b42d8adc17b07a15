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
