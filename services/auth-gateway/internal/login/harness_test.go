package login_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/doorbell/doorbell/platform/admin"
	"github.com/doorbell/doorbell/platform/natstest"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/config"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/cookie"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/login"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/publish"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/spool"
	"github.com/golang-jwt/jwt/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oauth2-proxy/mockoidc"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"
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
	reg     *metrics
	logs    *syncBuffer
	log     *slog.Logger
	clock   *clock
	// cfg is the configuration the handler was built with; options change
	// it before that.
	cfg login.Config

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
	// spool, when set by withSpool, is the publisher's spool.
	spool *spool.Spool
	// spans, when set by withTracing, receives every finished span.
	spans *tracetest.InMemoryExporter
	// tls, when set by withTLS, serves the gateway over https; transport
	// then trusts its certificate.
	tls       bool
	transport http.RoundTripper
}

type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time               { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) advance(d time.Duration)      { c.offset.Add(int64(d)) }
func (g *gateway) tokenCallCount() int32      { return g.tokenCalls.Load() }
func (g *gateway) gatewayURL(p string) string { return g.url.String() + p }

// gatewayOption changes the gateway before its publisher and handler are
// built; g.idp, g.url, g.log and g.cfg are set by then.
type gatewayOption func(*gateway)

// withDiscoveryDown starts the gateway while provider discovery fails.
func withDiscoveryDown() gatewayOption { return func(g *gateway) { g.discoveryDown.Store(true) } }

// withProviders replaces the providers (by default the mockoidc one).
func withProviders(ps ...login.ProviderConfig) gatewayOption {
	return func(g *gateway) { g.cfg.Providers = ps }
}

// withExtraProviders adds providers after the mockoidc one.
func withExtraProviders(ps ...login.ProviderConfig) gatewayOption {
	return func(g *gateway) { g.cfg.Providers = append(g.cfg.Providers, ps...) }
}

// withSpool gives the publisher a spool in a fresh directory, and runs
// its drainer.
func withSpool(max int) gatewayOption {
	return func(g *gateway) {
		keys, err := g.sealer.DeriveKeys("spool")
		if err != nil {
			g.t.Fatal(err)
		}
		sp, err := spool.Open(g.t.TempDir(), max, keys, g.log)
		if err != nil {
			g.t.Fatal(err)
		}
		g.spool = sp
	}
}

// withTracing records every span of the gateway, all sampled, in g.spans.
func withTracing() gatewayOption {
	return func(g *gateway) {
		g.spans = tracetest.NewInMemoryExporter()
		g.cfg.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithSyncer(g.spans))
	}
}

// withTLS serves the gateway over https, as behind a TLS-terminating
// proxy in production: its public URL is https, so its cookies are Secure.
func withTLS() gatewayOption {
	return func(g *gateway) {
		g.tls = true
		g.url.Scheme = "https"
		g.cfg.PublicURL = g.url
	}
}

// withConfig lets a test change anything else in the configuration.
func withConfig(change func(c *login.Config)) gatewayOption {
	return func(g *gateway) { change(&g.cfg) }
}

// mockProvider is the default provider: mockoidc, as id test-idp. Its
// token endpoint reads the client secret from the form only, though its
// discovery lists client_secret_basic too: configured as an operator would.
func (g *gateway) mockProvider() login.ProviderConfig {
	return login.ProviderConfig{
		ID: providerID, Type: login.TypeOIDC, Issuer: g.idp.Issuer(),
		ClientID: g.idp.ClientID, ClientSecret: g.idp.ClientSecret,
		Scopes: []string{"openid", "email", "profile"}, TokenAuthMethod: config.TokenAuthPost,
	}.WithDefaults()
}

func newGateway(t *testing.T, opts ...gatewayOption) *gateway {
	t.Helper()
	g := &gateway{t: t, logs: &syncBuffer{}, clock: &clock{}, reg: newMetrics()}

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
	log := slog.New(slog.NewTextHandler(io.MultiWriter(g.logs, suite), &slog.HandlerOptions{Level: slog.LevelDebug}))
	key, err := cookie.RandomKey()
	if err != nil {
		t.Fatal(err)
	}
	if g.sealer, err = cookie.New([][]byte{key}); err != nil {
		t.Fatal(err)
	}
	suite.secret("cookie key", base64.StdEncoding.EncodeToString(key), base64.RawURLEncoding.EncodeToString(key))
	deviceKey, err := g.sealer.DeriveKey("device id")
	if err != nil {
		t.Fatal(err)
	}
	g.log = log
	g.cfg = login.Config{
		PublicURL: g.url,
		// Generous: a publish waits for JetStream to store the event, on a
		// shared machine under the race detector. No test relies on it
		// running out; those with NATS down wait until the publisher noticed.
		PublishTimeout: 30 * time.Second,
		SessionTTL:     12 * time.Hour,
		DeviceKey:      deviceKey,
		RateLimit:      10,
		RateBurst:      20,
		Now:            g.clock.now,
	}
	g.cfg.Providers = []login.ProviderConfig{g.mockProvider()}
	for _, o := range opts {
		o(g)
	}
	for _, p := range g.cfg.Providers {
		suite.secret("client secret", p.ClientSecret)
	}
	pub, err := publish.Connect(publish.Config{
		URL: g.nats.ClientURL(), Source: g.url.String(), Spool: g.spool, TracerProvider: g.cfg.TracerProvider,
	}, log, publish.NewMetrics(g.reg))
	if err != nil {
		t.Fatal(err)
	}
	g.pub = pub
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = pub.Close(ctx)
	})
	// Connect returns without waiting for NATS, and on a loaded machine its
	// first attempt can time out and be retried in the background: the
	// tests' sign-ins expect it connected.
	for deadline := time.Now().Add(60 * time.Second); !strings.Contains(g.logs.String(), `msg="nats connected"`); {
		if time.Now().After(deadline) {
			t.Fatalf("the publisher did not connect to NATS within 60s:\n%s", g.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if g.spool != nil {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			pub.Run(ctx)
		}()
		t.Cleanup(func() {
			cancel()
			<-done
		})
	}
	g.handler, err = login.New(g.cfg, g.sealer, pub, login.NewMetrics(g.reg), log)
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = g.handler
	if g.tls {
		srv.StartTLS()
		g.transport = srv.Client().Transport
	} else {
		srv.Start()
	}
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
			suite.tokenResponse(rec.buf.Bytes())
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

// replica is a second gateway process behind the same public URL, with
// the same keys and configuration (changed by change, when not nil) but its
// own memory and metrics.
type replica struct {
	url string
	reg *metrics
}

func (g *gateway) replica(change func(c *login.Config)) *replica {
	g.t.Helper()
	cfg := g.cfg
	if change != nil {
		change(&cfg)
	}
	r := &replica{reg: newMetrics()}
	h, err := login.New(cfg, g.sealer, g.pub, login.NewMetrics(r.reg), g.log)
	if err != nil {
		g.t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	g.t.Cleanup(srv.Close)
	r.url = srv.URL
	return r
}

// metrics is a registry that keeps the collectors registered on it, so
// that tests read a series by metric name with prometheus/testutil.
type metrics struct {
	*prometheus.Registry
	mu         sync.Mutex
	collectors []prometheus.Collector
}

func newMetrics() *metrics { return &metrics{Registry: prometheus.NewRegistry()} }

func (m *metrics) Register(c prometheus.Collector) error {
	if err := m.Registry.Register(c); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.collectors = append(m.collectors, c)
	return nil
}

func (m *metrics) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := m.Register(c); err != nil {
			panic(err)
		}
	}
}

// value returns the value of the counter (or histogram sample count) name
// with exactly these labels.
func (m *metrics) value(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.collectors {
		if testutil.CollectAndCount(c, name) == 0 {
			continue
		}
		switch v := c.(type) {
		case *prometheus.CounterVec:
			return testutil.ToFloat64(v.With(labels))
		case *prometheus.HistogramVec:
			var d dto.Metric
			if err := v.With(labels).(prometheus.Histogram).Write(&d); err != nil {
				t.Fatal(err)
			}
			return float64(d.GetHistogram().GetSampleCount())
		default:
			return testutil.ToFloat64(c)
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// counter returns the value of the counter name with exactly these labels.
func (g *gateway) counter(name string, labels map[string]string) float64 {
	g.t.Helper()
	return g.reg.value(g.t, name, labels)
}

// logins is logins_total for the default provider and result.
func (g *gateway) logins(result string) float64 {
	return g.loginsFor(providerID, result)
}

func (g *gateway) loginsFor(provider, result string) float64 {
	return g.counter("doorbell_gateway_logins_total", map[string]string{"provider": provider, "result": result})
}

// loginTotals returns every non-zero logins_total series as
// "provider/result" → value, to check that nothing else moved.
func (g *gateway) loginTotals() map[string]float64 {
	g.t.Helper()
	out := map[string]float64{}
	providers := []string{login.UnknownProvider}
	for _, p := range g.cfg.Providers {
		providers = append(providers, p.ID)
	}
	for _, p := range providers {
		for _, r := range login.Results {
			if v := g.loginsFor(p, r); v != 0 {
				out[p+"/"+r] = v
			}
		}
	}
	return out
}

// browser is a cookie-keeping HTTP client that follows redirects to the
// providers but stops at every redirect back to the gateway (or to a host
// off loopback), so tests see each gateway response.
type browser struct {
	t   *testing.T
	g   *gateway
	c   *http.Client
	jar *cookiejar.Jar
	ua  string
	// lang is the Accept-Language the browser sends.
	lang string
}

func (g *gateway) browser() *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		g.t.Fatal(err)
	}
	b := &browser{t: g.t, g: g, jar: jar, ua: "Mozilla/5.0 (DoorbellTest)", lang: "ko-KR,ko;q=0.9,en;q=0.8"}
	b.c = &http.Client{
		Jar:       jar,
		Transport: g.transport,
		Timeout:   60 * time.Second,
		CheckRedirect: func(req *http.Request, _ []*http.Request) error {
			suite.url(req.URL)
			if req.Response != nil {
				suite.response(req.Response)
			}
			req.Header.Set("User-Agent", b.ua)
			req.Header.Set("Accept-Language", b.lang)
			// Stop at the gateway, and at hosts that exist only in tests.
			if req.URL.Host == g.url.Host || req.URL.Hostname() != "127.0.0.1" {
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
	return b.send(method, target, nil, header)
}

// postForm submits form to path on the gateway as a browser's form post.
func (b *browser) postForm(path string, form url.Values, header map[string]string) response {
	b.t.Helper()
	h := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	for k, v := range header {
		h[k] = v
	}
	return b.send(http.MethodPost, b.g.gatewayURL(path), strings.NewReader(form.Encode()), h)
}

func (b *browser) send(method, target string, body io.Reader, header map[string]string) response {
	b.t.Helper()
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		b.t.Fatal(err)
	}
	suite.url(req.URL)
	req.Header.Set("User-Agent", b.ua)
	req.Header.Set("Accept-Language", b.lang)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	suite.response(resp)
	return response{Response: resp, body: string(data)}
}

// fetch sends req without a browser's cookies or redirects, and reads
// the answer.
func fetch(t *testing.T, req *http.Request) response {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
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

// slowRate allows burst requests per client IP and then one an hour, so
// a test knows exactly when the limit bites without waiting for anything.
func slowRate(burst int) gatewayOption {
	return withConfig(func(c *login.Config) { c.RateLimit, c.RateBurst = rate.Every(time.Hour), burst })
}

// attemptCookies returns the sign-in attempt cookies the browser would
// send to the callback.
func (b *browser) attemptCookies() []*http.Cookie {
	var out []*http.Cookie
	for _, c := range b.jar.Cookies(b.g.url.ResolveReference(&url.URL{Path: "/auth/callback"})) {
		if strings.HasPrefix(c.Name, "doorbell_login_") {
			out = append(out, c)
		}
	}
	return out
}

// waitNotConnected polls until the publisher has noticed that NATS is
// gone; each probe is short so that one sent just before the disconnect
// does not hold up the loop.
func waitNotConnected(ctx context.Context, t *testing.T, pub *publish.Publisher) {
	t.Helper()
	for {
		probe, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := pub.Ready(probe)
		cancel()
		if errors.Is(err, publish.ErrNotConnected) || errors.Is(err, publish.ErrSpooling) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("publisher did not notice NATS went down (last: %v)", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// assertRefused checks what the person, the operator and the stream see
// after a refused sign-in.
func assertRefused(t *testing.T, g *gateway, resp response, status int, provider, result string, page ...string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("status = %d, want %d: %s", resp.StatusCode, status, resp.body)
	}
	mustContain(t, "page", resp.body, append(page, `href="/"`, "<code>"+result+"</code>")...)
	want := map[string]float64{provider + "/" + result: 1}
	if got := g.loginTotals(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("logins_total moved %v, want exactly %v", got, want)
	}
	if n := len(g.events()); n != 0 {
		t.Errorf("%d events published", n)
	}
	if setCookie(resp, "doorbell_session") != nil {
		t.Error("session cookie set")
	}
	mustContain(t, "log", g.logs.String(), "reason="+result)
}

// hostRoute is the provider client's transport in tests where a provider's
// issuer names a host that does not exist here: requests to that host go,
// over plain HTTP, to the test server at target instead (as a resolver
// entry would send them); every other request goes out unchanged.
type hostRoute struct {
	host   string
	target *url.URL
}

func (h hostRoute) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Host == h.host {
		r = r.Clone(r.Context())
		r.URL.Scheme, r.URL.Host, r.Host = h.target.Scheme, h.target.Host, h.target.Host
	}
	return http.DefaultTransport.RoundTrip(r)
}

const expiredPage = "This sign-in link has expired or was already used. Start again."

func alice() *testUser {
	return &testUser{sub: "alice-1", idClaims: map[string]any{
		"email": "alice@example.com", "email_verified": true, "name": "Alice <Admin>", "locale": "en-GB",
	}}
}

func withQuery(u *url.URL, key, value string) *url.URL {
	c := *u
	q := c.Query()
	if value == "" {
		q.Del(key)
	} else {
		q.Set(key, value)
	}
	c.RawQuery = q.Encode()
	return &c
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// suite collects the log output of every gateway this package's tests
// start, and every secret they see go by: authorization codes and states
// in URLs, cookie values, tokens the providers issued, client secrets and
// cookie keys. TestMain fails the run if any secret shows up in any log
// line.
var suite = &suiteRecorder{secrets: map[string]string{}}

type suiteRecorder struct {
	mu      sync.Mutex
	logs    bytes.Buffer
	secrets map[string]string // value → kind
}

func (s *suiteRecorder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logs.Write(p)
}

// secret records values of kind; values too short to search for reliably
// are skipped.
func (s *suiteRecorder) secret(kind string, values ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range values {
		if len(v) >= 8 {
			s.secrets[v] = kind
		}
	}
}

// url records the code and state of a URL, if any.
func (s *suiteRecorder) url(u *url.URL) {
	q := u.Query()
	s.secret("authorization code", q.Get("code"))
	s.secret("state", q.Get("state"))
}

// response records the cookies a response sets and the code in its
// redirect.
func (s *suiteRecorder) response(resp *http.Response) {
	for _, c := range resp.Cookies() {
		s.secret("cookie "+c.Name, c.Value)
	}
	if loc, err := resp.Location(); err == nil {
		s.url(loc)
	}
}

// tokenResponse records the tokens in a token endpoint's answer (JSON or
// form-encoded).
func (s *suiteRecorder) tokenResponse(body []byte) {
	var tr map[string]any
	if json.Unmarshal(body, &tr) == nil {
		for _, k := range []string{"access_token", "refresh_token", "id_token"} {
			if v, ok := tr[k].(string); ok {
				s.secret(k, v)
			}
		}
		return
	}
	if q, err := url.ParseQuery(string(body)); err == nil {
		for _, k := range []string{"access_token", "refresh_token", "id_token"} {
			s.secret(k, q.Get(k))
		}
	}
}

// leaks returns a line per secret found in the logs.
func (s *suiteRecorder) leaks() (leaks []string, secrets int, logBytes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	logs := s.logs.String()
	for v, kind := range s.secrets {
		if strings.Contains(logs, v) {
			leaks = append(leaks, fmt.Sprintf("%s %.12q…", kind, v))
		}
	}
	sort.Strings(leaks)
	return leaks, len(s.secrets), len(logs)
}

func TestMain(m *testing.M) {
	code := m.Run()
	leaks, secrets, logBytes := suite.leaks()
	if len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: the log output of this package's tests contains %d secrets:\n  %s\n",
			len(leaks), strings.Join(leaks, "\n  "))
		code = 1
	} else if testing.Verbose() {
		fmt.Printf("log check: %d secrets, none in %d bytes of log output\n", secrets, logBytes)
	}
	os.Exit(code)
}

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

var csrfPattern = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrfField returns the sign-out form's token on page.
func csrfField(t *testing.T, page string) string {
	t.Helper()
	m := csrfPattern.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("page has no csrf field:\n%s", page)
	}
	suite.secret("csrf token", m[1])
	return m[1]
}

// signedIn returns a browser with a fresh session on g.
func signedIn(t *testing.T, g *gateway) *browser {
	t.Helper()
	b := g.browser()
	if resp := b.finish(b.begin(""), nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in failed: %d %s", resp.StatusCode, resp.body)
	}
	return b
}

func (g *gateway) logouts(result string) float64 {
	return g.counter("doorbell_gateway_logouts_total", map[string]string{"result": result})
}
