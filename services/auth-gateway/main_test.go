package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oauth2-proxy/mockoidc"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/doorbell/doorbell/platform/natstest"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

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

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startIDP runs a mock OpenID provider until the test ends.
func startIDP(t *testing.T) *mockoidc.MockOIDC {
	t.Helper()
	idp, err := mockoidc.Run()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = idp.Shutdown() })
	return idp
}

// TestRunServesUntilCancelledThenStopsCleanly runs the real wiring against a
// real provider and NATS: it becomes ready, serves pages, and returns nil
// once its context is cancelled (as on SIGTERM).
func TestRunServesUntilCancelledThenStopsCleanly(t *testing.T) {
	idp := startIDP(t)
	ns := natstest.Run(t)
	env := gatewayEnv(t, idp, ns.ClientURL())
	addr, adminAddr := env["GATEWAY_ADDR"], env["GATEWAY_ADMIN_ADDR"]
	logs, stop := startRun(t, env, http.StatusOK)

	client := &http.Client{Timeout: 10 * time.Second}
	if status, body := fetch(client, "http://"+addr+"/"); status != http.StatusOK || !strings.Contains(body, "Sign in") {
		t.Errorf("GET / = %d %s", status, body)
	}
	if status, body := fetch(client, "http://"+adminAddr+"/metrics"); status != http.StatusOK ||
		!strings.Contains(body, `doorbell_gateway_logins_total{provider="oidc",result="success"} 0`) {
		t.Errorf("/metrics = %d, lacks the pre-initialised login series", status)
	}

	if err := stop(); err != nil {
		t.Fatalf("run after cancel = %v", err)
	}
	if strings.Contains(logs.String(), "GATEWAY_COOKIE_KEY is not set") {
		t.Error("warned about a missing cookie key that was set")
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("still listening after shutdown")
	}
}

func TestRunStartsWithoutItsDependencies(t *testing.T) {
	addr, adminAddr := freeAddr(t), freeAddr(t)
	env := map[string]string{
		"GATEWAY_ADDR":       addr,
		"GATEWAY_ADMIN_ADDR": adminAddr,
		"OIDC_ISSUER":        "http://" + freeAddr(t) + "/nothing-here",
		"OIDC_CLIENT_ID":     "doorbell",
		"NATS_URL":           "nats://" + freeAddr(t),
	}
	// Any answer from /readyz shows that run did not exit with its
	// dependencies down.
	logs, stop := startRun(t, env, 0)

	client := &http.Client{Timeout: 10 * time.Second}
	status, body := fetch(client, "http://"+adminAddr+"/readyz")
	if status != http.StatusServiceUnavailable || !strings.Contains(body, `"status":"unavailable"`) ||
		!strings.Contains(body, `"nats":`) || !strings.Contains(body, `"provider":`) {
		t.Errorf("/readyz = %d %s", status, body)
	}
	if s, _ := fetch(client, "http://"+adminAddr+"/healthz"); s != http.StatusOK {
		t.Errorf("/healthz = %d", s)
	}
	if s, b := fetch(client, "http://"+addr+"/login"); s != http.StatusServiceUnavailable ||
		!strings.Contains(b, "identity provider is unreachable") {
		t.Errorf("/login = %d %s", s, b)
	}
	if !strings.Contains(logs.String(), "GATEWAY_COOKIE_KEY is not set") {
		t.Error("no warning about the generated cookie key")
	}
	if err := stop(); err != nil {
		t.Fatalf("run after cancel = %v", err)
	}
}

// TestRunWithAProvidersFile starts the real wiring with several providers
// from a file: one button each, metrics for each and for "unknown".
func TestRunWithAProvidersFile(t *testing.T) {
	idp := startIDP(t)
	ns := natstest.Run(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dex.secret"), []byte(idp.ClientSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "providers.yaml")
	yaml := "providers:\n" +
		"  - id: dex\n    type: oidc\n    name: Dex\n    issuer: " + idp.Issuer() + "\n" +
		"    client_id: " + idp.ClientID + "\n    client_secret_file: dex.secret\n" +
		"    token_endpoint_auth_method: client_secret_post\n" +
		"  - id: github\n    type: github\n    client_id: gh\n    client_secret: gh-secret\n" +
		"    github_api_url: http://" + freeAddr(t) + "\n"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, adminAddr := freeAddr(t), freeAddr(t)
	env := map[string]string{
		"GATEWAY_ADDR":           addr,
		"GATEWAY_ADMIN_ADDR":     adminAddr,
		"GATEWAY_PUBLIC_URL":     "http://" + addr,
		"GATEWAY_COOKIE_KEY":     base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)),
		"GATEWAY_PROVIDERS_FILE": file,
		"NATS_URL":               ns.ClientURL(),
	}
	logs, stop := startRun(t, env, http.StatusOK)

	client := &http.Client{Timeout: 10 * time.Second}
	_, home := fetch(client, "http://"+addr+"/")
	for _, want := range []string{`href="/login?provider=dex">Sign in with Dex`, `href="/login?provider=github">Sign in with GitHub`} {
		if !strings.Contains(home, want) {
			t.Errorf("start page lacks %s:\n%s", want, home)
		}
	}
	_, metrics := fetch(client, "http://"+adminAddr+"/metrics")
	for _, want := range []string{
		`doorbell_gateway_logins_total{provider="dex",result="success"} 0`,
		`doorbell_gateway_logins_total{provider="github",result="email_domain_not_allowed"} 0`,
		`doorbell_gateway_logins_total{provider="unknown",result="provider_unknown"} 0`,
		`doorbell_gateway_verify_requests_total{result="authorized"} 0`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	mustLog(t, logs.String(), "providers=dex,github",
		"provider=dex callback_url=http://"+addr+"/auth/callback/dex",
		"provider=github callback_url=http://"+addr+"/auth/callback/github")
	if err := stop(); err != nil {
		t.Fatalf("run after cancel = %v", err)
	}
}

func TestRunRejectsBadConfiguration(t *testing.T) {
	err := run(context.Background(), func(string) (string, bool) { return "", false }, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "OIDC_ISSUER") || !strings.Contains(err.Error(), "OIDC_CLIENT_ID") {
		t.Fatalf("run with no configuration = %v", err)
	}
}

// fetch returns the status and body, or 0 when the server did not answer.
func fetch(c *http.Client, url string) (int, string) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// startRun runs the gateway with env in the background until the test
// ends, and waits until /readyz answers wantReady (200) or anything but
// "no answer" when wantReady is 0.
func startRun(t *testing.T, env map[string]string, wantReady int) (logs *syncBuffer, stop func() error) {
	t.Helper()
	logs = &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, logs)
	}()
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(60 * time.Second):
			t.Fatal("run did not stop after cancel")
			return nil
		}
	}
	t.Cleanup(func() { _ = stop() })

	deadline, cancelWait := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancelWait()
	client := &http.Client{Timeout: 10 * time.Second}
	for {
		status, _ := fetch(client, "http://"+env["GATEWAY_ADMIN_ADDR"]+"/readyz")
		if status != 0 && (wantReady == 0 || status == wantReady) {
			return logs, stop
		}
		select {
		case err := <-done:
			t.Fatalf("run returned early: %v\n%s", err, logs)
		case <-deadline.Done():
			_, body := fetch(client, "http://"+env["GATEWAY_ADMIN_ADDR"]+"/readyz")
			t.Fatalf("/readyz never answered %d: %s\n%s", wantReady, body, logs)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// signIn runs a whole sign-in through the gateway and the provider with a
// cookie-keeping client, and returns the page it ends on.
func signIn(t *testing.T, gatewayURL string) (int, string) {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	return fetch(client, gatewayURL+"/login")
}

func gatewayEnv(t *testing.T, idp *mockoidc.MockOIDC, natsURL string) map[string]string {
	addr := freeAddr(t)
	return map[string]string{
		"GATEWAY_ADDR":       addr,
		"GATEWAY_ADMIN_ADDR": freeAddr(t),
		"GATEWAY_PUBLIC_URL": "http://" + addr,
		"GATEWAY_COOKIE_KEY": base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)),
		"OIDC_ISSUER":        idp.Issuer(),
		"OIDC_CLIENT_ID":     idp.ClientID,
		"OIDC_CLIENT_SECRET": idp.ClientSecret,
		// mockoidc reads the secret from the form only.
		"OIDC_TOKEN_AUTH_METHOD": "client_secret_post",
		"NATS_URL":               natsURL,
	}
}

// authEvents looks up AUTH_EVENTS on the servers at url, within ctx.
func authEvents(ctx context.Context, t *testing.T, url string) jetstream.Stream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, eventsv1.StreamAuthEvents)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	return s
}

// streamEvents returns the events in AUTH_EVENTS on the server at url.
func streamEvents(t *testing.T, url string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := authEvents(ctx, t, url)
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// TestRunWithASpoolSignsPeopleInWhileNATSIsDown: the real wiring with
// GATEWAY_SPOOL_DIR stays ready with NATS down, says so, signs people in,
// and publishes their events once NATS is up.
func TestRunWithASpoolSignsPeopleInWhileNATSIsDown(t *testing.T) {
	idp := startIDP(t)
	natsAddr, dir := freeAddr(t), filepath.Join(t.TempDir(), "spool")
	env := gatewayEnv(t, idp, "nats://"+natsAddr)
	env["GATEWAY_SPOOL_DIR"] = dir
	logs, stop := startRun(t, env, http.StatusOK)

	client := &http.Client{Timeout: 10 * time.Second}
	_, body := fetch(client, "http://"+env["GATEWAY_ADMIN_ADDR"]+"/readyz")
	if !strings.Contains(body, `"nats":"down, spooling"`) || !strings.Contains(body, `"status":"degraded"`) {
		t.Errorf("/readyz with NATS down and a spool = %s", body)
	}
	if status, page := signIn(t, env["GATEWAY_PUBLIC_URL"]); status != http.StatusOK || !strings.Contains(page, "Signed in as") {
		t.Fatalf("sign-in with NATS down = %d:\n%s\n%s", status, page, logs)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var spooled []string
	for _, e := range entries {
		if !e.IsDir() {
			spooled = append(spooled, e.Name())
		}
	}
	if len(spooled) != 1 {
		t.Fatalf("spool holds %v, want one event", spooled)
	}
	_, metrics := fetch(client, "http://"+env["GATEWAY_ADMIN_ADDR"]+"/metrics")
	for _, want := range []string{"doorbell_gateway_spool_depth 1", "doorbell_gateway_events_spooled_total 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	_, port, _ := net.SplitHostPort(natsAddr)
	n, _ := strconv.Atoi(port)
	ns := natstest.RunOn(t, n)
	deadline, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		if entries, err := os.ReadDir(dir); err == nil && len(entries) == 1 { // only bad/
			break
		}
		select {
		case <-deadline.Done():
			t.Fatalf("spool not drained after NATS came up\n%s", logs)
		case <-time.After(50 * time.Millisecond):
		}
	}
	msgs := streamEvents(t, ns.ClientURL())
	if len(msgs) != 1 || msgs[0].Header.Get("Nats-Msg-Id") != strings.SplitN(strings.TrimSuffix(spooled[0], ".msg"), "-", 2)[1] {
		t.Errorf("stream holds %d events; want the spooled one", len(msgs))
	}
	if err := stop(); err != nil {
		t.Fatalf("run after cancel = %v", err)
	}
	mustLog(t, logs.String(), "spool on", "event spooled to disk", "spooled event published", "msg=login")
}

// TestRunOnANATSClusterKeepsEventsOnThreeServers: a new user's first
// start, with default settings, against a three-node JetStream cluster
// makes AUTH_EVENTS with three replicas and says so, so losing one server
// loses no sign-ins.
func TestRunOnANATSClusterKeepsEventsOnThreeServers(t *testing.T) {
	idp := startIDP(t)
	cluster := natstest.StartCluster(t, 3)
	env := gatewayEnv(t, idp, cluster.URL())
	logs, stop := startRun(t, env, http.StatusOK)
	if status, page := signIn(t, env["GATEWAY_PUBLIC_URL"]); status != http.StatusOK || !strings.Contains(page, "Signed in as") {
		t.Fatalf("sign-in = %d:\n%s", status, page)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if n := authEvents(ctx, t, cluster.URL()).CachedInfo().Config.Replicas; n != 3 {
		t.Errorf("AUTH_EVENTS has %d replicas, want 3", n)
	}
	if err := stop(); err != nil {
		t.Fatalf("run after cancel = %v", err)
	}
	mustLog(t, logs.String(), `msg="stream created"`, "replicas=3 replicas_setting=auto")
}

// TestRunExportsSpansWhenAsked: with OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set,
// a sign-in's spans reach the collector, under service.name auth-gateway,
// in the trace whose traceparent the published event carries.
func TestRunExportsSpansWhenAsked(t *testing.T) {
	var mu sync.Mutex
	var exported []*collectortrace.ExportTraceServiceRequest
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		var req collectortrace.ExportTraceServiceRequest
		if err != nil || r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
			http.Error(w, "bad export", http.StatusBadRequest)
			return
		}
		mu.Lock()
		exported = append(exported, &req)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(nil)
	}))
	defer collector.Close()
	// The exporter reads its endpoint from the process environment.
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.URL+"/v1/traces")
	t.Setenv("OTEL_SERVICE_NAME", "")
	t.Setenv("OTEL_TRACES_SAMPLER", "")

	idp := startIDP(t)
	ns := natstest.Run(t)
	env := gatewayEnv(t, idp, ns.ClientURL())
	env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = collector.URL + "/v1/traces"
	logs, stop := startRun(t, env, http.StatusOK)
	if status, page := signIn(t, env["GATEWAY_PUBLIC_URL"]); status != http.StatusOK || !strings.Contains(page, "Signed in as") {
		t.Fatalf("sign-in = %d:\n%s", status, page)
	}
	if err := stop(); err != nil { // flushes the spans
		t.Fatalf("run after cancel = %v", err)
	}
	mustLog(t, logs.String(), "tracing on")

	msgs := streamEvents(t, ns.ClientURL())
	if len(msgs) != 1 {
		t.Fatalf("%d events, want 1", len(msgs))
	}
	traceID, err := hex.DecodeString(strings.Split(msgs[0].Header.Get("traceparent"), "-")[1])
	if err != nil {
		t.Fatalf("traceparent %q: %v", msgs[0].Header.Get("traceparent"), err)
	}
	mu.Lock()
	defer mu.Unlock()
	names := map[string]bool{}
	for _, req := range exported {
		for _, rs := range req.GetResourceSpans() {
			service := ""
			for _, a := range rs.GetResource().GetAttributes() {
				if a.GetKey() == "service.name" {
					service = a.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					if service != "auth-gateway" {
						t.Errorf("span %s from service %q", s.GetName(), service)
					}
					if bytes.Equal(s.GetTraceId(), traceID) {
						names[s.GetName()] = true
					}
				}
			}
		}
	}
	for _, want := range []string{"login.callback", "oauth2.exchange", "oidc.verify", "publish user.authenticated"} {
		if !names[want] {
			t.Errorf("collector got no %s span in the event's trace; got %v", want, names)
		}
	}
}

func mustLog(t *testing.T, logs string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(logs, w) {
			t.Errorf("log lacks %q:\n%s", w, logs)
		}
	}
}
