package login

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/config"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/oauth2"
)

// discoveryServer is an OpenID Connect provider that answers only
// discovery: with 503 while down, and only once released when gated.
type discoveryServer struct {
	srv   *httptest.Server
	hits  atomic.Int32
	down  atomic.Bool
	gate  chan struct{}
	asked chan struct{}
}

func newDiscoveryServer(t *testing.T, gated bool) *discoveryServer {
	t.Helper()
	d := &discoveryServer{asked: make(chan struct{}, 16)}
	if gated {
		d.gate = make(chan struct{})
	}
	d.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.hits.Add(1)
		d.asked <- struct{}{}
		if d.gate != nil {
			select {
			case <-d.gate:
			case <-r.Context().Done():
				return
			}
		}
		if d.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                 d.srv.URL,
			"authorization_endpoint": d.srv.URL + "/authorize",
			"token_endpoint":         d.srv.URL + "/token",
			"jwks_uri":               d.srv.URL + "/jwks",
		})
	}))
	t.Cleanup(d.srv.Close)
	return d
}

// waitAsked waits for the next discovery request.
func (d *discoveryServer) waitAsked(t *testing.T, what string) {
	t.Helper()
	select {
	case <-d.asked:
	case <-time.After(10 * time.Second):
		t.Fatalf("no discovery request: %s", what)
	}
}

func (d *discoveryServer) flow() *oidcFlow {
	cfg := ProviderConfig{ID: "idp", Type: TypeOIDC, Issuer: d.srv.URL, ClientID: "c"}
	return newOIDCFlow(cfg, "http://gateway.test/auth/callback", d.srv.Client(), noop.NewTracerProvider().Tracer(""))
}

// TestDiscoveryIsSharedAndRetried: callers that need the discovery
// document while it loads share one request; a caller that gives up does
// not fail the others; a failed discovery is tried again by the next call.
func TestDiscoveryIsSharedAndRetried(t *testing.T) {
	t.Run("concurrent callers share one request", func(t *testing.T) {
		d := newDiscoveryServer(t, true)
		f := d.flow()
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Go(func() { _, errs[i] = f.get(t.Context()) })
		}
		d.waitAsked(t, "the first caller's")
		time.Sleep(50 * time.Millisecond) // let the others join the request
		close(d.gate)
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		if n := d.hits.Load(); n != 1 {
			t.Errorf("%d discovery requests, want 1", n)
		}
	})

	t.Run("a caller that gives up does not fail the others", func(t *testing.T) {
		d := newDiscoveryServer(t, true)
		f := d.flow()
		first, giveUp := context.WithCancel(t.Context())
		firstErr := make(chan error, 1)
		go func() {
			_, err := f.get(first)
			firstErr <- err
		}()
		d.waitAsked(t, "the first caller's")
		secondErr := make(chan error, 1)
		go func() {
			_, err := f.get(t.Context())
			secondErr <- err
		}()
		time.Sleep(50 * time.Millisecond) // let the second join the first's request
		giveUp()
		if err := <-firstErr; err == nil {
			t.Error("the caller that gave up got the discovered provider")
		}
		d.waitAsked(t, "the second caller did not try again itself")
		close(d.gate)
		if err := <-secondErr; err != nil {
			t.Errorf("the caller still waiting got %v, want the discovered provider", err)
		}
	})

	t.Run("a failed discovery is tried again", func(t *testing.T) {
		d := newDiscoveryServer(t, false)
		d.down.Store(true)
		f := d.flow()
		if _, err := f.get(t.Context()); err == nil {
			t.Fatal("discovery of a provider answering 503 succeeded")
		}
		d.down.Store(false)
		if _, err := f.get(t.Context()); err != nil {
			t.Fatalf("discovery after the provider recovered: %v", err)
		}
		if _, err := f.get(t.Context()); err != nil || d.hits.Load() != 2 {
			t.Errorf("a third call = %v after %d requests, want the kept result after 2", err, d.hits.Load())
		}
	})
}

func TestAuthStyleFollowsTheRegistrationDefault(t *testing.T) {
	basic, post := config.TokenAuthBasic, config.TokenAuthPost
	tests := []struct {
		name         string
		configured   string
		supported    []string
		confidential bool
		want         oauth2.AuthStyle
	}{
		{"public client sends its id in the form", config.TokenAuthAuto, []string{basic}, false, oauth2.AuthStyleInParams},
		{"auto, nothing listed: basic (OIDC Discovery default)", config.TokenAuthAuto, nil, true, oauth2.AuthStyleInHeader},
		{"auto, both listed: basic (RFC 7591 registration default)", config.TokenAuthAuto, []string{post, basic}, true, oauth2.AuthStyleInHeader},
		{"auto, only post listed: post", config.TokenAuthAuto, []string{post, "private_key_jwt"}, true, oauth2.AuthStyleInParams},
		{"auto, only methods we lack: basic", config.TokenAuthAuto, []string{"private_key_jwt"}, true, oauth2.AuthStyleInHeader},
		{"configured post wins over the list", post, []string{basic}, true, oauth2.AuthStyleInParams},
		{"configured basic wins over the list", basic, []string{post}, true, oauth2.AuthStyleInHeader},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := authStyle(tc.configured, tc.supported, tc.confidential); got != tc.want {
				t.Errorf("authStyle(%q, %v, %v) = %v, want %v", tc.configured, tc.supported, tc.confidential, got, tc.want)
			}
		})
	}
}
