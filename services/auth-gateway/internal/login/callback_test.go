package login_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/doorbell/doorbell/platform/natstest"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/login"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oauth2-proxy/mockoidc"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
)

func TestProviderReportedErrors(t *testing.T) {
	tests := []struct {
		name       string
		errorCode  string
		accept     string
		wantStatus int
		wantResult string
		wantIn     []string
		wantNotIn  []string
	}{
		{
			name: "person declined", errorCode: "access_denied",
			wantStatus: http.StatusForbidden, wantResult: "access_denied",
			wantIn: []string{"You declined", `href="/"`},
		},
		{
			name: "person declined, asked by a machine", errorCode: "access_denied", accept: "application/json",
			wantStatus: http.StatusForbidden, wantResult: "access_denied",
			wantIn: []string{`"error":"access_denied"`, `"message":"You declined`},
		},
		{
			name: "provider failure shows its code", errorCode: "temporarily_unavailable",
			wantStatus: http.StatusBadRequest, wantResult: "provider_error",
			wantIn: []string{"temporarily_unavailable", `href="/"`},
		},
		{
			name: "provider error code is escaped", errorCode: `<script>alert(1)</script>`,
			wantStatus: http.StatusBadRequest, wantResult: "provider_error",
			wantIn:    []string{"&lt;script&gt;alert(1)&lt;/script&gt;"},
			wantNotIn: []string{"<script>"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGateway(t)
			b := g.browser()
			cb := b.begin("")
			state := cb.Query().Get("state")
			errURL := *cb
			errURL.RawQuery = url.Values{"error": {tt.errorCode}, "state": {state}}.Encode()

			resp := b.finish(&errURL, map[string]string{"Accept": tt.accept})
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status = %d, want %d", resp.StatusCode, tt.wantStatus)
			}
			mustContain(t, "response", resp.body, tt.wantIn...)
			for _, s := range tt.wantNotIn {
				if strings.Contains(resp.body, s) {
					t.Errorf("response contains %q", s)
				}
			}
			if b.cookie("/auth/callback", "doorbell_login_"+state[:16]) != "" {
				t.Error("attempt cookie not deleted")
			}
			if g.tokenCallCount() != 0 || len(g.events()) != 0 || setCookie(resp, "doorbell_session") != nil {
				t.Error("a refused sign-in redeemed the code, published or started a session")
			}
			if v := g.logins(tt.wantResult); v != 1 {
				t.Errorf("logins_total{%s} = %v", tt.wantResult, v)
			}
		})
	}
}

func TestNATSDownMeansNoSession(t *testing.T) {
	g := newGateway(t)
	b := g.browser()
	cb := b.begin("")
	g.nats.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	waitNotConnected(ctx, t, g.pub)

	resp := b.finish(cb, nil)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status = %d, want 503: %s", resp.StatusCode, resp.body)
	}
	mustContain(t, "page", resp.body, "We could not finish signing you in. Please try again in a moment.", `href="/"`)
	if setCookie(resp, "doorbell_session") != nil {
		t.Fatal("session cookie set although the event was not published")
	}
	if me := b.get("/me"); me.StatusCode != http.StatusUnauthorized {
		t.Errorf("/me = %d, want 401", me.StatusCode)
	}
	if v := g.logins("publish_failed"); v != 1 {
		t.Errorf("logins_total{publish_failed} = %v", v)
	}
	if v := g.counter("doorbell_gateway_events_publish_failures_total", nil); v != 1 {
		t.Errorf("events_publish_failures_total = %v", v)
	}
	mustContain(t, "log", g.logs.String(), "reason=publish_failed")
}

func TestSeveralTabsCanSignInAtOnce(t *testing.T) {
	g := newGateway(t)
	b := g.browser()
	first := b.begin("/one")
	second := b.begin("/two")

	for _, step := range []struct {
		cb   *url.URL
		want string
	}{{second, "/two"}, {first, "/one"}} {
		resp := b.finish(step.cb, nil)
		if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != step.want {
			t.Fatalf("callback = %d to %q, want 302 to %s: %s",
				resp.StatusCode, resp.Header.Get("Location"), step.want, resp.body)
		}
	}
	events := g.events()
	if len(events) != 2 {
		t.Fatalf("%d events, want 2", len(events))
	}
	a, c := decodeEvent(t, events[0]), decodeEvent(t, events[1])
	if a.EventId == c.EventId {
		t.Error("both sign-ins got the same event id")
	}
	if a.Client.DeviceId != c.Client.DeviceId {
		t.Error("the same browser got two device ids")
	}
	if v := g.logins("success"); v != 2 {
		t.Errorf("logins_total{success} = %v", v)
	}
}

// TestMixUpBetweenProviders: an answer carrying one provider's iss for an
// attempt that went to another is refused before the code is redeemed.
func TestMixUpBetweenProviders(t *testing.T) {
	gh := newFakeGitHub(t)
	g := newGateway(t, withExtraProviders(gh.provider("github")))
	b := g.browser()
	// The browser went to GitHub, which sent it back to the callback.
	resp := b.get("/login?provider=github")
	callback, err := resp.Location()
	if err != nil || callback.Path != "/auth/callback/github" {
		t.Fatalf("GitHub did not redirect back: %d %s", resp.StatusCode, resp.body)
	}
	out := b.finish(withQuery(callback, "iss", g.idp.Issuer()), nil)
	assertRefused(t, g, out, http.StatusBadRequest, "github", "issuer_mismatch", "did not come from the identity provider we asked")
	if gh.tokenCalls.Load() != 0 {
		t.Error("the code was redeemed")
	}
}

func TestCodeReplay(t *testing.T) {
	h := newHostileIdP(t)
	g := hostileGateway(t, h)
	b := g.browser()
	cb := b.begin("")
	state := cb.Query().Get("state")
	attemptName := "doorbell_login_" + state[:16]
	copied := b.cookie("/auth/callback", attemptName)
	if resp := b.finish(cb, nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in = %d: %s", resp.StatusCode, resp.body)
	}

	// The same browser again: the attempt cookie is gone.
	again := b.finish(cb, nil)
	if again.StatusCode != http.StatusBadRequest || !strings.Contains(again.body, expiredPage) {
		t.Errorf("replay in the browser = %d, want 400 with the expired page", again.StatusCode)
	}
	// Someone who copied the attempt cookie: this replica remembers the
	// state as spent.
	replay := func(target string) response {
		req, _ := http.NewRequest(http.MethodGet, target+"/auth/callback?"+cb.RawQuery, nil)
		req.AddCookie(&http.Cookie{Name: attemptName, Value: copied})
		return fetch(t, req)
	}
	copiedHere := replay(g.url.String())
	if copiedHere.StatusCode != http.StatusBadRequest || !strings.Contains(copiedHere.body, expiredPage) {
		t.Errorf("replay with a copied cookie = %d, want 400", copiedHere.StatusCode)
	}
	if n := h.tokenCalls.Load(); n != 1 {
		t.Errorf("token endpoint called %d times, want 1: a replay must not reach it", n)
	}
	// Another replica does not share that memory, so the code reaches the
	// provider, which refuses it: no second sign-in either way.
	other := g.replica(nil)
	elsewhere := replay(other.url)
	if elsewhere.StatusCode != http.StatusBadGateway {
		t.Errorf("replay at another replica = %d, want 502: %s", elsewhere.StatusCode, elsewhere.body)
	}
	if h.refused.Load() != 1 {
		t.Errorf("provider refused %d codes, want 1", h.refused.Load())
	}
	if v := other.reg.value(t, "doorbell_gateway_logins_total", map[string]string{"provider": "hostile", "result": "exchange_failed"}); v != 1 {
		t.Errorf("replica logins_total{exchange_failed} = %v", v)
	}
	if v := g.loginsFor("hostile", "state_invalid"); v != 2 {
		t.Errorf("logins_total{state_invalid} = %v, want 2", v)
	}
	if n := len(g.events()); n != 1 {
		t.Errorf("%d events, want 1", n)
	}
}

// TestALongNameIsCutInTheEventAsInTheSession: the display name is the
// provider's to choose; a huge one must not make the event too large for
// JetStream (which would then refuse it, or stall the spool).
func TestALongNameIsCutInTheEventAsInTheSession(t *testing.T) {
	h := newHostileIdP(t)
	long := strings.Repeat("é", 40_000) // 80 KB
	h.set(func(h *hostileIdP) { h.claims = func(c map[string]any) { c["name"] = long } })
	g := hostileGateway(t, h)
	b := g.browser()
	if resp := b.finish(b.begin(""), nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in = %d %s", resp.StatusCode, resp.body)
	}
	name := decodeEvent(t, g.events()[0]).GetName()
	if len(name) > 256 || !utf8.ValidString(name) || !strings.HasPrefix(long, name) {
		t.Errorf("event name has %d bytes (valid UTF-8: %v), want the first at most 256 bytes of the name", len(name), utf8.ValidString(name))
	}
	var who map[string]string
	if err := json.Unmarshal([]byte(b.get("/me").body), &who); err != nil || who["name"] != name {
		t.Errorf("session name differs from the event's (%d vs %d bytes)", len(who["name"]), len(name))
	}
}

func TestSuccessfulSignInPublishesOneEventAndStartsASession(t *testing.T) {
	g := newGateway(t)
	g.idp.QueueUser(alice())
	b := g.browser()

	callback := b.begin("/welcome?tab=2")
	if b.cookie("/auth/callback", "doorbell_login_"+callback.Query().Get("state")[:16]) == "" {
		t.Fatal("no attempt cookie named from the state")
	}
	before := time.Now()
	resp := b.finish(callback, nil)
	after := time.Now()

	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/welcome?tab=2" {
		t.Fatalf("callback = %d Location %q, want 302 to the return path; body %s",
			resp.StatusCode, resp.Header.Get("Location"), resp.body)
	}
	sc := setCookie(resp, "doorbell_session")
	if sc == nil || sc.Value == "" {
		t.Fatal("no session cookie")
	}
	if !sc.HttpOnly || sc.SameSite != http.SameSiteLaxMode || sc.Path != "/" || sc.MaxAge != 12*3600 || sc.Secure {
		t.Errorf("session cookie attributes = %+v", sc)
	}
	if att := setCookie(resp, "doorbell_login_"+callback.Query().Get("state")[:16]); att == nil || att.MaxAge >= 0 {
		t.Errorf("attempt cookie not deleted: %+v", att)
	}

	// Exactly one event, with the contract's fields and headers.
	msgs := g.events()
	if len(msgs) != 1 {
		t.Fatalf("%d events published, want 1", len(msgs))
	}
	ev := decodeEvent(t, msgs[0])
	id, err := uuid.Parse(ev.EventId)
	if err != nil || id.Version() != 7 {
		t.Errorf("event_id %q is not a UUIDv7", ev.EventId)
	}
	deviceCookie := b.cookie("/", "doorbell_device")
	if deviceCookie == "" {
		t.Fatal("no device cookie")
	}
	deviceKey, err := g.sealer.DeriveKey("device id")
	if err != nil {
		t.Fatal(err)
	}
	mac := hmac.New(sha256.New, deviceKey)
	mac.Write([]byte(deviceCookie))
	want := &eventsv1.UserAuthenticated{
		EventId:         ev.EventId,
		AuthenticatedAt: ev.AuthenticatedAt,
		Issuer:          g.idp.Issuer(),
		Subject:         "alice-1",
		Provider:        providerID,
		Email:           "alice@example.com",
		Name:            "Alice <Admin>",
		Locale:          "en-GB",
		Client: &eventsv1.Client{
			Ip: "127.0.0.1", UserAgent: "Mozilla/5.0 (DoorbellTest)", DeviceId: hex.EncodeToString(mac.Sum(nil)),
			AcceptLanguage: "ko-KR,ko;q=0.9,en;q=0.8",
		},
	}
	if !proto.Equal(ev, want) {
		t.Errorf("event =\n%v\nwant\n%v", prototext.Format(ev), prototext.Format(want))
	}
	at := ev.AuthenticatedAt.AsTime()
	if at.Before(before.Add(-time.Second)) || at.After(after.Add(time.Second)) {
		t.Errorf("authenticated_at %v not during the callback (%v..%v)", at, before, after)
	}
	for k, v := range map[string]string{
		"Nats-Msg-Id": ev.EventId, "ce-id": ev.EventId, "Content-Type": "application/protobuf",
		"ce-specversion": "1.0", "ce-type": "doorbell.events.v1.UserAuthenticated", "ce-source": g.url.String(),
	} {
		if got := msgs[0].Header.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}

	// The session is visible on /, escaped, and on /me.
	home := b.get("/")
	mustContain(t, "home page", home.body, "Signed in as", "Alice &lt;Admin&gt;", "alice@example.com",
		`action="/logout"`)
	if strings.Contains(home.body, "<Admin>") {
		t.Error("home page shows the name unescaped")
	}
	me := b.get("/me")
	var who map[string]string
	if err := json.Unmarshal([]byte(me.body), &who); err != nil || me.StatusCode != http.StatusOK {
		t.Fatalf("/me = %d %s", me.StatusCode, me.body)
	}
	wantWho := map[string]string{"email": "alice@example.com", "name": "Alice <Admin>",
		"issuer": g.idp.Issuer(), "subject": "alice-1", "provider": providerID}
	if mustJSON(t, who) != mustJSON(t, wantWho) {
		t.Errorf("/me = %v, want %v", who, wantWho)
	}

	// Metrics moved.
	if v := g.logins("success"); v != 1 {
		t.Errorf("logins_total{success} = %v", v)
	}
	if v := g.counter("doorbell_gateway_login_started_total", map[string]string{"provider": providerID}); v != 1 {
		t.Errorf("login_started_total = %v", v)
	}
	if v := g.counter("doorbell_gateway_callback_duration_seconds", map[string]string{"provider": providerID}); v != 1 {
		t.Errorf("callback_duration_seconds count = %v", v)
	}

	// Replaying the callback is refused and redeems nothing.
	calls := g.tokenCallCount()
	replay := b.finish(callback, nil)
	if replay.StatusCode != http.StatusBadRequest || !strings.Contains(replay.body, expiredPage) {
		t.Errorf("replayed callback = %d, want 400 with the expired page", replay.StatusCode)
	}
	if g.tokenCallCount() != calls || len(g.events()) != 1 {
		t.Error("replayed callback reached the token endpoint or published")
	}
}

func TestCallbackRefusesBadStateBeforeRedeemingTheCode(t *testing.T) {
	tests := []struct {
		name string
		// tamper turns a good callback URL into the one to visit; it may
		// also change the browser.
		tamper func(g *gateway, b *browser, cb *url.URL) (*browser, *url.URL)
	}{
		{
			name: "state missing",
			tamper: func(_ *gateway, b *browser, cb *url.URL) (*browser, *url.URL) {
				return b, withQuery(cb, "state", "")
			},
		},
		{
			name: "forged state with no attempt cookie",
			tamper: func(_ *gateway, b *browser, cb *url.URL) (*browser, *url.URL) {
				return b, withQuery(cb, "state", strings.Repeat("A", 43))
			},
		},
		{
			name: "state that shares the cookie's name but not its value",
			tamper: func(_ *gateway, b *browser, cb *url.URL) (*browser, *url.URL) {
				s := cb.Query().Get("state")
				return b, withQuery(cb, "state", s[:16]+strings.Repeat("x", len(s)-16))
			},
		},
		{
			name: "callback opened in another browser",
			tamper: func(g *gateway, _ *browser, cb *url.URL) (*browser, *url.URL) {
				return g.browser(), cb
			},
		},
		{
			name: "attempt cookie tampered with",
			tamper: func(g *gateway, b *browser, cb *url.URL) (*browser, *url.URL) {
				name := "doorbell_login_" + cb.Query().Get("state")[:16]
				v := b.cookie("/auth/callback", name)
				forged := v[:len(v)-4] + "AAAA"
				if forged == v {
					forged = v[:len(v)-4] + "BBBB"
				}
				b.jar.SetCookies(g.url.ResolveReference(&url.URL{Path: "/"}),
					[]*http.Cookie{{Name: name, Value: forged, Path: "/"}})
				return b, cb
			},
		},
		{
			name: "attempt older than ten minutes",
			tamper: func(g *gateway, b *browser, cb *url.URL) (*browser, *url.URL) {
				g.clock.advance(10*time.Minute + time.Second)
				return b, cb
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGateway(t)
			first := g.browser()
			good := first.begin("")
			b, cb := tt.tamper(g, first, good)
			state := cb.Query().Get("state")
			attemptName := ""
			if len(state) >= 16 && b.cookie("/auth/callback", "doorbell_login_"+state[:16]) != "" {
				attemptName = "doorbell_login_" + state[:16]
			}
			resp := b.finish(cb, nil)

			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("status = %d, want 400", resp.StatusCode)
			}
			mustContain(t, "page", resp.body, expiredPage, `href="/"`)
			if n := g.tokenCallCount(); n != 0 {
				t.Errorf("token endpoint called %d times; the code must not be redeemed", n)
			}
			if n := len(g.events()); n != 0 {
				t.Errorf("%d events published", n)
			}
			if setCookie(resp, "doorbell_session") != nil {
				t.Error("session cookie set")
			}
			if v := g.logins("state_invalid"); v != 1 {
				t.Errorf("logins_total{state_invalid} = %v", v)
			}
			mustContain(t, "log", g.logs.String(), "reason=state_invalid")
			// The attempt the browser sent is spent.
			if attemptName != "" && b.cookie("/auth/callback", attemptName) != "" {
				t.Errorf("attempt cookie %s not deleted", attemptName)
			}
		})
	}
}

// loginLines returns the log lines of "login" records.
func loginLines(logs string) []string {
	var out []string
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, " msg=login ") {
			out = append(out, line)
		}
	}
	return out
}

func TestEachCallbackLogsOneLoginLine(t *testing.T) {
	g := newGateway(t)
	g.idp.QueueUser(alice())
	b := g.browser()
	if resp := b.finish(b.begin(""), nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in: %d", resp.StatusCode)
	}
	if resp := b.finish(withQuery(b.begin(""), "code", "bogus-code-for-the-log"), nil); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("bogus code: %d", resp.StatusCode)
	}
	ev := decodeEvent(t, g.events()[0])

	lines := loginLines(g.logs.String())
	if len(lines) != 2 {
		t.Fatalf("%d login lines for two callbacks, want 2:\n%s", len(lines), g.logs)
	}
	mustContain(t, "success line", lines[0], "level=INFO", "provider="+providerID, "result=success",
		"event_id="+ev.EventId, "duration=")
	mustContain(t, "failure line", lines[1], "level=INFO", "provider="+providerID, "result=exchange_failed", "duration=")
	if strings.Contains(lines[1], "event_id=") {
		t.Errorf("a sign-in that never built an event names one: %s", lines[1])
	}
	for _, line := range lines {
		if strings.Contains(line, "email") || strings.Contains(line, "@example.com") {
			t.Errorf("login line shows an email address by default: %s", line)
		}
	}
}

func TestLogEmailsPutsTheAddressInTheLoginLineOnly(t *testing.T) {
	g := newGateway(t, withConfig(func(c *login.Config) { c.LogEmails = true }))
	g.idp.QueueUser(alice())
	b := g.browser()
	if resp := b.finish(b.begin(""), nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in: %d", resp.StatusCode)
	}
	logs := g.logs.String()
	lines := loginLines(logs)
	if len(lines) != 1 || !strings.Contains(lines[0], "email=alice@example.com") {
		t.Fatalf("login lines = %q, want one with the email", lines)
	}
	if n := strings.Count(logs, "alice@example.com"); n != 1 {
		t.Errorf("the address appears %d times in the log, want only in the login line:\n%s", n, logs)
	}
}

// TestNATSDownWithASpoolStillSignsIn: with a spool the person is signed in
// while NATS is down, and the event reaches the stream once NATS is back.
func TestNATSDownWithASpoolStillSignsIn(t *testing.T) {
	g := newGateway(t, withSpool(100))
	g.idp.QueueUser(alice())
	b := g.browser()
	cb := b.begin("")
	port := g.nats.Addr().(*net.TCPAddr).Port
	g.nats.Shutdown()
	g.nats.WaitForShutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	waitNotConnected(ctx, t, g.pub)

	resp := b.finish(cb, nil)
	if resp.StatusCode != http.StatusFound || setCookie(resp, "doorbell_session") == nil {
		t.Fatalf("sign-in with NATS down and a spool = %d (session %v), want 302 with a session: %s",
			resp.StatusCode, setCookie(resp, "doorbell_session") != nil, resp.body)
	}
	if me := b.get("/me"); me.StatusCode != http.StatusOK {
		t.Errorf("/me = %d", me.StatusCode)
	}
	if v := g.logins("success"); v != 1 {
		t.Errorf("logins_total{success} = %v", v)
	}
	if v := g.counter("doorbell_gateway_events_spooled_total", nil); v != 1 {
		t.Errorf("events_spooled_total = %v", v)
	}
	lines := loginLines(g.logs.String())
	if len(lines) != 1 || !strings.Contains(lines[0], "spooled=true") {
		t.Fatalf("login lines = %q, want one saying the event was spooled", lines)
	}
	eventID := lines[0][strings.Index(lines[0], "event_id=")+len("event_id="):][:36]

	srv := natstest.RunOn(t, port)
	for g.spool.Len() > 0 {
		select {
		case <-ctx.Done():
			t.Fatal("the spool did not drain after NATS came back")
		case <-time.After(20 * time.Millisecond):
		}
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, eventsv1.StreamAuthEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d events, want 1", info.State.Msgs)
	}
	m, err := s.GetMsg(ctx, info.State.FirstSeq)
	if err != nil {
		t.Fatal(err)
	}
	if ev := decodeEvent(t, m); ev.EventId != eventID || ev.Email != "alice@example.com" {
		t.Errorf("stream holds event %s for %s, want %s", ev.EventId, ev.Email, eventID)
	}
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

// spanNamed returns the only span called name, failing otherwise.
func spanNamed(t *testing.T, spans tracetest.SpanStubs, name string) tracetest.SpanStub {
	t.Helper()
	var found []tracetest.SpanStub
	for _, s := range spans {
		if s.Name == name {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d spans called %q, want 1", len(found), name)
	}
	return found[0]
}

// childrenOf returns the names of the spans whose parent is span, sorted.
func childrenOf(spans tracetest.SpanStubs, span tracetest.SpanStub) []string {
	var names []string
	for _, s := range spans {
		if s.Parent.SpanID() == span.SpanContext.SpanID() && s.Parent.TraceID() == span.SpanContext.TraceID() {
			names = append(names, s.Name)
		}
	}
	slices.Sort(names)
	return names
}

// spanText is everything a span says that goes to a collector.
func spanText(s tracetest.SpanStub) string {
	parts := []string{s.Name, s.Status.Description}
	for _, a := range s.Attributes {
		parts = append(parts, string(a.Key), a.Value.String())
	}
	for _, e := range s.Events {
		parts = append(parts, e.Name)
		for _, a := range e.Attributes {
			parts = append(parts, a.Value.String())
		}
	}
	return strings.Join(parts, "\n")
}

func TestSignInIsTracedFromLoginToTheMessage(t *testing.T) {
	tests := []struct {
		name string
		user mockoidc.User
		// callbackChildren are the spans under the callback span.
		callbackChildren []string
	}{
		{
			name:             "email in the ID token",
			user:             alice(),
			callbackChildren: []string{"oauth2.exchange", "oidc.verify", "publish user.authenticated"},
		},
		{
			name: "email from UserInfo",
			user: &testUser{sub: "u4", userinfo: map[string]any{"email": "alice@example.com", "email_verified": true}},
			callbackChildren: []string{
				"oauth2.exchange", "oidc.userinfo", "oidc.verify", "publish user.authenticated",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGateway(t, withTracing())
			g.idp.QueueUser(tt.user)
			b := g.browser()
			cb := b.begin("")
			resp := b.finish(cb, nil)
			if resp.StatusCode != http.StatusFound {
				t.Fatalf("sign-in: %d %s", resp.StatusCode, resp.body)
			}
			spans := g.spans.GetSpans()

			start := spanNamed(t, spans, "login.start")
			if start.Parent.IsValid() || start.SpanKind != trace.SpanKindServer {
				t.Errorf("login.start: parent %v kind %v, want a root server span", start.Parent.SpanID(), start.SpanKind)
			}
			if got := childrenOf(spans, start); !slices.Equal(got, []string{"oidc.discovery"}) {
				t.Errorf("spans under login.start = %v, want the discovery", got)
			}
			callback := spanNamed(t, spans, "login.callback")
			if callback.Parent.IsValid() || callback.SpanContext.TraceID() == start.SpanContext.TraceID() {
				t.Errorf("login.callback is not the root of its own trace")
			}
			if got := childrenOf(spans, callback); !slices.Equal(got, tt.callbackChildren) {
				t.Errorf("spans under login.callback = %v, want %v", got, tt.callbackChildren)
			}
			msgs := g.events()
			if len(msgs) != 1 {
				t.Fatalf("%d events, want 1", len(msgs))
			}
			ev := decodeEvent(t, msgs[0])
			for _, want := range []attribute.KeyValue{
				attribute.String("doorbell.provider", providerID),
				attribute.String("doorbell.result", "success"),
				attribute.String("doorbell.event_id", ev.EventId),
			} {
				if !slices.Contains(callback.Attributes, want) {
					t.Errorf("login.callback lacks %s=%s: %v", want.Key, want.Value.String(), callback.Attributes)
				}
			}

			// The message continues the callback's trace, under the publish span.
			publish := spanNamed(t, spans, "publish user.authenticated")
			tp := msgs[0].Header.Get("traceparent")
			sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(),
				propagation.MapCarrier{"traceparent": tp}))
			if sc.TraceID() != callback.SpanContext.TraceID() || sc.SpanID() != publish.SpanContext.SpanID() {
				t.Errorf("traceparent %q; want trace %s (the callback's) and parent %s (the publish span)",
					tp, callback.SpanContext.TraceID(), publish.SpanContext.SpanID())
			}

			// Nothing personal or secret goes to the collector.
			secrets := append(g.issuedTokens(), "alice@example.com", cb.Query().Get("code"), cb.Query().Get("state"),
				g.idp.ClientSecret)
			for _, s := range spans {
				text := spanText(s)
				for _, secret := range secrets {
					if secret != "" && strings.Contains(text, secret) {
						t.Errorf("span %s holds a secret or the email %.12q…", s.Name, secret)
					}
				}
			}
		})
	}
}

func TestFailedSignInsAreTracedWithTheirReason(t *testing.T) {
	g := newGateway(t, withTracing())
	b := g.browser()
	resp := b.finish(withQuery(b.begin(""), "code", "bogus-code-for-a-trace"), nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("bogus code: %d", resp.StatusCode)
	}
	spans := g.spans.GetSpans()
	callback := spanNamed(t, spans, "login.callback")
	if !slices.Contains(callback.Attributes, attribute.String("doorbell.result", "exchange_failed")) ||
		callback.Status.Description != "exchange_failed" {
		t.Errorf("callback span: %v, status %v; want result and error exchange_failed", callback.Attributes, callback.Status)
	}
	exchange := spanNamed(t, spans, "oauth2.exchange")
	if exchange.Status.Description != "exchange_failed" {
		t.Errorf("exchange span status %v", exchange.Status)
	}
	if got := childrenOf(spans, callback); slices.Contains(got, "publish user.authenticated") {
		t.Errorf("a failed sign-in published: %v", got)
	}
	for _, s := range spans {
		if strings.Contains(spanText(s), "bogus-code-for-a-trace") {
			t.Errorf("span %s holds the authorization code", s.Name)
		}
	}
}

// TestWithoutTracingNoTraceContextIsPublished: tracing is off by default
// (a no-op provider): the message has no trace headers.
func TestWithoutTracingNoTraceContextIsPublished(t *testing.T) {
	g := newGateway(t)
	g.idp.QueueUser(alice())
	b := g.browser()
	if resp := b.finish(b.begin(""), nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in: %d", resp.StatusCode)
	}
	msgs := g.events()
	if len(msgs) != 1 {
		t.Fatalf("%d events", len(msgs))
	}
	for k := range msgs[0].Header {
		if strings.EqualFold(k, "traceparent") || strings.EqualFold(k, "tracestate") {
			t.Errorf("header %s with tracing off", k)
		}
	}
	if strings.Contains(g.logs.String(), "trace_id=") {
		t.Error("log lines name a trace with tracing off")
	}
}
