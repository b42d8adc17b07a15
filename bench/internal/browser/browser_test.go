package browser_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/doorbell/doorbell/bench/internal/browser"
	"github.com/doorbell/doorbell/bench/internal/idp"
)

// relyingParty is the least an OIDC client does: PKCE, state in a cookie,
// nonce, code exchange with client_secret_basic, ES256 signature check
// against the JWKS. It fails the test on anything else.
func relyingParty(t *testing.T, issuer string, signedIn chan<- string) *httptest.Server {
	var rp *httptest.Server
	mux := http.NewServeMux()
	mux.HandleFunc("GET /login", func(w http.ResponseWriter, r *http.Request) {
		state, nonce, verifier := token(), token(), token()
		sum := sha256.Sum256([]byte(verifier))
		http.SetCookie(w, &http.Cookie{Name: "attempt", Value: state + "." + nonce + "." + verifier, Path: "/callback"})
		q := url.Values{"client_id": {"rp"}, "redirect_uri": {rp.URL + "/callback"}, "response_type": {"code"},
			"scope": {"openid email"}, "state": {state}, "nonce": {nonce},
			"code_challenge": {base64.RawURLEncoding.EncodeToString(sum[:])}, "code_challenge_method": {"S256"}}
		http.Redirect(w, r, issuer+"/authorize?"+q.Encode(), http.StatusFound)
	})
	mux.HandleFunc("GET /callback", func(w http.ResponseWriter, r *http.Request) {
		c, err := r.Cookie("attempt")
		if err != nil {
			t.Errorf("callback without the attempt cookie: %v", err)
			http.Error(w, "no cookie", http.StatusBadRequest)
			return
		}
		parts := strings.Split(c.Value, ".")
		if r.URL.Query().Get("state") != parts[0] {
			t.Errorf("state %q, want %q", r.URL.Query().Get("state"), parts[0])
		}
		email, err := exchange(issuer, rp.URL+"/callback", r.URL.Query().Get("code"), parts[1], parts[2])
		if err != nil {
			t.Errorf("exchange: %v", err)
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		signedIn <- email
		http.Redirect(w, r, "/", http.StatusFound)
	})
	rp = httptest.NewServer(mux)
	return rp
}

// exchange redeems code and returns the verified ID token's email.
func exchange(issuer, redirect, code, nonce, verifier string) (string, error) {
	form := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirect}, "code_verifier": {verifier}}
	req, _ := http.NewRequest(http.MethodPost, issuer+"/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("rp", "s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var tok struct {
		IDToken string `json:"id_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("token endpoint: %s, %v", resp.Status, err)
	}
	jwks, err := http.Get(issuer + "/jwks")
	if err != nil {
		return "", err
	}
	defer jwks.Body.Close()
	var keys jose.JSONWebKeySet
	if err := json.NewDecoder(jwks.Body).Decode(&keys); err != nil {
		return "", err
	}
	jws, err := jose.ParseSignedCompact(tok.IDToken, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return "", err
	}
	payload, err := jws.Verify(keys.Key(jws.Signatures[0].Header.KeyID)[0])
	if err != nil {
		return "", err
	}
	var claims struct {
		Iss, Aud, Nonce, Email string
		EmailVerified          bool `json:"email_verified"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return "", err
	}
	if claims.Iss != issuer || claims.Aud != "rp" || claims.Nonce != nonce || !claims.EmailVerified {
		return "", fmt.Errorf("claims %+v", claims)
	}
	return claims.Email, nil
}

func token() string {
	b := make([]byte, 16)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// startProvider serves an idp.Provider whose issuer is its own URL.
func startProvider(t *testing.T) (*idp.Provider, string) {
	var p *idp.Provider
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { p.Handler().ServeHTTP(w, r) }))
	t.Cleanup(srv.Close)
	var err error
	if p, err = idp.New(idp.Config{Issuer: srv.URL, ClientID: "rp", ClientSecret: "s3cret"}); err != nil {
		t.Fatal(err)
	}
	return p, srv.URL
}

func TestAFreshBrowserSignsInThroughTheProviderWithoutAPage(t *testing.T) {
	provider, issuer := startProvider(t)
	signedIn := make(chan string, 1)
	rp := relyingParty(t, issuer, signedIn)
	defer rp.Close()

	for _, tr := range []http.RoundTripper{nil, browser.NewTransport()} {
		timing, err := browser.SignIn(context.Background(), tr, rp.URL+"/login", "ada@example.com", provider)
		if err != nil {
			t.Fatalf("SignIn: %v", err)
		}
		if got := <-signedIn; got != "ada@example.com" {
			t.Errorf("signed in %q, want the X-Bench-User", got)
		}
		if timing.Total <= 0 || timing.AtProvider <= 0 || timing.AtRelyingParty <= 0 ||
			timing.AtProvider+timing.AtRelyingParty > timing.Total {
			t.Errorf("timing %+v: parts must be positive and within the total", timing)
		}
	}
}

func TestASignInTheProviderRefusesIsAStatusError(t *testing.T) {
	provider, issuer := startProvider(t)
	rp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, issuer+"/authorize?client_id=someone-else", http.StatusFound)
	}))
	defer rp.Close()
	_, err := browser.SignIn(context.Background(), nil, rp.URL, "ada@example.com", provider)
	if got := browser.Reason(err); got != "authorize HTTP 400" {
		t.Errorf("Reason = %q (%v), want the step and status", got, err)
	}
}
