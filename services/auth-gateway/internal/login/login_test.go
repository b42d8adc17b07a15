package login_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

const expiredPage = "This sign-in link has expired or was already used. Start again."

func alice() *testUser {
	return &testUser{sub: "alice-1", idClaims: map[string]any{
		"email": "alice@example.com", "email_verified": true, "name": "Alice <Admin>", "locale": "en-GB",
	}}
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

func TestLogoutEndsTheSession(t *testing.T) {
	g := newGateway(t)
	b := g.browser()
	if resp := b.finish(b.begin(""), nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in failed: %d %s", resp.StatusCode, resp.body)
	}
	if me := b.get("/me"); me.StatusCode != http.StatusOK {
		t.Fatalf("/me before logout = %d", me.StatusCode)
	}
	// The sign-out button on the start page carries the form's token.
	home := b.get("/")
	mustContain(t, "home page", home.body, `action="/logout"`, `method="post"`, `name="csrf"`)
	out := b.postForm("/logout", url.Values{"csrf": {csrfField(t, home.body)}},
		map[string]string{"Origin": g.url.String(), "Sec-Fetch-Site": "same-origin"})
	if out.StatusCode != http.StatusSeeOther || out.Header.Get("Location") != "/" {
		t.Errorf("logout = %d to %q, want 303 to /", out.StatusCode, out.Header.Get("Location"))
	}
	me := b.get("/me")
	if me.StatusCode != http.StatusUnauthorized {
		t.Fatalf("/me after logout = %d %s", me.StatusCode, me.body)
	}
	var e map[string]string
	if err := json.Unmarshal([]byte(me.body), &e); err != nil || e["error"] != "not_signed_in" || e["message"] == "" {
		t.Errorf("/me body = %s", me.body)
	}
	mustContain(t, "home page", b.get("/").body, `href="/login"`, "Sign in")
	if v := g.counter("doorbell_gateway_logouts_total", map[string]string{"result": "success"}); v != 1 {
		t.Errorf("logouts_total{success} = %v", v)
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
