package login

import (
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

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

// A rate limit that is not a positive number (NaN compares false with
// everything) is refused, rather than letting every request through.
func TestConfigRefusesARateLimitThatIsNotAPositiveNumber(t *testing.T) {
	valid := Config{
		Providers:      []ProviderConfig{{}},
		PublicURL:      &url.URL{Scheme: "https", Host: "login.example.com"},
		PublishTimeout: time.Second, SessionTTL: time.Hour, DeviceKey: make([]byte, 32),
		RateLimit: 10, RateBurst: 20,
	}
	if err := valid.validate(); err != nil {
		t.Fatalf("a valid configuration is refused: %v", err)
	}
	for _, limit := range []rate.Limit{0, -1, rate.Limit(math.NaN())} {
		cfg := valid
		cfg.RateLimit = limit
		if err := cfg.validate(); err == nil || !strings.Contains(err.Error(), "rate limit") {
			t.Errorf("rate limit %v: validate = %v, want a rate limit error", limit, err)
		}
	}
}
