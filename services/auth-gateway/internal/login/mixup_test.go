package login_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// authRequest asks the gateway to start a sign-in at path and returns the
// provider authorization URL it redirects to, without following it.
func (b *browser) authRequest(path string) *url.URL {
	b.t.Helper()
	c := &http.Client{Jar: b.jar, Transport: b.c.Transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(b.g.gatewayURL(path))
	if err != nil {
		b.t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := resp.Location()
	if resp.StatusCode != http.StatusFound || err != nil {
		b.t.Fatalf("GET %s = %d, want a redirect to the provider", path, resp.StatusCode)
	}
	return loc
}

// TestEachProviderHasItsOwnCallback: with several providers each gets the
// callback /auth/callback/{id}, and a sign-in through each works.
func TestEachProviderHasItsOwnCallback(t *testing.T) {
	a, c := newHostileIdP(t), newHostileIdP(t)
	g := newGateway(t, withProviders(a.provider("alpha"), c.provider("charlie")))
	for _, id := range []string{"alpha", "charlie"} {
		b := g.browser()
		want := g.gatewayURL("/auth/callback/" + id)
		if got := b.authRequest("/login?provider=" + id).Query().Get("redirect_uri"); got != want {
			t.Errorf("redirect_uri for %s = %q, want %q", id, got, want)
		}
		resp := b.get("/login?provider=" + id)
		cb, err := resp.Location()
		if err != nil || cb.Path != "/auth/callback/"+id {
			t.Fatalf("%s sent the browser back to %v (%v)", id, cb, err)
		}
		if out := b.finish(cb, nil); out.StatusCode != http.StatusFound {
			t.Errorf("sign-in with %s = %d %s", id, out.StatusCode, out.body)
		}
	}
	if n := len(g.events()); n != 2 {
		t.Errorf("%d events, want 2", n)
	}
}

// TestMixUpWithoutIssParameter (RFC 9700 §4.4): a sign-in starts at the
// attacker's provider, which sends the browser on to an honest provider
// with the same state. The honest provider answers at its own callback, so
// the gateway sees that the answer is not for the provider the attempt
// went to and refuses it, without sending the honest provider's code to
// the attacker's token endpoint. Neither provider sends iss.
func TestMixUpWithoutIssParameter(t *testing.T) {
	attacker, honest := newHostileIdP(t), newHostileIdP(t)
	g := newGateway(t, withProviders(honest.provider("honest"), attacker.provider("attacker")))
	b := g.browser()

	// The redirect URI our client is registered with at the honest provider.
	honestCallback := b.authRequest("/login?provider=honest").Query().Get("redirect_uri")

	// The attack: the attempt goes to the attacker, who forwards its
	// parameters to the honest provider under our client id there.
	forwarded := b.authRequest("/login?provider=attacker")
	q := forwarded.Query()
	q.Set("client_id", honest.clientID)
	q.Set("redirect_uri", honestCallback)
	target, _ := url.Parse(honest.srv.URL + "/authorize?" + q.Encode())
	resp := b.do(http.MethodGet, target.String(), nil)
	cb, err := resp.Location()
	if err != nil || !strings.HasPrefix(cb.String(), g.url.String()) {
		t.Fatalf("the honest provider did not answer to the gateway: %d %v", resp.StatusCode, err)
	}

	out := b.finish(cb, nil)
	assertRefused(t, g, out, http.StatusBadRequest, "attacker", "issuer_mismatch",
		"did not come from the identity provider we asked")
	if n := attacker.tokenCalls.Load(); n != 0 {
		t.Errorf("the honest provider's code went to the attacker's token endpoint (%d calls)", n)
	}
	if n := honest.tokenCalls.Load(); n != 0 {
		t.Errorf("the code was redeemed at the honest provider (%d calls)", n)
	}
}

// TestEveryProvidersCallbackSharesTheRateLimit: the per-provider callbacks
// are sign-in endpoints like /auth/callback, limited per client.
func TestEveryProvidersCallbackSharesTheRateLimit(t *testing.T) {
	a, c := newHostileIdP(t), newHostileIdP(t)
	g := newGateway(t, withProviders(a.provider("alpha"), c.provider("charlie")), slowRate(1))
	b := g.browser()
	b.authRequest("/login?provider=alpha") // the one request allowed
	if resp := b.get("/auth/callback/charlie?state=" + strings.Repeat("A", 43)); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("/auth/callback/charlie past the limit = %d, want 429", resp.StatusCode)
	}
}
