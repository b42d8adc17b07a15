package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Signing in through Ory Hydra: a certified OpenID Connect provider that
// this repository did not write, run as its own process (bin/hydra, built by
// make from the version pinned in tools/hydra). The gateway gets nothing but
// the variables of docs/configuration.md pointing at it.

// hydra is a running Hydra with an in-memory store, and the login-and-consent
// app Hydra needs (it has no pages of its own): a form where you type an
// email and say whether it is verified, as on the dev IdP; the answers
// become the ID token's claims.
type hydra struct {
	t      *testing.T
	issuer string // exactly as Hydra's discovery document says
	admin  string
}

// builtTool finds bin/<name>, a program make builds from tools/<name>
// ($DOORBELL_<NAME> when set, as make test-e2e sets it). Locally a missing
// one skips the test with a loud reason; in CI it fails it.
func builtTool(t *testing.T, name string) string {
	t.Helper()
	bin := os.Getenv("DOORBELL_" + strings.ToUpper(name))
	if bin == "" {
		bin = filepath.Join("..", "bin", name)
	}
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	missingTool(t, bin+" not found, so this test checks NOTHING: run the tests with make test (it builds bin/"+name+
		" from tools/"+name+"), or make bin/"+name)
	return ""
}

func startHydra(t *testing.T) *hydra {
	t.Helper()
	bin := builtTool(t, "hydra")
	publicPort, adminPort := freePort(t), freePort(t)
	h := &hydra{t: t, admin: fmt.Sprintf("http://127.0.0.1:%d", adminPort)}
	app := httptest.NewServer(h.loginApp())
	t.Cleanup(app.Close)
	startProcess(t, "hydra", bin, []string{
		"DSN=memory",
		"SECRETS_SYSTEM=doorbell-e2e-hydra-system-secret",
		fmt.Sprintf("URLS_SELF_ISSUER=http://127.0.0.1:%d", publicPort),
		"URLS_LOGIN=" + app.URL + "/login",
		"URLS_CONSENT=" + app.URL + "/consent",
		"URLS_LOGOUT=" + app.URL + "/logout",
		"SERVE_PUBLIC_HOST=127.0.0.1",
		fmt.Sprintf("SERVE_PUBLIC_PORT=%d", publicPort),
		"SERVE_ADMIN_HOST=127.0.0.1",
		fmt.Sprintf("SERVE_ADMIN_PORT=%d", adminPort),
	}, "serve", "all", "--dev")
	// Hydra starts its admin and public listeners each on its own.
	waitReady(t, "hydra admin", h.admin+"/health/ready")
	waitReady(t, "hydra public", fmt.Sprintf("http://127.0.0.1:%d/health/ready", publicPort))

	var discovery struct {
		Issuer string `json:"issuer"`
	}
	h.call(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/.well-known/openid-configuration", publicPort), nil, &discovery)
	if discovery.Issuer == "" {
		t.Fatal("hydra's discovery document names no issuer")
	}
	h.issuer = discovery.Issuer
	return h
}

// registerClient registers the gateway at publicURL as a confidential
// client whose only redirect is its callback and whose only post-logout
// redirect is its start page, authenticating at the token endpoint with
// authMethod (client_secret_basic or client_secret_post): Hydra refuses
// the other one.
func (h *hydra) registerClient(id, secret, publicURL, authMethod string) {
	h.t.Helper()
	h.call(http.MethodPost, h.admin+"/admin/clients", map[string]any{
		"client_id":                  id,
		"client_secret":              secret,
		"redirect_uris":              []string{publicURL + "/auth/callback"},
		"post_logout_redirect_uris":  []string{publicURL + "/"},
		"grant_types":                []string{"authorization_code"},
		"response_types":             []string{"code"},
		"scope":                      "openid email profile",
		"token_endpoint_auth_method": authMethod,
	}, nil)
}

// call sends body as JSON and decodes the JSON answer into out (when not
// nil); anything but 2xx fails the test.
func (h *hydra) call(method, rawURL string, body, out any) {
	h.t.Helper()
	if err := callJSON(method, rawURL, body, out); err != nil {
		h.t.Fatal(err)
	}
}

// callJSON sends body as JSON to an HTTP API (Hydra's, Mailpit's) and
// decodes the JSON answer into out (when not nil).
func callJSON(method, rawURL string, body, out any) error {
	var in io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		in = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, rawURL, in)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, rawURL, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: status %d: %s", method, rawURL, resp.StatusCode, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: %w: %s", method, rawURL, err, data)
		}
	}
	return nil
}

var hydraLoginPage = template.Must(template.New("login").Parse(`<!doctype html>
<title>Hydra test login</title>
<form method="post" action="/login">
<input type="hidden" name="login_challenge" value="{{.}}">
<label>Email <input name="email" type="email" required></label>
<label>Name <input name="name"></label>
<label><input type="checkbox" name="email_verified" value="true" checked> email is verified</label>
<button type="submit">Sign in</button>
</form>`))

// loginApp is the login, consent and logout app: Hydra sends the browser
// to /login?login_challenge=…, /consent?consent_challenge=… and
// /logout?logout_challenge=…, and the app answers through Hydra's admin
// API, which says where the browser goes next. Hydra remembers a sign-in
// (its own session cookie), so a second one in the same browser skips the
// form, as at a real provider, until the person signs out there.
func (h *hydra) loginApp() http.Handler {
	fail := func(w http.ResponseWriter, err error) {
		h.t.Errorf("hydra login app: %v", err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
	// accept accepts a login as subject "hydra-<email>"; the answers ride in
	// the login's context to the consent step.
	accept := func(w http.ResponseWriter, r *http.Request, challenge, email string, verified bool, name string) {
		var next struct {
			RedirectTo string `json:"redirect_to"`
		}
		err := callJSON(http.MethodPut, h.admin+"/admin/oauth2/auth/requests/login/accept?login_challenge="+
			url.QueryEscape(challenge), map[string]any{
			"subject":      "hydra-" + email,
			"remember":     true,
			"remember_for": 3600,
			"context":      map[string]any{"email": email, "email_verified": verified, "name": name},
		}, &next)
		if err != nil {
			fail(w, err)
			return
		}
		http.Redirect(w, r, next.RedirectTo, http.StatusFound)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /login", func(w http.ResponseWriter, r *http.Request) {
		challenge := r.URL.Query().Get("login_challenge")
		var login struct {
			Skip    bool   `json:"skip"`
			Subject string `json:"subject"`
		}
		if err := callJSON(http.MethodGet, h.admin+"/admin/oauth2/auth/requests/login?login_challenge="+url.QueryEscape(challenge), nil, &login); err != nil {
			fail(w, err)
			return
		}
		if login.Skip {
			accept(w, r, challenge, strings.TrimPrefix(login.Subject, "hydra-"), true, "")
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_ = hydraLoginPage.Execute(w, challenge)
	})
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			fail(w, err)
			return
		}
		accept(w, r, r.PostForm.Get("login_challenge"), r.PostForm.Get("email"),
			r.PostForm.Get("email_verified") == "true", r.PostForm.Get("name"))
	})
	mux.HandleFunc("GET /logout", func(w http.ResponseWriter, r *http.Request) {
		var next struct {
			RedirectTo string `json:"redirect_to"`
		}
		if err := callJSON(http.MethodPut, h.admin+"/admin/oauth2/auth/requests/logout/accept?logout_challenge="+
			url.QueryEscape(r.URL.Query().Get("logout_challenge")), nil, &next); err != nil {
			fail(w, err)
			return
		}
		http.Redirect(w, r, next.RedirectTo, http.StatusFound)
	})
	mux.HandleFunc("GET /consent", func(w http.ResponseWriter, r *http.Request) {
		challenge := url.QueryEscape(r.URL.Query().Get("consent_challenge"))
		var consent struct {
			RequestedScope    []string       `json:"requested_scope"`
			RequestedAudience []string       `json:"requested_access_token_audience"`
			Context           map[string]any `json:"context"`
		}
		if err := callJSON(http.MethodGet, h.admin+"/admin/oauth2/auth/requests/consent?consent_challenge="+challenge, nil, &consent); err != nil {
			fail(w, err)
			return
		}
		var next struct {
			RedirectTo string `json:"redirect_to"`
		}
		err := callJSON(http.MethodPut, h.admin+"/admin/oauth2/auth/requests/consent/accept?consent_challenge="+challenge, map[string]any{
			"grant_scope":                 consent.RequestedScope,
			"grant_access_token_audience": consent.RequestedAudience,
			"session":                     map[string]any{"id_token": consent.Context},
		}, &next)
		if err != nil {
			fail(w, err)
			return
		}
		http.Redirect(w, r, next.RedirectTo, http.StatusFound)
	})
	return mux
}

func TestSignInThroughOryHydra(t *testing.T) {
	idp := startHydra(t)
	const clientID, secret = "doorbell-hydra", "doorbell-hydra-client-secret"
	s := startStack(t, "OIDC_ISSUER="+idp.issuer, "OIDC_CLIENT_ID="+clientID, "OIDC_CLIENT_SECRET="+secret)
	idp.registerClient(clientID, secret, s.publicURL, "client_secret_basic")
	ctx := context.Background()

	// Refused first: an address Hydra does not vouch for.
	const unverified = "mallory@example.test"
	refused := newBrowser(t).signIn(s.publicURL, unverified, false)
	if refused.status != http.StatusForbidden || !strings.Contains(refused.body, "not verified") {
		t.Fatalf("unverified email through Hydra: status %d, want 403 with a page saying it is not verified:\n%s",
			refused.status, refused.body)
	}

	const email = "ada@example.test"
	b := newBrowser(t)
	landed := b.signIn(s.publicURL, email, true)
	if landed.status != http.StatusOK || !strings.Contains(landed.body, "Signed in as") || !strings.Contains(landed.body, email) {
		t.Fatalf("after signing in through Hydra: %s status %d, want the signed-in page naming %s:\n%s",
			landed.url, landed.status, email, landed.body)
	}
	eventually(t, 60*time.Second, "the welcome email to arrive", func() bool { return len(s.mailTo(email)) > 0 })
	s.waitConsumerIdle(ctx)

	events := s.publishedEvents(ctx)
	if len(events) != 1 {
		t.Fatalf("stream holds %d events, want 1 (the verified sign-in only): %v", len(events), events)
	}
	if ev := events[0]; ev.Email != email || ev.Issuer != idp.issuer || ev.Subject != "hydra-"+email {
		t.Errorf("event = %+v; want email %s, issuer %s, subject hydra-%s", ev, email, idp.issuer, email)
	}
	if n := len(s.mailTo(email)); n != 1 {
		t.Errorf("inbox holds %d emails for %s, want exactly 1", n, email)
	}
	if n := len(s.mailTo(unverified)); n != 0 {
		t.Errorf("%d emails went to the unverified address, want 0", n)
	}
}

// A client registered for client_secret_post signs in once the gateway is
// told so (OIDC_TOKEN_AUTH_METHOD); Hydra would refuse Basic for it.
func TestSignInThroughOryHydraWithClientSecretPost(t *testing.T) {
	idp := startHydra(t)
	const clientID, secret = "doorbell-hydra-post", "doorbell-hydra-post-secret"
	s := startStack(t, "OIDC_ISSUER="+idp.issuer, "OIDC_CLIENT_ID="+clientID, "OIDC_CLIENT_SECRET="+secret,
		"OIDC_TOKEN_AUTH_METHOD=client_secret_post")
	idp.registerClient(clientID, secret, s.publicURL, "client_secret_post")

	const email = "barbara@example.test"
	landed := newBrowser(t).signIn(s.publicURL, email, true)
	if landed.status != http.StatusOK || !strings.Contains(landed.body, "Signed in as") {
		t.Fatalf("sign-in with client_secret_post: status %d, want the signed-in page:\n%s", landed.status, landed.body)
	}
	eventually(t, 60*time.Second, "the welcome email", func() bool { return len(s.mailTo(email)) == 1 })
}
