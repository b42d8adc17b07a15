package devidp_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/net/html"
	"golang.org/x/oauth2"

	"github.com/doorbell/doorbell/devstack/devidp"
)

const callback = "http://127.0.0.1:8080/auth/callback"

func startIdP(t *testing.T, cfg devidp.Config) *devidp.Server {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	s, err := devidp.Start(cfg, nil)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// browser does what a browser does with the sign-in page, but stops at
// redirects so the test can read them.
var browser = &http.Client{
	Timeout: 30 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

type page struct {
	status   int
	location string
	body     string
	form     url.Values // the form's inputs; checkboxes only when checked
	action   string
}

func fetch(t *testing.T, req *http.Request) page {
	t.Helper()
	resp, err := browser.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	p := page{status: resp.StatusCode, location: resp.Header.Get("Location"), body: string(b), form: url.Values{}}
	parseForm(t, &p)
	return p
}

func get(t *testing.T, rawURL string) page {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	return fetch(t, req)
}

// submit posts the page's form, as the browser would, to base+action.
func submit(t *testing.T, issuerOrigin string, p page, form url.Values) page {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, issuerOrigin+p.action, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return fetch(t, req)
}

// parseForm reads the first form of an HTML page.
func parseForm(t *testing.T, p *page) {
	t.Helper()
	doc, err := html.Parse(strings.NewReader(p.body))
	if err != nil {
		return
	}
	attr := func(n *html.Node, key string) (string, bool) {
		for _, a := range n.Attr {
			if a.Key == key {
				return a.Val, true
			}
		}
		return "", false
	}
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode {
			switch n.Data {
			case "form":
				if method, _ := attr(n, "method"); !strings.EqualFold(method, "post") {
					t.Errorf("form method = %q, want post", method)
				}
				p.action, _ = attr(n, "action")
			case "input":
				name, _ := attr(n, "name")
				typ, _ := attr(n, "type")
				value, _ := attr(n, "value")
				_, checked := attr(n, "checked")
				if typ == "checkbox" && !checked {
					break
				}
				p.form.Add(name, value)
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
}

func origin(t *testing.T, issuer string) string {
	t.Helper()
	u, err := url.Parse(issuer)
	if err != nil {
		t.Fatal(err)
	}
	return u.Scheme + "://" + u.Host
}

func TestDiscoveryDescribesTheProvider(t *testing.T) {
	idp := startIdP(t, devidp.Config{})
	if !strings.HasPrefix(idp.Issuer(), "http://127.0.0.1:") || !strings.HasSuffix(idp.Issuer(), "/oidc") {
		t.Fatalf("Issuer() = %q, want http://127.0.0.1:PORT/oidc", idp.Issuer())
	}
	if idp.ClientID() != "doorbell" || idp.ClientSecret() != "doorbell-dev-secret" {
		t.Fatalf("defaults: client %q secret %q", idp.ClientID(), idp.ClientSecret())
	}
	provider, err := oidc.NewProvider(testContext(t), idp.Issuer())
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	var meta struct {
		Authorization string   `json:"authorization_endpoint"`
		Token         string   `json:"token_endpoint"`
		PKCE          []string `json:"code_challenge_methods_supported"`
	}
	if err := provider.Claims(&meta); err != nil {
		t.Fatal(err)
	}
	if meta.Authorization != idp.Issuer()+"/authorize" || meta.Token != idp.Issuer()+"/token" {
		t.Errorf("endpoints = %q, %q", meta.Authorization, meta.Token)
	}
	if !strings.Contains(strings.Join(meta.PKCE, " "), "S256") {
		t.Errorf("code_challenge_methods_supported = %v, want S256", meta.PKCE)
	}
}

type claims struct {
	Email             string `json:"email"`
	EmailVerified     *bool  `json:"email_verified"`
	Name              string `json:"name"`
	PreferredUsername string `json:"preferred_username"`
	Locale            string `json:"locale"`
}

func TestCodeFlowThroughTheSignInForm(t *testing.T) {
	tests := []struct {
		name      string
		tickBox   bool
		authStyle oauth2.AuthStyle
	}{
		{"verified email, client secret in the form", true, oauth2.AuthStyleInParams},
		{"unverified email gives email_verified false", false, oauth2.AuthStyleInParams},
		{"client secret as HTTP Basic credentials", true, oauth2.AuthStyleInHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testContext(t)
			idp := startIdP(t, devidp.Config{RedirectURIs: []string{callback}})
			provider, err := oidc.NewProvider(ctx, idp.Issuer())
			if err != nil {
				t.Fatalf("discovery: %v", err)
			}
			endpoint := provider.Endpoint()
			endpoint.AuthStyle = tt.authStyle
			conf := oauth2.Config{
				ClientID: idp.ClientID(), ClientSecret: idp.ClientSecret(),
				Endpoint: endpoint, RedirectURL: callback,
				Scopes: []string{oidc.ScopeOpenID, "email", "profile"},
			}
			verifier, nonce, state := oauth2.GenerateVerifier(), "nonce-"+tt.name, "state-"+tt.name

			form := get(t, conf.AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier)))
			if form.status != http.StatusOK {
				t.Fatalf("sign-in page status = %d, body:\n%s", form.status, form.body)
			}
			for _, want := range []string{"Email", "Name", "Email is verified", "Sign in", "Development identity provider"} {
				if !strings.Contains(form.body, want) {
					t.Errorf("sign-in page lacks %q", want)
				}
			}
			if form.form.Get("state") != state || form.form.Get("nonce") != nonce || form.form.Get("code_challenge") == "" {
				t.Fatalf("form does not carry the request: %v", form.form)
			}
			if form.form.Get("email_verified") == "" {
				t.Fatal("'Email is verified' is not ticked by default")
			}

			fields := form.form
			fields.Set("email", "Ada@Example.com")
			fields.Set("name", "Ada Lovelace")
			fields.Set("locale", "ko")
			if !tt.tickBox {
				fields.Del("email_verified")
			}
			back := submit(t, origin(t, idp.Issuer()), form, fields)
			if back.status != http.StatusFound {
				t.Fatalf("sign-in status = %d, want 302; body:\n%s", back.status, back.body)
			}
			loc, err := url.Parse(back.location)
			if err != nil {
				t.Fatal(err)
			}
			q := loc.Query()
			if got := loc.Scheme + "://" + loc.Host + loc.Path; got != callback {
				t.Fatalf("redirected to %q, want %q", got, callback)
			}
			if q.Get("state") != state || q.Get("iss") != idp.Issuer() || q.Get("code") == "" {
				t.Fatalf("callback query = %v, want code, state %q and iss %q", q, state, idp.Issuer())
			}

			tok, err := conf.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier))
			if err != nil {
				t.Fatalf("exchange: %v", err)
			}
			if now := time.Now(); !tok.Expiry.After(now) || tok.Expiry.After(now.Add(24*time.Hour)) {
				t.Errorf("access token expiry = %v, want within a day from now", tok.Expiry)
			}
			raw, ok := tok.Extra("id_token").(string)
			if !ok {
				t.Fatal("token response has no id_token")
			}
			idToken, err := provider.Verifier(&oidc.Config{ClientID: idp.ClientID()}).Verify(ctx, raw)
			if err != nil {
				t.Fatalf("verify id token: %v", err)
			}
			if idToken.Nonce != nonce {
				t.Errorf("nonce = %q, want %q", idToken.Nonce, nonce)
			}
			sum := sha256.Sum256([]byte("ada@example.com"))
			if want := "dev-" + hex.EncodeToString(sum[:])[:16]; idToken.Subject != want {
				t.Errorf("sub = %q, want %q", idToken.Subject, want)
			}
			var c claims
			if err := idToken.Claims(&c); err != nil {
				t.Fatal(err)
			}
			if c.EmailVerified == nil || *c.EmailVerified != tt.tickBox {
				t.Errorf("email_verified = %v, want present and %v", c.EmailVerified, tt.tickBox)
			}
			if c.Email != "Ada@Example.com" || c.Name != "Ada Lovelace" || c.Locale != "ko" || c.PreferredUsername == "" {
				t.Errorf("claims = %+v", c)
			}

			info, err := provider.UserInfo(ctx, oauth2.StaticTokenSource(tok))
			if err != nil {
				t.Fatalf("userinfo: %v", err)
			}
			var ic claims
			if err := info.Claims(&ic); err != nil {
				t.Fatal(err)
			}
			if info.Subject != idToken.Subject || info.Email != c.Email || ic.EmailVerified == nil ||
				*ic.EmailVerified != tt.tickBox || ic.Name != "Ada Lovelace" {
				t.Errorf("userinfo = %+v %+v, want it to match the ID token", info, ic)
			}
		})
	}
}

// signIn runs the form and returns the authorization code.
func signIn(t *testing.T, idp *devidp.Server, conf *oauth2.Config, opts ...oauth2.AuthCodeOption) string {
	t.Helper()
	form := get(t, conf.AuthCodeURL("some-state", opts...))
	if form.status != http.StatusOK {
		t.Fatalf("sign-in page status = %d", form.status)
	}
	fields := form.form
	fields.Set("email", "grace@example.com")
	back := submit(t, origin(t, idp.Issuer()), form, fields)
	loc, err := url.Parse(back.location)
	if err != nil || back.status != http.StatusFound {
		t.Fatalf("sign-in: status %d location %q", back.status, back.location)
	}
	return loc.Query().Get("code")
}

func TestTokenEndpointRefuses(t *testing.T) {
	ctx := testContext(t)
	idp := startIdP(t, devidp.Config{})
	provider, err := oidc.NewProvider(ctx, idp.Issuer())
	if err != nil {
		t.Fatal(err)
	}
	conf := &oauth2.Config{
		ClientID: idp.ClientID(), ClientSecret: idp.ClientSecret(),
		Endpoint: provider.Endpoint(), RedirectURL: callback, Scopes: []string{oidc.ScopeOpenID},
	}
	wrongSecret := *conf
	wrongSecret.ClientSecret = "not-the-secret"

	tests := []struct {
		name     string
		exchange func(t *testing.T) error
	}{
		{"a wrong PKCE verifier", func(t *testing.T) error {
			code := signIn(t, idp, conf, oauth2.S256ChallengeOption(oauth2.GenerateVerifier()))
			_, err := conf.Exchange(ctx, code, oauth2.VerifierOption(oauth2.GenerateVerifier()))
			return err
		}},
		{"a missing PKCE verifier", func(t *testing.T) error {
			code := signIn(t, idp, conf, oauth2.S256ChallengeOption(oauth2.GenerateVerifier()))
			_, err := conf.Exchange(ctx, code)
			return err
		}},
		{"a code used twice", func(t *testing.T) error {
			code := signIn(t, idp, conf)
			if _, err := conf.Exchange(ctx, code); err != nil {
				t.Fatalf("first exchange: %v", err)
			}
			_, err := conf.Exchange(ctx, code)
			return err
		}},
		{"a wrong client secret", func(t *testing.T) error {
			code := signIn(t, idp, conf)
			_, err := wrongSecret.Exchange(ctx, code)
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.exchange(t)
			var re *oauth2.RetrieveError
			if !errors.As(err, &re) {
				t.Fatalf("exchange error = %v, want a token endpoint error", err)
			}
			if re.ErrorCode != "invalid_grant" && re.ErrorCode != "invalid_client" && re.ErrorCode != "invalid_request" {
				t.Errorf("error code = %q", re.ErrorCode)
			}
		})
	}
}

func TestBadAuthorizationRequestsGetAPageNotARedirect(t *testing.T) {
	idp := startIdP(t, devidp.Config{RedirectURIs: []string{callback}})
	challenge := oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier())
	good := url.Values{
		"client_id": {"doorbell"}, "redirect_uri": {callback}, "response_type": {"code"},
		"scope": {"openid email"}, "state": {"s"}, "code_challenge": {challenge}, "code_challenge_method": {"S256"},
	}
	with := func(key, value string) url.Values {
		v := url.Values{}
		for k, vs := range good {
			v[k] = append([]string(nil), vs...)
		}
		if value == "" {
			v.Del(key)
		} else {
			v.Set(key, value)
		}
		return v
	}
	tests := []struct {
		name   string
		query  url.Values
		reason string
	}{
		{"wrong client id", with("client_id", "someone-else"), `unknown client_id &#34;someone-else&#34;`},
		{"unregistered redirect uri", with("redirect_uri", "https://evil.example/cb"), "is not registered"},
		{"missing redirect uri", with("redirect_uri", ""), "no redirect_uri"},
		{"missing state", with("state", ""), "no state"},
		{"implicit flow", with("response_type", "token"), "unsupported response_type"},
		{"no openid scope", with("scope", "email"), "does not include openid"},
		{"unknown PKCE method", with("code_challenge_method", "S512"), "unsupported code_challenge_method"},
		{"state given twice", func() url.Values { v := with("state", "a"); v.Add("state", "b"); return v }(), "more than once"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, method := range []string{http.MethodGet, http.MethodPost} {
				var req *http.Request
				authorize := idp.Issuer() + "/authorize"
				if method == http.MethodGet {
					req, _ = http.NewRequest(method, authorize+"?"+tt.query.Encode(), nil)
				} else {
					form := tt.query
					form.Set("email", "a@example.com")
					req, _ = http.NewRequest(method, authorize, strings.NewReader(form.Encode()))
					req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				}
				p := fetch(t, req)
				if p.status != http.StatusBadRequest || p.location != "" {
					t.Errorf("%s: status %d location %q, want 400 and no redirect", method, p.status, p.location)
				}
				if !strings.Contains(p.body, tt.reason) {
					t.Errorf("%s: page does not say %q:\n%s", method, tt.reason, p.body)
				}
			}
		})
	}
	// The baseline request is fine, so each failure above is due to its one change.
	if p := get(t, idp.Issuer()+"/authorize?"+good.Encode()); p.status != http.StatusOK {
		t.Fatalf("good request: status %d\n%s", p.status, p.body)
	}
}

func TestCancelReturnsAccessDenied(t *testing.T) {
	idp := startIdP(t, devidp.Config{})
	q := url.Values{
		"client_id": {"doorbell"}, "redirect_uri": {callback + "?keep=1"}, "response_type": {"code"},
		"scope": {"openid"}, "state": {"xyz"},
	}
	form := get(t, idp.Issuer()+"/authorize?"+q.Encode())
	fields := form.form
	fields.Set("cancel", "1")
	back := submit(t, origin(t, idp.Issuer()), form, fields)
	loc, err := url.Parse(back.location)
	if err != nil || back.status != http.StatusFound {
		t.Fatalf("cancel: status %d location %q", back.status, back.location)
	}
	got := loc.Query()
	if got.Get("error") != "access_denied" || got.Get("state") != "xyz" || got.Get("code") != "" || got.Get("keep") != "1" {
		t.Fatalf("cancel redirect query = %v", got)
	}
}

func TestHostileInputIsEscaped(t *testing.T) {
	idp := startIdP(t, devidp.Config{})
	const hostile = `"><script>alert(1)</script><img src=x onerror=alert(2)>`
	q := url.Values{
		"client_id": {"doorbell"}, "redirect_uri": {callback}, "response_type": {"code"},
		"scope": {"openid"}, "state": {hostile}, "login_hint": {hostile}, hostile: {hostile},
	}
	form := get(t, idp.Issuer()+"/authorize?"+q.Encode())
	if form.status != http.StatusOK {
		t.Fatalf("status %d\n%s", form.status, form.body)
	}
	fields := form.form
	fields.Set("email", hostile)
	fields.Set("name", hostile)
	again := submit(t, origin(t, idp.Issuer()), form, fields)
	if again.status != http.StatusBadRequest || !strings.Contains(again.body, "not an email address") {
		t.Fatalf("hostile email: status %d, want 400 saying why\n%s", again.status, again.body)
	}

	for name, p := range map[string]page{"sign-in page": form, "form shown again": again} {
		for _, bad := range []string{"<script>", "<img"} {
			if strings.Contains(p.body, bad) {
				t.Errorf("%s contains unescaped %q:\n%s", name, bad, p.body)
			}
		}
		// The values survive escaping intact.
		if p.form.Get("state") != hostile || p.form.Get("email") != hostile {
			t.Errorf("%s: state %q email %q, want the hostile text back verbatim", name, p.form.Get("state"), p.form.Get("email"))
		}
	}
	if again.form.Get("name") != hostile {
		t.Errorf("name shown again = %q", again.form.Get("name"))
	}
}

func TestSubjectIsStablePerEmail(t *testing.T) {
	ctx := testContext(t)
	idp := startIdP(t, devidp.Config{})
	provider, err := oidc.NewProvider(ctx, idp.Issuer())
	if err != nil {
		t.Fatal(err)
	}
	conf := &oauth2.Config{
		ClientID: idp.ClientID(), ClientSecret: idp.ClientSecret(),
		Endpoint: provider.Endpoint(), RedirectURL: callback, Scopes: []string{oidc.ScopeOpenID, "email"},
	}
	subject := func(email string) string {
		form := get(t, conf.AuthCodeURL("st"))
		fields := form.form
		fields.Set("email", email)
		back := submit(t, origin(t, idp.Issuer()), form, fields)
		loc, _ := url.Parse(back.location)
		tok, err := conf.Exchange(ctx, loc.Query().Get("code"))
		if err != nil {
			t.Fatalf("exchange: %v", err)
		}
		id, err := provider.Verifier(&oidc.Config{ClientID: idp.ClientID()}).Verify(ctx, tok.Extra("id_token").(string))
		if err != nil {
			t.Fatal(err)
		}
		return id.Subject
	}
	a, b, c := subject("Grace@Example.com"), subject("grace@example.com"), subject("ada@example.com")
	if a != b {
		t.Errorf("same address in other case: subjects %q and %q differ", a, b)
	}
	if a == c {
		t.Errorf("different addresses share subject %q", a)
	}
}

func TestStartFailsWhenThePortIsTakenAndCloseFreesIt(t *testing.T) {
	idp := startIdP(t, devidp.Config{})
	addr := strings.TrimSuffix(strings.TrimPrefix(idp.Issuer(), "http://"), "/oidc")
	s, err := devidp.Start(devidp.Config{Addr: addr}, nil)
	if err == nil {
		s.Close()
		t.Fatal("second Start on the same address succeeded")
	}
	if !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("error = %v, want it to say the address is in use", err)
	}

	if err := idp.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := idp.Close(); err != nil { // and once more by the cleanup
		t.Fatalf("second Close: %v", err)
	}
	again, err := devidp.Start(devidp.Config{Addr: addr}, nil)
	if err != nil {
		t.Fatalf("Start on the address of a closed provider: %v", err)
	}
	again.Close()
}
