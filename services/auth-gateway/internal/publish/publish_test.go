package publish_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/doorbell/doorbell/platform/natstest"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/publish"
)

// syncBuffer is a log sink safe for NATS's callback goroutines.
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

type harness struct {
	pub  *publish.Publisher
	reg  *prometheus.Registry
	logs *syncBuffer
}

// newHarness connects a publisher to url; change, when given, adjusts its
// configuration first.
func newHarness(t testing.TB, url string, change ...func(*publish.Config)) *harness {
	t.Helper()
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()
	cfg := publish.Config{URL: url, Source: "https://login.example.com", Replicas: 1}
	for _, c := range change {
		c(&cfg)
	}
	p, err := publish.Connect(cfg, log, publish.NewMetrics(reg))
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = p.Close(ctx)
	})
	return &harness{pub: p, reg: reg, logs: logs}
}

func inspector(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("inspector connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func event(id string) *eventsv1.UserAuthenticated {
	return &eventsv1.UserAuthenticated{
		EventId:         id,
		AuthenticatedAt: timestamppb.New(time.Date(2026, 5, 1, 12, 0, 0, 123456789, time.UTC)),
		Issuer:          "https://idp.example.com",
		Subject:         "user-1",
		Provider:        "oidc",
		Email:           "alice@example.com",
		Name:            "Alice",
		Locale:          "en",
		Client:          &eventsv1.Client{Ip: "127.0.0.1", UserAgent: "test", DeviceId: "abc"},
	}
}

func TestPublishCreatesTheStreamWhenMissing(t *testing.T) {
	srv := natstest.Run(t)
	h := newHarness(t, srv.ClientURL())
	ctx := testCtx(t)
	waitConnected(ctx, t, h)

	if _, err := h.pub.Publish(ctx, event("0190f0c2-0000-7000-8000-000000000001")); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	s, err := inspector(t, srv.ClientURL()).Stream(ctx, eventsv1.StreamAuthEvents)
	if err != nil {
		t.Fatalf("stream was not created: %v", err)
	}
	got := s.CachedInfo().Config
	want := publish.StreamConfig(1)
	if got.Retention != jetstream.LimitsPolicy || got.Storage != jetstream.FileStorage ||
		got.MaxAge != 7*24*time.Hour || got.Duplicates != 2*time.Minute || got.Replicas != 1 ||
		len(got.Subjects) != 1 || got.Subjects[0] != "user.>" || got.Name != want.Name {
		t.Fatalf("stream config = %+v", got)
	}
	if !strings.Contains(h.logs.String(), "stream created") {
		t.Errorf("no log line for the created stream:\n%s", h.logs)
	}
}

func TestPublishedMessageCarriesTheContract(t *testing.T) {
	srv := natstest.Run(t)
	h := newHarness(t, srv.ClientURL())
	ctx := testCtx(t)
	waitConnected(ctx, t, h)
	ev := event("0190f0c2-0000-7000-8000-000000000002")

	ack, err := h.pub.Publish(ctx, ev)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if ack.Stream != eventsv1.StreamAuthEvents || ack.Sequence != 1 || ack.Duplicate {
		t.Fatalf("ack = %+v", ack)
	}
	s, err := inspector(t, srv.ClientURL()).Stream(ctx, eventsv1.StreamAuthEvents)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := s.GetMsg(ctx, ack.Sequence)
	if err != nil {
		t.Fatalf("GetMsg: %v", err)
	}
	if msg.Subject != "user.authenticated" {
		t.Errorf("subject = %q", msg.Subject)
	}
	wantHeaders := map[string]string{
		"Nats-Msg-Id":    ev.EventId,
		"Content-Type":   "application/protobuf",
		"ce-specversion": "1.0",
		"ce-id":          ev.EventId,
		"ce-source":      "https://login.example.com",
		"ce-type":        "doorbell.events.v1.UserAuthenticated",
		"ce-time":        "2026-05-01T12:00:00.123456789Z",
	}
	for k, want := range wantHeaders {
		if got := msg.Header.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	var got eventsv1.UserAuthenticated
	if err := proto.Unmarshal(msg.Data, &got); err != nil {
		t.Fatalf("body is not a UserAuthenticated: %v", err)
	}
	if !proto.Equal(&got, ev) {
		t.Errorf("body = %v, want %v", &got, ev)
	}
	logs := h.logs.String()
	if !strings.Contains(logs, "event_id="+ev.EventId) || !strings.Contains(logs, "seq=1") {
		t.Errorf("no log line with event id and sequence:\n%s", logs)
	}
	if strings.Contains(logs, ev.Email) {
		t.Errorf("log shows the email:\n%s", logs)
	}
	if v := counter(t, h.reg, "doorbell_gateway_events_published_total"); v != 1 {
		t.Errorf("events_published_total = %v, want 1", v)
	}
}

func TestPublishingTheSameEventTwiceStoresItOnce(t *testing.T) {
	srv := natstest.Run(t)
	h := newHarness(t, srv.ClientURL())
	ctx := testCtx(t)
	waitConnected(ctx, t, h)
	ev := event("0190f0c2-0000-7000-8000-000000000003")

	first, err := h.pub.Publish(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	second, err := h.pub.Publish(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	if first.Duplicate || !second.Duplicate {
		t.Fatalf("duplicate flags = %v, %v; want false, true", first.Duplicate, second.Duplicate)
	}
	s, err := inspector(t, srv.ClientURL()).Stream(ctx, eventsv1.StreamAuthEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d messages, want 1", info.State.Msgs)
	}
}

// TestPublishFailsWhileNATSIsDown: a publish waits for a lost connection
// to come back for Config.Timeout after it went; when it does not, that
// publish and the later ones fail with ErrNotConnected, not by running out
// of their own time.
func TestPublishFailsWhileNATSIsDown(t *testing.T) {
	tests := []struct {
		name string
		// url returns the NATS URL to use and a function that brings it down
		// after Connect.
		url func(t *testing.T) (string, func())
	}{
		{
			name: "server went away after a publish",
			url: func(t *testing.T) (string, func()) {
				srv := natstest.Run(t)
				return srv.ClientURL(), srv.Shutdown
			},
		},
		{
			name: "server never reachable",
			url: func(t *testing.T) (string, func()) {
				return "nats://" + freeAddr(t), func() {}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, down := tt.url(t)
			h := newHarness(t, url, func(c *publish.Config) { c.Timeout = 500 * time.Millisecond })
			ctx := testCtx(t)
			if h.pub.Ready(ctx) == nil {
				if _, err := h.pub.Publish(ctx, event("0190f0c2-0000-7000-8000-00000000000a")); err != nil {
					t.Fatalf("publish while up: %v", err)
				}
			}
			down()
			// Wait until the client noticed; bounded by the test deadline.
			// Each probe is short, so one sent just before the disconnect
			// does not hold up the loop.
			for {
				probe, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
				err := h.pub.Ready(probe)
				cancel()
				if errors.Is(err, publish.ErrNotConnected) {
					break
				}
				select {
				case <-ctx.Done():
					t.Fatalf("publisher did not notice the server went down (last: %v)", err)
				case <-time.After(20 * time.Millisecond):
				}
			}

			for _, id := range []string{"0190f0c2-0000-7000-8000-00000000000b", "0190f0c2-0000-7000-8000-00000000000c"} {
				pubCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
				_, err := h.pub.Publish(pubCtx, event(id))
				if !errors.Is(err, publish.ErrNotConnected) {
					t.Errorf("Publish with NATS down = %v, want ErrNotConnected", err)
				}
				if pubCtx.Err() != nil {
					t.Errorf("Publish used up its whole context instead of giving up Config.Timeout after the disconnect")
				}
				cancel()
			}
			if v := counter(t, h.reg, "doorbell_gateway_events_publish_failures_total"); v != 2 {
				t.Errorf("publish_failures_total = %v, want 2", v)
			}
		})
	}
}

func TestPublisherStartedBeforeNATSPublishesOnceItIsUp(t *testing.T) {
	addr := freeAddr(t)
	h := newHarness(t, "nats://"+addr)
	ctx := testCtx(t)
	if err := h.pub.Ready(ctx); !errors.Is(err, publish.ErrNotConnected) {
		t.Fatalf("Ready before NATS is up = %v, want ErrNotConnected", err)
	}

	_, port, _ := net.SplitHostPort(addr)
	srv := natstest.RunOn(t, mustAtoi(t, port))
	for h.pub.Ready(ctx) != nil {
		select {
		case <-ctx.Done():
			t.Fatalf("publisher never became ready: %v", h.pub.Ready(context.Background()))
		case <-time.After(50 * time.Millisecond):
		}
	}
	if _, err := h.pub.Publish(ctx, event("0190f0c2-0000-7000-8000-00000000000c")); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if _, err := inspector(t, srv.ClientURL()).Stream(ctx, eventsv1.StreamAuthEvents); err != nil {
		t.Fatalf("stream not created lazily: %v", err)
	}
}

func TestExistingStreamIsLeftAlone(t *testing.T) {
	tests := []struct {
		name        string
		subjects    []string
		wantWarn    bool
		wantPublish bool
	}{
		{"operator stream with a narrower filter that still captures", []string{"user.authenticated"}, false, true},
		{"operator stream that does not capture user.authenticated", []string{"user.created", "audit.>"}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := natstest.Run(t)
			ctx := testCtx(t)
			js := inspector(t, srv.ClientURL())
			operator := jetstream.StreamConfig{
				Name: eventsv1.StreamAuthEvents, Subjects: tt.subjects,
				Storage: jetstream.MemoryStorage, MaxAge: time.Hour,
			}
			if _, err := js.CreateStream(ctx, operator); err != nil {
				t.Fatal(err)
			}
			h := newHarness(t, srv.ClientURL())
			waitConnected(ctx, t, h)
			if err := h.pub.EnsureStream(ctx); err != nil {
				t.Fatalf("EnsureStream: %v", err)
			}
			warned := strings.Contains(h.logs.String(), "level=WARN")
			if warned != tt.wantWarn {
				t.Errorf("warned = %v, want %v; logs:\n%s", warned, tt.wantWarn, h.logs)
			}
			// A stream that does not capture the subject has no responders
			// until the publish gives up: keep that wait short.
			wait := 15 * time.Second
			if !tt.wantPublish {
				wait = time.Second
			}
			pubCtx, cancel := context.WithTimeout(ctx, wait)
			defer cancel()
			_, err := h.pub.Publish(pubCtx, event("0190f0c2-0000-7000-8000-00000000000d"))
			if (err == nil) != tt.wantPublish {
				t.Errorf("Publish err = %v, want success %v", err, tt.wantPublish)
			}
			s, err := js.Stream(ctx, eventsv1.StreamAuthEvents)
			if err != nil {
				t.Fatal(err)
			}
			got := s.CachedInfo().Config
			if got.Storage != jetstream.MemoryStorage || got.MaxAge != time.Hour || len(got.Subjects) != len(tt.subjects) {
				t.Errorf("operator's stream was changed: %+v", got)
			}
		})
	}
}

func TestMetricsStartAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	publish.NewMetrics(reg)
	for _, name := range []string{
		"doorbell_gateway_events_published_total",
		"doorbell_gateway_events_publish_failures_total",
	} {
		if v := counter(t, reg, name); v != 0 {
			t.Errorf("%s = %v, want 0", name, v)
		}
	}
	if n, err := testutil.GatherAndCount(reg, "doorbell_gateway_publish_duration_seconds"); err != nil || n != 1 {
		t.Errorf("publish_duration_seconds series = %d, %v; want 1", n, err)
	}
}

// counter returns the value of the unlabelled counter called name.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
