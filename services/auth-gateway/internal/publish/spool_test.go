package publish_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/doorbell/doorbell/platform/natstest"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/publish"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/spool"
)

// testSpoolKeys are the keys every test spool is opened with.
func testSpoolKeys() [][]byte { return [][]byte{bytes.Repeat([]byte{3}, 32)} }

// openSpool opens the spool in dir; its log lines go to logs.
func openSpool(t *testing.T, dir string, max int, logs *syncBuffer) *spool.Spool {
	t.Helper()
	s, err := spool.Open(dir, max, testSpoolKeys(), slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatalf("spool.Open: %v", err)
	}
	return s
}

func withSpool(s *spool.Spool) func(*publish.Config) {
	return func(c *publish.Config) { c.Spool = s }
}

// run starts the spool drainer until the test ends.
func (h *harness) run(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.pub.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// waitFor polls cond until it holds, failing the test at ctx's deadline.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("gave up waiting for %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitNotConnected waits until the publisher noticed NATS went away.
func waitNotConnected(ctx context.Context, t *testing.T, p *publish.Publisher) {
	t.Helper()
	waitFor(ctx, t, "the publisher to notice NATS is down", func() bool {
		probe, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		err := p.Ready(probe)
		return errors.Is(err, publish.ErrNotConnected) || errors.Is(err, publish.ErrSpooling)
	})
}

// waitConnected waits until the publisher's first connection to NATS is up
// (its connect handler logged it): Connect does not wait for it, and on a
// loaded machine the first attempt can time out and be retried.
func waitConnected(ctx context.Context, t *testing.T, h *harness) {
	t.Helper()
	waitFor(ctx, t, "the publisher to connect to NATS", func() bool {
		return strings.Contains(h.logs.String(), `msg="nats connected"`)
	})
}

// waitDrained waits until the spool is empty and the drainer has logged n
// published events. Remove takes an entry out of the spool before it deletes
// its file, and the drainer logs only after that, so once the log lines are
// there the files are gone too.
func waitDrained(ctx context.Context, t *testing.T, h *harness, sp *spool.Spool, n int) {
	t.Helper()
	waitFor(ctx, t, fmt.Sprintf("the spool to drain and %d spooled events to be logged as published", n), func() bool {
		return sp.Len() == 0 && strings.Count(h.logs.String(), `msg="spooled event published"`) >= n
	})
}

// streamMessages returns every message in AUTH_EVENTS, in stream order.
func streamMessages(ctx context.Context, t *testing.T, js jetstream.JetStream) []*jetstream.RawStreamMsg {
	t.Helper()
	s, err := js.Stream(ctx, eventsv1.StreamAuthEvents)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("GetMsg %d: %v", seq, err)
		}
		out = append(out, m)
	}
	return out
}

func eventIDs(t *testing.T, msgs []*jetstream.RawStreamMsg) []string {
	t.Helper()
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		var ev eventsv1.UserAuthenticated
		if err := proto.Unmarshal(m.Data, &ev); err != nil {
			t.Fatalf("message %d is not an event: %v", m.Sequence, err)
		}
		ids[i] = ev.GetEventId()
	}
	return ids
}

// spoolFiles lists the spooled messages in dir, not bad/ or other folders.
func spoolFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

// gauge returns the value of the unlabelled gauge called name.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("gauge %s not registered", name)
	return 0
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return mustAtoi(t, port)
}

// TestSpooledEventReachesTheStreamOnceNATSIsBack: with NATS down, Publish
// writes the event to disk and succeeds; when NATS returns, the drainer
// publishes it with the same headers, exactly once, and deletes the file.
func TestSpooledEventReachesTheStreamOnceNATSIsBack(t *testing.T) {
	addr, store, dir := freeAddr(t), t.TempDir(), t.TempDir()
	srv := natstest.RunWithStore(t, portOf(t, addr), store)
	sp := openSpool(t, dir, 10, &syncBuffer{})
	h := newHarness(t, srv.ClientURL(), withSpool(sp))
	h.run(t)
	ctx := testCtx(t)
	waitConnected(ctx, t, h)

	if ack, err := h.pub.Publish(ctx, event("0190f0c2-0000-7000-8000-000000000101")); err != nil || ack.Spooled {
		t.Fatalf("Publish while NATS is up = %+v, %v; want it stored in the stream", ack, err)
	}
	srv.Shutdown()
	srv.WaitForShutdown()
	waitNotConnected(ctx, t, h.pub)

	if err := h.pub.Ready(ctx); !errors.Is(err, publish.ErrSpooling) || err.Error() != "down, spooling" {
		t.Errorf("Ready with NATS down and room in the spool = %v, want ErrSpooling", err)
	}
	ev := event("0190f0c2-0000-7000-8000-000000000102")
	ack, err := h.pub.Publish(ctx, ev)
	if err != nil || !ack.Spooled {
		t.Fatalf("Publish with NATS down = %+v, %v; want a spooled ack", ack, err)
	}

	// On disk: one file holding the event and the headers it would have had.
	files := spoolFiles(t, dir)
	if len(files) != 1 || !strings.Contains(files[0], ev.EventId) {
		t.Fatalf("spool holds %v, want one file for %s", files, ev.EventId)
	}
	e, _ := sp.Oldest()
	m, err := sp.Load(e)
	if err != nil {
		t.Fatalf("spooled file does not load: %v", err)
	}
	want, _ := proto.Marshal(ev)
	if string(m.Data) != string(want) || m.Subject != "user.authenticated" {
		t.Errorf("spooled message: subject %q, data %d bytes; want the event on user.authenticated", m.Subject, len(m.Data))
	}
	spooledHeaders := m.Header
	for k, v := range map[string]string{"Nats-Msg-Id": ev.EventId, "ce-id": ev.EventId, "Content-Type": "application/protobuf"} {
		if got := spooledHeaders[k]; len(got) != 1 || got[0] != v {
			t.Errorf("spooled header %s = %v, want %q", k, got, v)
		}
	}
	if v := counter(t, h.reg, "doorbell_gateway_events_spooled_total"); v != 1 {
		t.Errorf("events_spooled_total = %v, want 1", v)
	}
	if v := gauge(t, h.reg, "doorbell_gateway_spool_depth"); v != 1 {
		t.Errorf("spool_depth = %v, want 1", v)
	}

	// NATS is back, with its store.
	srv = natstest.RunWithStore(t, portOf(t, addr), store)
	waitDrained(ctx, t, h, sp, 1)

	msgs := streamMessages(ctx, t, inspector(t, srv.ClientURL()))
	if ids := eventIDs(t, msgs); !slices.Equal(ids, []string{"0190f0c2-0000-7000-8000-000000000101", ev.EventId}) {
		t.Fatalf("stream holds %v, want the first event then the spooled one", ids)
	}
	for k, v := range spooledHeaders {
		if got := msgs[1].Header.Values(k); !slices.Equal(got, v) {
			t.Errorf("published header %s = %v, want the spooled %v", k, got, v)
		}
	}
	if files := spoolFiles(t, dir); len(files) != 0 {
		t.Errorf("files left after the drain: %v", files)
	}
	for name, want := range map[string]float64{
		"doorbell_gateway_spool_drained_total":    1,
		"doorbell_gateway_events_published_total": 2,
	} {
		if v := counter(t, h.reg, name); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
	for _, name := range []string{"doorbell_gateway_spool_depth", "doorbell_gateway_spool_oldest_age_seconds"} {
		if v := gauge(t, h.reg, name); v != 0 {
			t.Errorf("%s = %v after the drain, want 0", name, v)
		}
	}
	if logs := h.logs.String(); !strings.Contains(logs, `msg="spooled event published" event_id=`+ev.EventId) ||
		strings.Contains(logs, ev.Email) {
		t.Errorf("no log line for the drained event, or one with the email:\n%s", logs)
	}

	// Once: the event id is the stream's dedup key, so a copy is dropped.
	again, err := h.pub.Publish(ctx, ev)
	if err != nil || !again.Duplicate {
		t.Errorf("publishing the drained event again = %+v, %v; want a duplicate", again, err)
	}
}

// TestAPublisherStartedLaterDrainsWhatAnEarlierOneSpooled: nothing is lost
// when the gateway stops with events in the spool; the next one publishes
// them, oldest first.
func TestAPublisherStartedLaterDrainsWhatAnEarlierOneSpooled(t *testing.T) {
	addr, dir := freeAddr(t), t.TempDir()
	ctx := testCtx(t)
	ids := []string{
		"0190f0c2-0000-7000-8000-000000000201",
		"0190f0c2-0000-7000-8000-000000000202",
		"0190f0c2-0000-7000-8000-000000000203",
	}

	// The first run never reaches NATS.
	first := newHarness(t, "nats://"+addr, withSpool(openSpool(t, dir, 10, &syncBuffer{})))
	first.run(t)
	for _, id := range ids {
		if ack, err := first.pub.Publish(ctx, event(id)); err != nil || !ack.Spooled {
			t.Fatalf("Publish %s = %+v, %v; want spooled", id, ack, err)
		}
	}
	closeCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := first.pub.Close(closeCtx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := len(spoolFiles(t, dir)); n != 3 {
		t.Fatalf("%d files after the first run, want 3", n)
	}

	// The second run finds them, and NATS.
	srv := natstest.RunOn(t, portOf(t, addr))
	sp := openSpool(t, dir, 10, &syncBuffer{})
	if sp.Len() != 3 {
		t.Fatalf("reopened spool holds %d, want 3", sp.Len())
	}
	second := newHarness(t, srv.ClientURL(), withSpool(sp))
	second.run(t)
	waitDrained(ctx, t, second, sp, 3)

	if got := eventIDs(t, streamMessages(ctx, t, inspector(t, srv.ClientURL()))); !slices.Equal(got, ids) {
		t.Errorf("stream holds %v, want %v in that order", got, ids)
	}
	if files := spoolFiles(t, dir); len(files) != 0 {
		t.Errorf("files left: %v", files)
	}
	if v := counter(t, second.reg, "doorbell_gateway_spool_drained_total"); v != 3 {
		t.Errorf("spool_drained_total = %v, want 3", v)
	}
}

// TestUnusableSpoolFilesAreSetAsideAndTheRestDrained: a leftover temporary
// file, a truncated file and a file that is no event go to bad/ with a
// warning; the good events still go out.
func TestUnusableSpoolFilesAreSetAsideAndTheRestDrained(t *testing.T) {
	addr, dir := freeAddr(t), t.TempDir()
	ctx := testCtx(t)
	first := newHarness(t, "nats://"+addr, withSpool(openSpool(t, dir, 10, &syncBuffer{})))
	for _, id := range []string{"0190f0c2-0000-7000-8000-000000000301", "0190f0c2-0000-7000-8000-000000000302", "0190f0c2-0000-7000-8000-000000000303"} {
		if ack, err := first.pub.Publish(ctx, event(id)); err != nil || !ack.Spooled {
			t.Fatalf("Publish %s = %+v, %v", id, ack, err)
		}
	}
	closeCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := first.pub.Close(closeCtx); err != nil {
		t.Fatal(err)
	}

	// Cut the second file short, as a failing disk might.
	files := spoolFiles(t, dir)
	slices.Sort(files)
	path := filepath.Join(dir, files[1])
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, body[:len(body)/3], 0o600); err != nil {
		t.Fatal(err)
	}
	// A write a crash interrupted.
	if err := os.WriteFile(filepath.Join(dir, ".tmp-4242"), body[:10], 0o600); err != nil {
		t.Fatal(err)
	}

	srv := natstest.RunOn(t, portOf(t, addr))
	logs := &syncBuffer{}
	sp := openSpool(t, dir, 10, logs)
	// A complete spool file that holds no event.
	if _, err := sp.Put("not-an-event", spool.Message{
		Subject: "user.authenticated", Header: map[string][]string{"Nats-Msg-Id": {"not-an-event"}}, Data: []byte("garbage"),
	}); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, srv.ClientURL(), withSpool(sp))
	h.run(t)
	// SetAside takes an entry out of the spool before it moves the file and
	// logs the warning: wait for the warnings too.
	waitDrained(ctx, t, h, sp, 2)
	waitFor(ctx, t, "a warning for each file set aside", func() bool {
		return strings.Count(logs.String(), "level=WARN") >= 3
	})

	got := eventIDs(t, streamMessages(ctx, t, inspector(t, srv.ClientURL())))
	if want := []string{"0190f0c2-0000-7000-8000-000000000301", "0190f0c2-0000-7000-8000-000000000303"}; !slices.Equal(got, want) {
		t.Errorf("stream holds %v, want %v", got, want)
	}
	bad := spoolFiles(t, filepath.Join(dir, spool.BadDir))
	if len(bad) != 3 || !slices.Contains(bad, ".tmp-4242") || !slices.Contains(bad, files[1]) ||
		!slices.ContainsFunc(bad, func(n string) bool { return strings.Contains(n, "not-an-event") }) {
		t.Errorf("bad/ holds %v, want the temporary file, the truncated one and the non-event", bad)
	}
	if files := spoolFiles(t, dir); len(files) != 0 {
		t.Errorf("files left in the spool: %v", files)
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 3 {
		t.Errorf("%d warnings, want one per file set aside:\n%s", n, logs)
	}
}

func TestAFullSpoolFailsThePublish(t *testing.T) {
	sp := openSpool(t, t.TempDir(), 1, &syncBuffer{})
	h := newHarness(t, "nats://"+freeAddr(t), withSpool(sp))
	ctx := testCtx(t)

	if ack, err := h.pub.Publish(ctx, event("0190f0c2-0000-7000-8000-000000000401")); err != nil || !ack.Spooled {
		t.Fatalf("first Publish = %+v, %v; want spooled", ack, err)
	}
	err := h.pub.Ready(ctx)
	if err == nil || errors.Is(err, publish.ErrSpooling) || !strings.Contains(err.Error(), "spool full") {
		t.Errorf("Ready with a full spool = %v, want an error saying the spool is full", err)
	}
	_, err = h.pub.Publish(ctx, event("0190f0c2-0000-7000-8000-000000000402"))
	if !errors.Is(err, spool.ErrFull) || !errors.Is(err, publish.ErrNotConnected) {
		t.Errorf("Publish into a full spool = %v, want ErrFull and the reason it was not published", err)
	}
	if v := counter(t, h.reg, "doorbell_gateway_events_publish_failures_total"); v != 2 {
		t.Errorf("events_publish_failures_total = %v, want 2", v)
	}
	if v := counter(t, h.reg, "doorbell_gateway_events_spooled_total"); v != 1 {
		t.Errorf("events_spooled_total = %v, want 1", v)
	}
}

// TestAPublishThatRunsOutOfTimeIsSpooled: NATS is up but the ack does not
// come in time (here: no time at all); the event is spooled and published
// afterwards.
func TestAPublishThatRunsOutOfTimeIsSpooled(t *testing.T) {
	srv := natstest.Run(t)
	sp := openSpool(t, t.TempDir(), 10, &syncBuffer{})
	h := newHarness(t, srv.ClientURL(), withSpool(sp))
	ctx := testCtx(t)

	expired, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel()
	ack, err := h.pub.Publish(expired, event("0190f0c2-0000-7000-8000-000000000501"))
	if err != nil || !ack.Spooled {
		t.Fatalf("Publish out of time = %+v, %v; want spooled", ack, err)
	}
	h.run(t)
	waitFor(ctx, t, "the spool to drain", func() bool { return sp.Len() == 0 })
	if got := eventIDs(t, streamMessages(ctx, t, inspector(t, srv.ClientURL()))); !slices.Equal(got, []string{"0190f0c2-0000-7000-8000-000000000501"}) {
		t.Errorf("stream holds %v", got)
	}
}

func TestWithoutASpoolReadyReportsNATSDown(t *testing.T) {
	h := newHarness(t, "nats://"+freeAddr(t))
	ctx := testCtx(t)
	if err := h.pub.Ready(ctx); !errors.Is(err, publish.ErrNotConnected) || errors.Is(err, publish.ErrSpooling) {
		t.Errorf("Ready = %v, want ErrNotConnected", err)
	}
	for _, name := range []string{"doorbell_gateway_spool_depth", "doorbell_gateway_spool_oldest_age_seconds", "doorbell_gateway_spool_set_aside_files"} {
		if v := gauge(t, h.reg, name); v != 0 {
			t.Errorf("%s = %v without a spool, want 0", name, v)
		}
	}
}

// A spooled file the gateway cannot read (another owner's, or not a file
// at all) is set aside rather than retried for ever ahead of the events
// behind it, which still go out.
func TestASpoolFileThatCannotBeReadIsSetAsideAndTheRestDrained(t *testing.T) {
	dir := t.TempDir()
	srv := natstest.Run(t)
	logs := &syncBuffer{}
	sp := openSpool(t, dir, 10, logs)
	h := newHarness(t, srv.ClientURL(), withSpool(sp))
	ctx := testCtx(t)
	waitConnected(ctx, t, h)
	ids := []string{"0190f0c2-0000-7000-8000-000000000a01", "0190f0c2-0000-7000-8000-000000000a02"}
	for _, id := range ids {
		m, err := h.pub.Message(ctx, event(id))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sp.Put(id, spool.Message{Subject: m.Subject, Header: m.Header, Data: m.Data}); err != nil {
			t.Fatal(err)
		}
	}
	// The oldest becomes a link to a folder: opened, it cannot be read.
	// (Tests run as root, for whom no file mode is unreadable.)
	files := spoolFiles(t, dir)
	slices.Sort(files)
	oldest := filepath.Join(dir, files[0])
	if err := os.Remove(oldest); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(t.TempDir(), oldest); err != nil {
		t.Fatal(err)
	}

	h.run(t)
	waitDrained(ctx, t, h, sp, 1)
	if got := eventIDs(t, streamMessages(ctx, t, inspector(t, srv.ClientURL()))); !slices.Equal(got, ids[1:]) {
		t.Errorf("stream holds %v, want %v", got, ids[1:])
	}
	waitFor(ctx, t, "the unreadable file in bad/", func() bool {
		n, err := sp.SetAsideFiles()
		return err == nil && n == 1
	})
	if !strings.Contains(logs.String(), "is a directory") {
		t.Errorf("no log line with the reason:\n%s", logs)
	}
}
