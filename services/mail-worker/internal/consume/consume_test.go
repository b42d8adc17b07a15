package consume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/history"
	"github.com/doorbell/doorbell/services/mail-worker/internal/render"
	"github.com/doorbell/doorbell/services/mail-worker/internal/smtpsend"
	"github.com/doorbell/doorbell/services/mail-worker/internal/smtptest"
)

// waitLong bounds every wait; the machine is shared and slow at times.
const waitLong = 60 * time.Second

// startNATS runs an embedded JetStream server on a random loopback port.
func startNATS(t *testing.T) string {
	t.Helper()
	s, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	if !s.ReadyForConnections(waitLong) {
		t.Fatal("nats-server did not start")
	}
	return s.ClientURL()
}

func connect(t *testing.T, url string) jetstream.JetStream {
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
	return js
}

func createStream(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:     eventsv1.StreamAuthEvents,
		Subjects: []string{eventsv1.StreamAuthEventsSubjects},
		Storage:  jetstream.FileStorage,
		MaxAge:   7 * 24 * time.Hour,
	}); err != nil {
		t.Fatal(err)
	}
}

// logBuffer collects log output for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type harness struct {
	t       *testing.T
	js      jetstream.JetStream
	smtp    *smtptest.Server
	metrics *Metrics
	cons    jetstream.Consumer
	logs    *logBuffer
}

type harnessOptions struct {
	maxDeliver int
}

// newHarness wires the real parts: embedded NATS with the AUTH_EVENTS
// stream, the KV buckets, the embedded templates, go-mail against a test
// SMTP server requiring STARTTLS, and Run in the background.
func newHarness(t *testing.T, opts harnessOptions) *harness {
	t.Helper()
	if opts.maxDeliver == 0 {
		opts.maxDeliver = 10
	}
	js := connect(t, startNATS(t))
	createStream(t, js)
	smtpSrv := smtptest.Start(t, smtptest.Options{TLS: smtptest.RequireStartTLS})
	logs := &logBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))

	ctx, cancel := context.WithCancel(context.Background())
	reg := prometheus.NewRegistry()
	metrics, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	smtpMetrics, err := smtpsend.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	sender, err := smtpsend.New(smtpsend.Config{
		Host: smtpSrv.Host, Port: smtpSrv.Port, TLS: smtpsend.TLSMandatory, CAFile: smtpSrv.CAFile,
		Timeout: 10 * time.Second, From: "Doorbell <doorbell@example.com>", HELO: "worker.test",
	}, smtpMetrics, log)
	if err != nil {
		t.Fatal(err)
	}
	store, err := history.Open(ctx, js, log)
	if err != nil {
		t.Fatal(err)
	}
	renderer, err := render.New("")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{AckWait: 30 * time.Second, MaxDeliver: opts.maxDeliver, ShutdownTimeout: 10 * time.Second}
	cons, err := Setup(ctx, js, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{
		Sender: sender, Renderer: renderer, Sent: store, Users: store, Metrics: metrics, Log: log,
		SiteName: "Doorbell",
		Retry:    Retry{MaxDeliver: opts.maxDeliver, BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond},
		Jitter:   func() float64 { return 0 },
	}
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cons, h.Handle, cfg, log) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(waitLong):
			t.Error("Run did not return after cancel")
		}
		_ = sender.Close()
	})
	return &harness{t: t, js: js, smtp: smtpSrv, metrics: metrics, cons: cons, logs: logs}
}

func signIn(eventID, deviceID string) *eventsv1.UserAuthenticated {
	return &eventsv1.UserAuthenticated{
		EventId:         eventID,
		AuthenticatedAt: timestamppb.Now(),
		Issuer:          "https://idp.example.com",
		Subject:         "user-1",
		Provider:        "dev",
		Email:           "ann@example.com",
		Name:            "Ann Example",
		Locale:          "en",
		Client:          &eventsv1.Client{Ip: "192.0.2.7", UserAgent: "Firefox/140", DeviceId: deviceID},
	}
}

// publish sends an event as the gateway does and returns its stream sequence.
func (h *harness) publish(ev *eventsv1.UserAuthenticated, msgID string) *jetstream.PubAck {
	h.t.Helper()
	b, err := proto.Marshal(ev)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.publishRaw(b, msgID)
}

func (h *harness) publishRaw(data []byte, msgID string) *jetstream.PubAck {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	msg := nats.NewMsg(eventsv1.SubjectUserAuthenticated)
	msg.Data = data
	msg.Header.Set(eventsv1.HeaderContentType, eventsv1.ContentTypeProtobuf)
	ack, err := h.js.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID))
	if err != nil {
		h.t.Fatal(err)
	}
	return ack
}

// waitSettled waits until every message up to seq is acknowledged or
// terminated, so that nothing more can happen to it.
func (h *harness) waitSettled(seq uint64) {
	h.t.Helper()
	deadline := time.Now().Add(waitLong)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		info, err := h.cons.Info(ctx)
		cancel()
		if err == nil && info.AckFloor.Stream >= seq && info.NumAckPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("message %d not settled after %s: %+v (%v)", seq, waitLong, info, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (h *harness) wantCounter(name string, c prometheus.Collector, want float64) {
	h.t.Helper()
	if got := testutil.ToFloat64(c); got != want {
		h.t.Errorf("%s = %v, want %v", name, got, want)
	}
}

func TestFirstSignInGetsOneWelcome(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ack := h.publish(signIn("0190c4b2-0001-7abc-8def-0123456789ab", "dev-a"), "0190c4b2-0001-7abc-8def-0123456789ab")
	msgs := h.smtp.WaitForMessages(t, 1, waitLong)
	h.waitSettled(ack.Sequence)

	if n := len(h.smtp.Messages()); n != 1 {
		t.Fatalf("server got %d emails, want 1", n)
	}
	hdr := msgs[0].Header(t)
	if got, want := hdr.Get("Message-Id"), "<0190c4b2-0001-7abc-8def-0123456789ab@example.com>"; got != want {
		t.Errorf("Message-ID = %q, want %q", got, want)
	}
	if got := hdr.Get("Subject"); got != "Welcome to Doorbell" {
		t.Errorf("Subject = %q", got)
	}
	if msgs[0].To[0] != "ann@example.com" {
		t.Errorf("sent to %v", msgs[0].To)
	}
	h.wantCounter("events_received_total", h.metrics.received, 1)
	h.wantCounter(`emails_total{welcome,sent}`, h.metrics.emails.WithLabelValues("welcome", ResultSent), 1)
	h.wantCounter(`decisions_total{welcome}`, h.metrics.decisions.WithLabelValues("welcome"), 1)
	if n := testutil.CollectAndCount(h.metrics.loginToMail); n != 1 {
		t.Errorf("login_to_email_seconds has %d series, want 1", n)
	}

	logs := h.logs.String()
	if !strings.Contains(logs, "event_id=0190c4b2-0001-7abc-8def-0123456789ab kind=welcome result=sent attempts=1") {
		t.Errorf("no log line for the event:\n%s", logs)
	}
	if strings.Contains(logs, "ann@example.com") {
		t.Errorf("the email address appears in info logs:\n%s", logs)
	}
}

func TestTheSameEventSendsOnlyOnce(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ev := signIn("evt-dup", "dev-a")
	first := h.publish(ev, "evt-dup")
	h.smtp.WaitForMessages(t, 1, waitLong)
	h.waitSettled(first.Sequence)

	// The gateway retries the publish: JetStream drops the copy.
	if ack := h.publish(ev, "evt-dup"); !ack.Duplicate {
		t.Errorf("a re-publish with the same Nats-Msg-Id was not flagged as duplicate")
	}
	// Simulate a crash after the email and its sent-marker but before the
	// person's record was written: without the marker, the event would
	// now look like a first sign-in again.
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	users, err := h.js.KeyValue(ctx, history.BucketUsers)
	if err != nil {
		t.Fatal(err)
	}
	key := history.UserKey(ev.Issuer, ev.Subject)
	if err := users.Purge(ctx, key); err != nil {
		t.Fatal(err)
	}
	// The same event under another Nats-Msg-Id (a redelivery, or a publish
	// after the dedup window) reaches the worker, which must not send it
	// again, and repairs the record.
	ack := h.publish(ev, "evt-dup-again")
	h.waitSettled(ack.Sequence)

	if n := len(h.smtp.Messages()); n != 1 {
		t.Errorf("server got %d emails, want 1", n)
	}
	if _, err := users.Get(ctx, key); err != nil {
		t.Errorf("the duplicate did not restore the user record: %v", err)
	}
	h.wantCounter(`emails_total{welcome,duplicate}`, h.metrics.emails.WithLabelValues("welcome", ResultDuplicate), 1)
	h.wantCounter(`emails_total{welcome,sent}`, h.metrics.emails.WithLabelValues("welcome", ResultSent), 1)
}

func TestKnownDeviceGetsNothingAndNewDeviceGetsAnAlert(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	h.publish(signIn("evt-1", "dev-a"), "evt-1")
	h.smtp.WaitForMessages(t, 1, waitLong)

	ack := h.publish(signIn("evt-2", "dev-a"), "evt-2")
	h.waitSettled(ack.Sequence)
	if n := len(h.smtp.Messages()); n != 1 {
		t.Fatalf("a sign-in from a known device sent an email: %d emails", n)
	}
	h.wantCounter(`decisions_total{none}`, h.metrics.decisions.WithLabelValues("none"), 1)

	alertEvent := signIn("evt-3", "dev-b")
	alertEvent.Client.Ip = "198.51.100.23"
	ack = h.publish(alertEvent, "evt-3")
	msgs := h.smtp.WaitForMessages(t, 2, waitLong)
	h.waitSettled(ack.Sequence)
	if n := len(h.smtp.Messages()); n != 2 {
		t.Fatalf("server got %d emails, want 2", n)
	}
	alert := msgs[1]
	hdr := alert.Header(t)
	if got := hdr.Get("Subject"); got != "New sign-in to Doorbell from a new device" {
		t.Errorf("alert Subject = %q", got)
	}
	if got, want := hdr.Get("Message-Id"), "<evt-3@example.com>"; got != want {
		t.Errorf("alert Message-ID = %q, want %q", got, want)
	}
	if !bytes.Contains(alert.Data, []byte("198.51.100.23")) || !bytes.Contains(alert.Data, []byte("Firefox/140")) {
		t.Errorf("alert does not say where the sign-in came from:\n%s", alert.Data)
	}
	h.wantCounter(`emails_total{new_device,sent}`, h.metrics.emails.WithLabelValues("new_device", ResultSent), 1)

	// The new device is now known.
	ack = h.publish(signIn("evt-4", "dev-b"), "evt-4")
	h.waitSettled(ack.Sequence)
	if n := len(h.smtp.Messages()); n != 2 {
		t.Errorf("a sign-in from the newly known device sent an email: %d emails", n)
	}
}

func TestTransientFailuresAreRetriedAndDeliveredOnce(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	h.smtp.FailNext(2, 451)
	ack := h.publish(signIn("evt-451", "dev-a"), "evt-451")
	msgs := h.smtp.WaitForMessages(t, 1, waitLong)
	h.waitSettled(ack.Sequence)

	if n := len(h.smtp.Messages()); n != 1 {
		t.Fatalf("server got %d emails, want 1", n)
	}
	if got := msgs[0].Header(t).Get("Message-Id"); got != "<evt-451@example.com>" {
		t.Errorf("Message-ID = %q", got)
	}
	h.wantCounter("retries_total", h.metrics.retries, 2)
	h.wantCounter("events_received_total", h.metrics.received, 3)
	h.wantCounter(`emails_total{welcome,sent}`, h.metrics.emails.WithLabelValues("welcome", ResultSent), 1)
	h.wantCounter(`emails_total{welcome,failed}`, h.metrics.emails.WithLabelValues("welcome", ResultFailed), 0)
	if logs := h.logs.String(); !strings.Contains(logs, "result=sent attempts=3") {
		t.Errorf("the final log line does not count 3 attempts:\n%s", logs)
	}
}

func TestPermanentFailureTerminatesAndTheNextMessageFlows(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	h.smtp.FailNext(1, 550)
	ack := h.publish(signIn("evt-550", "dev-a"), "evt-550")
	h.waitSettled(ack.Sequence)

	if n := len(h.smtp.Messages()); n != 0 {
		t.Fatalf("server got %d emails, want 0", n)
	}
	h.wantCounter(`deadletters_total{permanent}`, h.metrics.deadletters.WithLabelValues(ReasonPermanent), 1)
	h.wantCounter(`emails_total{welcome,failed}`, h.metrics.emails.WithLabelValues("welcome", ResultFailed), 1)
	h.wantCounter("retries_total", h.metrics.retries, 0)
	h.wantCounter("events_received_total", h.metrics.received, 1)

	other := signIn("evt-other", "dev-x")
	other.Subject, other.Email = "user-2", "bob@example.com"
	h.publish(other, "evt-other")
	if msgs := h.smtp.WaitForMessages(t, 1, waitLong); msgs[0].To[0] != "bob@example.com" {
		t.Errorf("next email went to %v", msgs[0].To)
	}
}

func TestRetriesRunOutAndTheMessageIsTerminated(t *testing.T) {
	h := newHarness(t, harnessOptions{maxDeliver: 3})
	h.smtp.FailNext(100, 451)
	ack := h.publish(signIn("evt-exhaust", "dev-a"), "evt-exhaust")
	h.waitSettled(ack.Sequence)

	if n := len(h.smtp.Messages()); n != 0 {
		t.Fatalf("server got %d emails, want 0", n)
	}
	h.wantCounter("events_received_total", h.metrics.received, 3)
	h.wantCounter("retries_total", h.metrics.retries, 2)
	h.wantCounter(`deadletters_total{exhausted}`, h.metrics.deadletters.WithLabelValues(ReasonExhausted), 1)
	h.wantCounter(`emails_total{welcome,failed}`, h.metrics.emails.WithLabelValues("welcome", ResultFailed), 1)
}

func TestUndecodableAndInvalidPayloadsAreTerminated(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	noEmail := signIn("evt-no-email", "dev-a")
	noEmail.Email = ""
	badID := signIn("evt with spaces", "dev-a")
	badMarshal := func(ev *eventsv1.UserAuthenticated) []byte {
		b, err := proto.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	payloads := []struct {
		name string
		data []byte
	}{
		{"not protobuf", []byte("\xff\xff\xff not a protobuf")},
		{"empty", nil},
		{"no email", badMarshal(noEmail)},
		{"event id unusable as key", badMarshal(badID)},
	}
	var last uint64
	for i, p := range payloads {
		last = h.publishRaw(p.data, fmt.Sprintf("bad-%d", i)).Sequence
	}
	ack := h.publish(signIn("evt-good", "dev-a"), "evt-good")
	msgs := h.smtp.WaitForMessages(t, 1, waitLong)
	h.waitSettled(ack.Sequence)
	if last >= ack.Sequence {
		t.Fatal("sequence numbers out of order")
	}
	if n := len(h.smtp.Messages()); n != 1 || msgs[0].Header(t).Get("Message-Id") != "<evt-good@example.com>" {
		t.Errorf("want only the good event's email, got %d", n)
	}
	h.wantCounter(`deadletters_total{undecodable}`, h.metrics.deadletters.WithLabelValues(ReasonUndecodable), float64(len(payloads)))
	h.wantCounter("retries_total", h.metrics.retries, 0)
	if logs := h.logs.String(); strings.Count(logs, `result=failed attempts=1`) != len(payloads) ||
		strings.Count(logs, `reason="undecodable: `) != len(payloads) {
		t.Errorf("want one undecodable log line per bad payload:\n%s", logs)
	}
}

func TestSetupWaitsForTheStream(t *testing.T) {
	js := connect(t, startNATS(t))
	logs := &logBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()

	type result struct {
		cons jetstream.Consumer
		err  error
	}
	done := make(chan result, 1)
	go func() {
		cons, err := Setup(ctx, js, Config{AckWait: 30 * time.Second, MaxDeliver: 4}, log)
		done <- result{cons, err}
	}()

	// Setup says once that it waits, and keeps waiting.
	deadline := time.Now().Add(waitLong)
	for !strings.Contains(logs.String(), "waiting for the stream") {
		if time.Now().After(deadline) {
			t.Fatalf("Setup never said it was waiting:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case r := <-done:
		t.Fatalf("Setup returned before the stream existed: %v", r.err)
	default:
	}

	createStream(t, js)
	r := <-done
	if r.err != nil {
		t.Fatalf("Setup: %v", r.err)
	}
	info, err := r.cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := info.Config
	if c.Durable != eventsv1.ConsumerMailWorker || c.AckPolicy != jetstream.AckExplicitPolicy ||
		c.FilterSubject != eventsv1.SubjectUserAuthenticated || c.DeliverPolicy != jetstream.DeliverAllPolicy ||
		c.AckWait != 30*time.Second || c.MaxDeliver != 4 || c.MaxAckPending != MaxAckPending {
		t.Errorf("consumer config = %+v", c)
	}
	if n := strings.Count(logs.String(), "waiting for the stream"); n != 1 {
		t.Errorf("Setup logged the wait %d times, want once", n)
	}

	// Nobody consumes yet: published events show up as the backlog.
	for i := range 2 {
		if _, err := js.Publish(ctx, eventsv1.SubjectUserAuthenticated, []byte("x"), jetstream.WithMsgID(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	if err := RegisterConsumerStats(reg, r.cons.Info); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP doorbell_mailworker_consumer_ack_pending_messages Messages delivered to the mail-worker consumer and not yet acknowledged (same value on every replica).
# TYPE doorbell_mailworker_consumer_ack_pending_messages gauge
doorbell_mailworker_consumer_ack_pending_messages 0
# HELP doorbell_mailworker_consumer_pending_messages Messages in AUTH_EVENTS that the mail-worker consumer has not delivered yet (same value on every replica).
# TYPE doorbell_mailworker_consumer_pending_messages gauge
doorbell_mailworker_consumer_pending_messages 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

func TestConsumerStatsAreAbsentWithoutAConsumer(t *testing.T) {
	reg := prometheus.NewRegistry()
	if err := RegisterConsumerStats(reg, func(context.Context) (*jetstream.ConsumerInfo, error) {
		return nil, jetstream.ErrConsumerNotFound
	}); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 0 {
		t.Errorf("exposed %d series (%v), want none", n, err)
	}
}

func TestSetupGivesUpWhenCancelled(t *testing.T) {
	js := connect(t, startNATS(t))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Setup(ctx, js, Config{AckWait: time.Minute, MaxDeliver: 1}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Setup with a cancelled context = %v, want context.Canceled", err)
	}
}
