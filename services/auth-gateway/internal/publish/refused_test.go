package publish_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/doorbell/doorbell/platform/natstest"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/publish"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/spool"
)

// bigEvent is an event of about 3 KB.
func bigEvent(id string) *eventsv1.UserAuthenticated {
	ev := event(id)
	ev.Name = strings.Repeat("N", 3000)
	return ev
}

// TestEventsJetStreamRefusesForGoodAreSetAside: a spooled event JetStream
// will never store goes to bad/ with a log line saying why, and the events
// behind it still go out; a sign-in's event it refuses for good is not
// spooled at all.
func TestEventsJetStreamRefusesForGoodAreSetAside(t *testing.T) {
	const (
		big   = "0190f0c2-0000-7000-8000-000000000801"
		small = "0190f0c2-0000-7000-8000-000000000802"
	)
	operatorStream := func(cfg jetstream.StreamConfig) func(t *testing.T) string {
		return func(t *testing.T) string {
			srv := natstest.Run(t)
			cfg.Name = eventsv1.StreamAuthEvents
			if _, err := inspector(t, srv.ClientURL()).CreateStream(testCtx(t), cfg); err != nil {
				t.Fatal(err)
			}
			return srv.ClientURL()
		}
	}
	tests := []struct {
		name string
		// start runs the NATS the case needs and returns the URL to use.
		start         func(t *testing.T) string
		wantPublished []string
		wantReason    string
		// live says whether a sign-in's publish of the big event is
		// refused rather than spooled.
		live bool
	}{
		{
			name:          "larger than the stream's largest message",
			start:         operatorStream(jetstream.StreamConfig{Subjects: []string{"user.>"}, MaxMsgSize: 1024}),
			wantPublished: []string{small},
			wantReason:    "exceeds maximum",
			live:          true,
		},
		{
			name:       "no stream captures the subject",
			start:      operatorStream(jetstream.StreamConfig{Subjects: []string{"user.created"}}),
			wantReason: "no stream captures user.authenticated",
		},
		{
			name: "publish permission denied",
			start: func(t *testing.T) string {
				srv := natstest.RunWith(t, func(o *server.Options) {
					o.Users = []*server.User{{Username: "gateway", Password: "gateway-pw", Permissions: &server.Permissions{
						Publish:   &server.SubjectPermission{Allow: []string{">"}, Deny: []string{eventsv1.SubjectUserAuthenticated}},
						Subscribe: &server.SubjectPermission{Allow: []string{">"}},
					}}}
				})
				return strings.Replace(srv.ClientURL(), "nats://", "nats://gateway:gateway-pw@", 1)
			},
			wantReason: "permission",
			live:       true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			dir := t.TempDir()
			// Spooled while NATS was unreachable: the big event first.
			down := newHarness(t, "nats://"+freeAddr(t), func(c *publish.Config) {
				c.Spool = openSpool(t, dir, 10, &syncBuffer{})
				c.Timeout = 100 * time.Millisecond
			})
			for _, ev := range []*eventsv1.UserAuthenticated{bigEvent(big), event(small)} {
				if ack, err := down.pub.Publish(ctx, ev); err != nil || !ack.Spooled {
					t.Fatalf("Publish %s with NATS down = %+v, %v; want spooled", ev.EventId, ack, err)
				}
			}
			closeCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := down.pub.Close(closeCtx); err != nil {
				t.Fatal(err)
			}

			url := tt.start(t)
			logs := &syncBuffer{}
			sp := openSpool(t, dir, 10, logs)
			h := newHarness(t, url, func(c *publish.Config) {
				c.Spool = sp
				c.Timeout = time.Second
			})
			h.run(t)
			waitFor(ctx, t, "the spool to be empty and what JetStream refuses to be in bad/", func() bool {
				return sp.Len() == 0 && len(spoolFiles(t, filepath.Join(dir, spool.BadDir))) == 2-len(tt.wantPublished)
			})
			if got := eventIDs(t, streamMessages(ctx, t, inspector(t, url))); !slices.Equal(got, tt.wantPublished) {
				t.Errorf("stream holds %v, want %v", got, tt.wantPublished)
			}
			bad := spoolFiles(t, filepath.Join(dir, spool.BadDir))
			if !slices.ContainsFunc(bad, func(n string) bool { return strings.Contains(n, big) }) {
				t.Errorf("bad/ holds %v, want the big event", bad)
			}
			mustContain(t, h.logs.String()+logs.String(), "refused for good", tt.wantReason)
			if v := gauge(t, h.reg, "doorbell_gateway_spool_set_aside_files"); v != float64(len(bad)) {
				t.Errorf("spool_set_aside_files = %v, want %d: an operator must see them", v, len(bad))
			}

			if !tt.live {
				return
			}
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			ack, err := h.pub.Publish(pctx, bigEvent("0190f0c2-0000-7000-8000-000000000803"))
			if !errors.Is(err, publish.ErrRefused) || ack.Spooled || sp.Len() != 0 {
				t.Errorf("a sign-in's publish JetStream refuses = %+v, %v (spool %d); want ErrRefused and nothing spooled", ack, err, sp.Len())
			}
		})
	}
}

// A server that comes back without AUTH_EVENTS (it lost its store, the
// cluster was rebuilt) has not refused the spooled events for good: the
// gateway makes the stream again and every one of them is published,
// none set aside.
func TestSpooledEventsSurviveAServerThatLostTheStream(t *testing.T) {
	addr, dir := freeAddr(t), t.TempDir()
	srv := natstest.RunOn(t, portOf(t, addr))
	sp := openSpool(t, dir, 10, &syncBuffer{})
	h := newHarness(t, srv.ClientURL(), withSpool(sp), func(c *publish.Config) { c.Timeout = 2 * time.Second })
	ctx := testCtx(t)
	waitConnected(ctx, t, h)
	if ack, err := h.pub.Publish(ctx, event("0190f0c2-0000-7000-8000-000000000901")); err != nil || ack.Spooled {
		t.Fatalf("publish while NATS is up: %+v, %v", ack, err)
	}
	srv.Shutdown()
	srv.WaitForShutdown()
	waitNotConnected(ctx, t, h.pub)
	spooled := []string{"0190f0c2-0000-7000-8000-000000000902", "0190f0c2-0000-7000-8000-000000000903"}
	for _, id := range spooled {
		if ack, err := h.pub.Publish(ctx, event(id)); err != nil || !ack.Spooled {
			t.Fatalf("publish %s while NATS is down: %+v, %v", id, ack, err)
		}
	}

	srv = natstest.RunOn(t, portOf(t, addr)) // a fresh store: no AUTH_EVENTS
	h.run(t)
	waitFor(ctx, t, "the spool drains", func() bool { return sp.Len() == 0 })
	if bad, _ := os.ReadDir(filepath.Join(dir, spool.BadDir)); len(bad) != 0 {
		t.Errorf("%d spooled events set aside, want none:\n%s", len(bad), h.logs.String())
	}
	if got := eventIDs(t, streamMessages(ctx, t, inspector(t, srv.ClientURL()))); !reflect.DeepEqual(got, spooled) {
		t.Errorf("the new stream holds %v, want %v", got, spooled)
	}
}
