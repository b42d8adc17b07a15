package login_test

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/doorbell/doorbell/platform/natstest"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/login"
)

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
