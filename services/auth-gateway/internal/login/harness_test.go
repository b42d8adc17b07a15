package login_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oauth2-proxy/mockoidc"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/admin"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/cookie"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/login"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/natstest"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/publish"
)

const providerID = "test-idp"

// The real parts satisfy the interfaces main wires them through.
var (
	_ login.Publisher = (*publish.Publisher)(nil)
	_ admin.Checker   = (*publish.Publisher)(nil)
	_ admin.Checker   = (*login.Handler)(nil)
)

// gateway is a real gateway on loopback, wired to a real OIDC provider
// (mockoidc over HTTP) and a real embedded NATS server.
type gateway struct {
	t       *testing.T
	url     *url.URL
	handler *login.Handler
	sealer  *cookie.Sealer
	reg     *prometheus.Registry
	logs    *syncBuffer
	clock   *clock

	idp *mockoidc.MockOIDC
	// tokenCalls counts requests to the provider's token endpoint.
	tokenCalls atomic.Int32
	// discoveryDown makes the provider answer discovery with 503.
	discoveryDown atomic.Bool
	// tokenResponses are the bodies the token endpoint sent, to check that
	// none of it is logged.
	tokenMu        sync.Mutex
	tokenResponses []string

	nats *server.Server
	js   jetstream.JetStream
	pub  *publish.Publisher
}

type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time               { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) advance(d time.Duration)      { c.offset.Add(int64(d)) }
func (g *gateway) tokenCallCount() int32      { return g.tokenCalls.Load() }
func (g *gateway) gatewayURL(p string) string { return g.url.String() + p }

type gatewayOption func(*gateway)

// withDiscoveryDown starts the gateway while provider discovery fails.
func withDiscoveryDown() gatewayOption { return func(g *gateway) { g.discoveryDown.Store(true) } }

func newGateway(t *testing.T, opts ...gatewayOption) *gateway {
	t.Helper()
	g := &gateway{t: t, logs: &syncBuffer{}, clock: &clock{}, reg: prometheus.NewRegistry()}
	for _, o := range opts {
		o(g)
	}

	// The identity provider.
	idp, err := mockoidc.NewServer(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := idp.AddMiddleware(g.idpTap); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := idp.Start(ln, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = idp.Shutdown() })
	g.idp = idp

	// NATS, and a client of our own to read what was published.
	g.nats = natstest.Run(t)
	nc, err := nats.Connect(g.nats.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if g.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}

	// The gateway.
	srv := httptest.NewUnstartedServer(nil)
	g.url, _ = url.Parse("http://" + srv.Listener.Addr().String())
	log := slog.New(slog.NewTextHandler(g.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	pub, err := publish.Connect(publish.Config{URL: g.nats.ClientURL(), Source: g.url.String()},
		log, publish.NewMetrics(g.reg))
	if err != nil {
		t.Fatal(err)
	}
	g.pub = pub
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = pub.Close(ctx)
	})
	key, err := cookie.RandomKey()
	if err != nil {
		t.Fatal(err)
	}
	if g.sealer, err = cookie.New([][]byte{key}); err != nil {
		t.Fatal(err)
	}
	g.handler, err = login.New(login.Config{
		Issuer:         idp.Issuer(),
		ClientID:       idp.ClientID,
		ClientSecret:   idp.ClientSecret,
		Scopes:         []string{"openid", "email", "profile"},
		ProviderID:     providerID,
		PublicURL:      g.url,
		PublishTimeout: 5 * time.Second,
		Now:            g.clock.now,
	}, g.sealer, pub, login.NewMetrics(g.reg), log)
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = g.handler
	srv.Start()
	t.Cleanup(srv.Close)
	return g
}

// idpTap wraps every provider endpoint: it counts token requests, keeps
// token responses, and can fail discovery.
func (g *gateway) idpTap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case mockoidc.DiscoveryEndpoint:
			if g.discoveryDown.Load() {
				http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
				return
			}
		case mockoidc.TokenEndpoint:
			g.tokenCalls.Add(1)
			rec := &teeWriter{ResponseWriter: w}
			next.ServeHTTP(rec, r)
			g.tokenMu.Lock()
			g.tokenResponses = append(g.tokenResponses, rec.buf.String())
			g.tokenMu.Unlock()
			return
		}
		next.ServeHTTP(w, r)
	})
}

type teeWriter struct {
	http.ResponseWriter
	buf bytes.Buffer
}

func (t *teeWriter) Write(p []byte) (int, error) {
	t.buf.Write(p)
	return t.ResponseWriter.Write(p)
}

// issuedTokens returns every token string the provider's token endpoint
// handed out.
func (g *gateway) issuedTokens() []string {
	g.tokenMu.Lock()
	defer g.tokenMu.Unlock()
	var out []string
	for _, body := range g.tokenResponses {
		var tr struct {
			AccessToken  string `json:"access_token"`
			RefreshToken string `json:"refresh_token"`
			IDToken      string `json:"id_token"`
		}
		if json.Unmarshal([]byte(body), &tr) != nil {
			continue
		}
		for _, s := range []string{tr.AccessToken, tr.RefreshToken, tr.IDToken} {
			if s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

// events returns every message in the AUTH_EVENTS stream.
func (g *gateway) events() []*jetstream.RawStreamMsg {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := g.js.Stream(ctx, eventsv1.StreamAuthEvents)
	if err != nil {
		return nil // never created: nothing was published
	}
	info, err := s.Info(ctx)
	if err != nil {
		g.t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			g.t.Fatalf("GetMsg %d: %v", seq, err)
		}
		out = append(out, m)
	}
	return out
}

func decodeEvent(t *testing.T, m *jetstream.RawStreamMsg) *eventsv1.UserAuthenticated {
	t.Helper()
	var ev eventsv1.UserAuthenticated
	if err := proto.Unmarshal(m.Data, &ev); err != nil {
		t.Fatalf("event does not decode: %v", err)
	}
	return &ev
}

// counter returns the value of the counter name with exactly these labels.
func (g *gateway) counter(name string, labels map[string]string) float64 {
	g.t.Helper()
	mfs, err := g.reg.Gather()
	if err != nil {
		g.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelsMatch(m.GetLabel(), labels) {
				if h := m.GetHistogram(); h != nil {
					return float64(h.GetSampleCount())
				}
				return m.GetCounter().GetValue()
			}
		}
	}
	g.t.Fatalf("no series %s%v", name, labels)
	return 0
}

func (g *gateway) logins(result string) float64 {
	return g.counter("doorbell_gateway_logins_total", map[string]string{"provider": providerID, "result": result})
}

func labelsMatch[L interface {
	GetName() string
	GetValue() string
}](got []L, want map[string]string) bool {
	if len(got) != len(want) {
		return false
	}
	for _, l := range got {
		if want[l.GetName()] != l.GetValue() {
			return false
		}
	}
	return true
}

// browser is a cookie-keeping HTTP client that follows redirects to the
// provider but stops at every redirect back to the gateway, so tests see
// each gateway response.
type browser struct {
	t   *testing.T
	g   *gateway
	c   *http.Client
	jar *cookiejar.Jar
	ua  string
}

func (g *gateway) browser() *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		g.t.Fatal(err)
	}
	b := &browser{t: g.t, g: g, jar: jar, ua: "Mozilla/5.0 (DoorbellTest)"}
	b.c = &http.Client{
		Jar:     jar,
		Timeout: 60 * time.Second,
		CheckRedirect: func(req *http.Request, _ []*http.Request) error {
			req.Header.Set("User-Agent", b.ua)
			if req.URL.Host == g.url.Host {
				return http.ErrUseLastResponse
			}
			return nil
		},
	}
	return b
}

type response struct {
	*http.Response
	body string
}

func (b *browser) do(method, target string, header map[string]string) response {
	b.t.Helper()
	req, err := http.NewRequest(method, target, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header.Set("User-Agent", b.ua)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	return response{Response: resp, body: string(body)}
}

func (b *browser) get(path string) response { return b.do(http.MethodGet, b.g.gatewayURL(path), nil) }

// begin starts a sign-in at /login (with rd when not empty) and returns the
// callback URL the provider redirected back to, without visiting it.
func (b *browser) begin(rd string) *url.URL {
	b.t.Helper()
	p := "/login"
	if rd != "" {
		p += "?rd=" + url.QueryEscape(rd)
	}
	resp := b.get(p)
	if resp.StatusCode != http.StatusFound {
		b.t.Fatalf("sign-in did not come back with a redirect: %d %s", resp.StatusCode, resp.body)
	}
	loc, err := resp.Location()
	if err != nil {
		b.t.Fatal(err)
	}
	if loc.Host != b.g.url.Host || loc.Path != "/auth/callback" {
		b.t.Fatalf("provider redirected to %s, want the gateway callback", loc)
	}
	return loc
}

// finish visits the callback URL.
func (b *browser) finish(callback *url.URL, header map[string]string) response {
	b.t.Helper()
	return b.do(http.MethodGet, callback.String(), header)
}

// cookie returns the value of the cookie called name the browser would send
// to path on the gateway, or "".
func (b *browser) cookie(path, name string) string {
	for _, c := range b.jar.Cookies(b.g.url.ResolveReference(&url.URL{Path: path})) {
		if c.Name == name {
			return c.Value
		}
	}
	return ""
}

// setCookie returns the Set-Cookie for name in resp, or nil.
func setCookie(resp response, name string) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// testUser is a provider account whose ID token and UserInfo claims the
// test controls.
type testUser struct {
	sub string
	// idClaims are added to the ID token's claims.
	idClaims map[string]any
	// userinfo is the UserInfo response ("sub" defaults to sub).
	userinfo map[string]any
	// nonce, when set, replaces the nonce the gateway asked for.
	nonce string
}

var _ mockoidc.User = (*testUser)(nil)

func (u *testUser) ID() string { return u.sub }

func (u *testUser) Userinfo([]string) ([]byte, error) {
	m := map[string]any{"sub": u.sub}
	for k, v := range u.userinfo {
		m[k] = v
	}
	return json.Marshal(m)
}

func (u *testUser) Claims(_ []string, base *mockoidc.IDTokenClaims) (jwt.Claims, error) {
	b, err := json.Marshal(base)
	if err != nil {
		return nil, err
	}
	m := jwt.MapClaims{}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	for k, v := range u.idClaims {
		m[k] = v
	}
	if u.nonce != "" {
		m["nonce"] = u.nonce
	}
	return m, nil
}

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func mustContain(t *testing.T, what, s string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(s, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, s)
		}
	}
}
