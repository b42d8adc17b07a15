package login

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/cookie"
	"github.com/prometheus/client_golang/prometheus"
)

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
