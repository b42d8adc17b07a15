package login

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/oauth2"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/cookie"
)

func TestPlausibleEmail(t *testing.T) {
	tests := []struct {
		email string
		want  bool
	}{
		{"alice@example.com", true},
		{"a.b+tag@sub.example.co.uk", true},
		{"jörg@example.de", true},
		{"", false},
		{"alice", false},
		{"@example.com", false},
		{"alice@", false},
		{"a@b@example.com", false},
		{"alice@example.com, bob@example.com", false},
		{"Alice <alice@example.com>", false},
		{"alice@example.com\r\nX-Evil: 1", false},
		{"alice@exa mple.com", false},
		{"alice\x00@example.com", false},
		{"alice\x85@example.com", false},
		{"\xff@example.com", false},
		{strings.Repeat("a", 250) + "@example.com", false},
	}
	for _, tt := range tests {
		if got := plausibleEmail(tt.email); got != tt.want {
			t.Errorf("plausibleEmail(%q) = %v, want %v", tt.email, got, tt.want)
		}
	}
}

func TestSpentStatesAreUsedOnceAndBounded(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	s := newSpentStates(3)
	if !s.spend("a", now, now.Add(time.Minute)) {
		t.Fatal("fresh state refused")
	}
	if s.spend("a", now, now.Add(time.Minute)) {
		t.Fatal("state spent twice")
	}
	// After its attempt expired, the state is forgotten (the attempt cookie
	// would be refused for its age anyway).
	if !s.spend("a", now.Add(2*time.Minute), now.Add(3*time.Minute)) {
		t.Error("expired state still remembered")
	}
	for i := range 10 {
		s.spend(fmt.Sprint(i), now, now.Add(time.Hour))
	}
	if n := len(s.until); n > 3 {
		t.Errorf("remembers %d states, limit 3", n)
	}
	if s.spend("9", now, now.Add(time.Hour)) {
		t.Error("the newest state was forgotten first")
	}
}

func TestEmailVerifiedClaimForms(t *testing.T) {
	tests := []struct {
		name, json string
		want       *bool
	}{
		{"absent", `{}`, nil},
		{"null", `{"email_verified":null}`, nil},
		{"true", `{"email_verified":true}`, ptr(true)},
		{"false", `{"email_verified":false}`, ptr(false)},
		{"string true", `{"email_verified":"true"}`, ptr(true)},
		{"string True", `{"email_verified":"True"}`, ptr(true)},
		{"string false", `{"email_verified":"false"}`, ptr(false)},
		{"string yes is not a yes", `{"email_verified":"yes"}`, ptr(false)},
		{"number is not a yes", `{"email_verified":1}`, ptr(false)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c claims
			if err := json.Unmarshal([]byte(tt.json), &c); err != nil {
				t.Fatal(err)
			}
			switch {
			case tt.want == nil && c.EmailVerified != nil:
				t.Errorf("got %v, want absent", *c.EmailVerified)
			case tt.want != nil && c.EmailVerified == nil:
				t.Errorf("got absent, want %v", *tt.want)
			case tt.want != nil && bool(*c.EmailVerified) != *tt.want:
				t.Errorf("got %v, want %v", *c.EmailVerified, *tt.want)
			}
		})
	}
}

func TestRedactHidesSecretsInErrors(t *testing.T) {
	code, secret := "the-authorization-code", "the-client-secret"
	tests := []struct {
		name string
		err  error
	}{
		{"token endpoint echoes them", &oauth2.RetrieveError{
			Response:         &http.Response{Status: "401 Unauthorized"},
			Body:             []byte(`{"error":"invalid_grant","error_description":"Invalid code: ` + code + `"}`),
			ErrorCode:        "invalid_grant",
			ErrorDescription: "Invalid code: " + code + " for client secret " + secret,
		}},
		{"plain error with them", fmt.Errorf("wrapped: %w", errors.New("bad "+code+" and "+secret))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := redact(tt.err, code, secret)
			if strings.Contains(got, code) || strings.Contains(got, secret) {
				t.Errorf("redact = %q", got)
			}
			if !strings.Contains(got, "[redacted]") {
				t.Errorf("redact = %q, want the secrets marked as redacted", got)
			}
		})
	}
}

func TestTruncateKeepsUTF8Whole(t *testing.T) {
	s := strings.Repeat("a", 511) + "é" // é is 2 bytes, straddling byte 512
	got := truncate(s, 512)
	if len(got) != 511 || !strings.HasSuffix(got, "a") {
		t.Errorf("truncate cut inside a rune: len %d", len(got))
	}
	if truncate("short", 512) != "short" {
		t.Error("truncate changed a short string")
	}
}

func ptr[T any](v T) *T { return &v }

// TestAnAttemptThatWouldNotFitReturnsToTheStart: should an rd ever make the
// attempt cookie larger than a browser keeps (the redirect package's 2 KiB
// limit keeps it from happening today), the sign-in returns to / rather
// than set a cookie the browser drops.
func TestAnAttemptThatWouldNotFitReturnsToTheStart(t *testing.T) {
	key := make([]byte, 32)
	sealer, err := cookie.New([][]byte{key})
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(Config{
		Providers: []ProviderConfig{{ID: "idp", Type: TypeOIDC, Issuer: "https://idp.example.com", ClientID: "c"}},
		PublicURL: &url.URL{Scheme: "https", Host: "login.example.com"}, PublishTimeout: time.Second,
		SessionTTL: time.Hour, DeviceKey: key, RateLimit: 1, RateBurst: 1,
	}, sealer, nil, NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, tt := range []struct{ rd, want string }{
		{"/fits?" + strings.Repeat("q&", 1000), "/fits?" + strings.Repeat("q&", 1000)},
		{"/" + strings.Repeat("a", 3000), "/"},
	} {
		name := attemptCookieName(strings.Repeat("s", 43))
		r := httptest.NewRequest(http.MethodGet, "/login", nil)
		sealed, err := h.sealAttempt(r, name, attempt{State: strings.Repeat("s", 43), Return: tt.rd}, now)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(name) + len(sealed); n > maxCookieBytes {
			t.Errorf("rd of %d bytes: cookie of %d bytes", len(tt.rd), n)
		}
		payload, err := sealer.Open(name, sealed, now)
		var a attempt
		if err != nil || json.Unmarshal(payload, &a) != nil || a.Return != tt.want {
			t.Errorf("rd of %d bytes: sealed return %.40q, want %.40q", len(tt.rd), a.Return, tt.want)
		}
	}
}

// TestProviderClientKeepsConnectionsForTheNextSignIns: after a burst of
// concurrent requests to a provider, the next burst reuses the connections
// rather than dialling (and, in production, handshaking TLS) again.
// net/http's default keeps only 2 idle connections per host.
func TestProviderClientKeepsConnectionsForTheNextSignIns(t *testing.T) {
	const burst = 8
	var dials atomic.Int64
	arrived := make(chan struct{}, burst)
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		fmt.Fprint(w, `{"access_token":"a","token_type":"Bearer"}`)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			dials.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	client := providerClient()

	// round sends burst requests that are all in flight at once (the
	// server answers none before it holds them all), so the client needs
	// burst connections; it returns how many new ones it opened.
	round := func() int64 {
		before := dials.Load()
		var wg sync.WaitGroup
		for range burst {
			wg.Go(func() {
				resp, err := client.Get(srv.URL)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			})
		}
		for range burst {
			select {
			case <-arrived:
			case <-time.After(10 * time.Second):
				t.Fatal("the burst's requests did not all reach the server")
			}
		}
		for range burst {
			release <- struct{}{}
		}
		wg.Wait()
		return dials.Load() - before
	}
	if n := round(); n != burst {
		t.Fatalf("the first burst opened %d connections, want %d", n, burst)
	}
	// A connection goes back to the pool just after its body is read;
	// let the last ones get there.
	time.Sleep(100 * time.Millisecond)
	if n := round(); n > 1 {
		t.Errorf("the second burst opened %d new connections to the provider, want none: idle ones were dropped", n)
	}
}
