package deliver

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/doorbell/doorbell/platform/natstest"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/consume"
	"github.com/doorbell/doorbell/services/mail-worker/internal/deadletter"
	"github.com/doorbell/doorbell/services/mail-worker/internal/ledger"
	"github.com/doorbell/doorbell/services/mail-worker/internal/logtest"
	"github.com/doorbell/doorbell/services/mail-worker/internal/relay"
	"github.com/doorbell/doorbell/services/mail-worker/internal/render"
	"github.com/doorbell/doorbell/services/mail-worker/internal/smtpsend"
	"github.com/doorbell/doorbell/services/mail-worker/internal/smtptest"
)

// waitLong bounds every wait; the machine is shared and slow at times.
const waitLong = 60 * time.Second

// fetchWait is how long the harness's worker waits for messages in a pull.
const fetchWait = 200 * time.Millisecond

type harness struct {
	t       testing.TB
	nats    *natstest.Server
	js      jetstream.JetStream
	smtp    *smtptest.Server
	reg     *prometheus.Registry
	metrics *Metrics
	smtpM   *smtpsend.Metrics
	cons    jetstream.Consumer
	handler *Handler
	logs    *logtest.Buffer
	stop    func() // stops Run (and waits for it); idempotent
	// handling counts the Handle calls Run has started and not finished.
	// A handler counts its metrics and logs its line after JetStream has
	// its ack or term, so waitSettled also waits for this to reach zero.
	handling *atomic.Int64
}

type harnessOptions struct {
	concurrency  int
	ackWait      time.Duration
	horizon      time.Duration
	smtpTimeout  time.Duration
	finalTimeout time.Duration
	smtp         smtptest.Options
	noRun        bool // set everything up but leave consuming to the test
	tracer       trace.TracerProvider
	logEmails    bool
	alertWindow  time.Duration
	// wrap, when set, replaces each delivered message before the handler
	// sees it (to play a worker that dies: see deadMsg).
	wrap func(jetstream.Msg) jetstream.Msg
}

// newHarness wires the real parts: an embedded NATS server with the
// AUTH_EVENTS stream, the people's bucket and the dead-letter stream, the
// embedded templates, a pool of SMTP connections to a test SMTP server
// requiring STARTTLS, the Gate, and Run in the background. Backoffs and
// probe intervals are short; the SMTP timeout is 5 s.
func newHarness(t testing.TB, opts harnessOptions) *harness {
	t.Helper()
	if opts.concurrency == 0 {
		opts.concurrency = 4
	}
	if opts.ackWait == 0 {
		opts.ackWait = 30 * time.Second
	}
	if opts.horizon == 0 {
		opts.horizon = 24 * time.Hour
	}
	if opts.smtpTimeout == 0 {
		opts.smtpTimeout = 5 * time.Second
	}
	if opts.smtp.TLS == smtptest.NoTLS {
		opts.smtp.TLS = smtptest.RequireStartTLS
	}
	natsSrv := natstest.StartServer(t)
	_, js := natstest.Connect(t, natsSrv.URL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	natstest.CreateAuthEvents(t, js, 1)
	smtpSrv := smtptest.Start(t, opts.smtp)
	logs := &logtest.Buffer{}
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
		Timeout: opts.smtpTimeout, FinalTimeout: opts.finalTimeout, From: "Doorbell <doorbell@example.com>", HELO: "worker.test",
		PoolSize: opts.concurrency,
	}, smtpMetrics, log)
	if err != nil {
		t.Fatal(err)
	}
	people, err := ledger.Open(ctx, js, 1, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := deadletter.Ensure(ctx, js, 1, log); err != nil {
		t.Fatal(err)
	}
	renderer, err := render.New(render.Config{SiteName: "Doorbell"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := consume.Config{AckWait: opts.ackWait, Concurrency: opts.concurrency, Horizon: opts.horizon,
		ShutdownTimeout: 10 * time.Second, FetchWait: fetchWait}
	cons, err := consume.Setup(ctx, js, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, eventsv1.StreamAuthEvents)
	if err != nil {
		t.Fatal(err)
	}
	gate, err := relay.New(sender.Check, relay.Config{ProbeBase: 10 * time.Millisecond, ProbeMax: 100 * time.Millisecond,
		ProbeTimeout: 5 * time.Second}, reg, log)
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{
		Sender: sender, Renderer: renderer, People: people, InStream: StreamHas(stream), Acks: ConsumerAcks(cons),
		DeadLetters: deadletter.NewPublisher(js, 1, log), Gate: gate,
		Metrics: metrics, Log: log, AckWait: opts.ackWait, Policy: ledger.Policy{AlertWindow: opts.alertWindow},
		Retry:     Retry{BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond, Horizon: opts.horizon},
		Jitter:    func() float64 { return 0 },
		LogEmails: opts.logEmails,
	}
	if opts.tracer != nil {
		h.Tracer = opts.tracer.Tracer(TracerName)
	}
	runDone := make(chan error, 1)
	handling := &atomic.Int64{}
	handle := func(ctx context.Context, msg jetstream.Msg) {
		handling.Add(1)
		defer handling.Add(-1)
		if opts.wrap != nil {
			msg = opts.wrap(msg)
		}
		h.Handle(ctx, msg)
	}
	if opts.noRun {
		runDone <- nil
	} else {
		go func() { runDone <- consume.Run(ctx, cons, handle, gate, cfg, log) }()
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-runDone:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(waitLong):
				t.Error("Run did not return after cancel")
			}
			_ = sender.Close()
		})
	}
	t.Cleanup(stop)
	return &harness{t: t, nats: natsSrv, js: js, smtp: smtpSrv, reg: reg, metrics: metrics, smtpM: smtpMetrics, cons: cons,
		handler: h, logs: logs, stop: stop, handling: handling}
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

// person is sign-in number i of a distinct person, who gets a welcome.
func person(i int) *eventsv1.UserAuthenticated {
	ev := signIn(fmt.Sprintf("evt-%03d", i), "dev-a")
	ev.Subject = fmt.Sprintf("user-%03d", i)
	ev.Email = fmt.Sprintf("user%03d@example.com", i)
	return ev
}

func marshal(t testing.TB, ev *eventsv1.UserAuthenticated) []byte {
	t.Helper()
	b, err := proto.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// publish sends an event as the gateway does and returns its stream sequence.
func (h *harness) publish(ev *eventsv1.UserAuthenticated, msgID string) *jetstream.PubAck {
	h.t.Helper()
	return h.publishRaw(marshal(h.t, ev), msgID)
}

func (h *harness) publishRaw(data []byte, msgID string) *jetstream.PubAck {
	h.t.Helper()
	return h.publishWithHeader(data, msgID, nil)
}

// publishWithHeader is publishRaw with extra headers, set exactly as
// spelled in extra (NATS headers are case-sensitive).
func (h *harness) publishWithHeader(data []byte, msgID string, extra map[string]string) *jetstream.PubAck {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	msg := nats.NewMsg(eventsv1.SubjectUserAuthenticated)
	msg.Data = data
	msg.Header.Set(eventsv1.HeaderContentType, eventsv1.ContentTypeProtobuf)
	for k, v := range extra {
		msg.Header[k] = []string{v}
	}
	ack, err := h.js.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID))
	if err != nil {
		h.t.Fatal(err)
	}
	return ack
}

// publishPeople publishes the sign-ins of people from..to-1 and returns
// their event ids and the last sequence.
func (h *harness) publishPeople(from, to int) ([]string, uint64) {
	h.t.Helper()
	var ids []string
	var last uint64
	for i := from; i < to; i++ {
		ev := person(i)
		ids = append(ids, ev.EventId)
		last = h.publish(ev, ev.EventId).Sequence
	}
	return ids, last
}

// waitSettled waits until every message up to seq is acknowledged or
// terminated, so that nothing more can happen to it, and until no handler
// is running any more: the server counts an ack or term before the
// handler that sent it has counted its metrics and logged its line.
func (h *harness) waitSettled(seq uint64) {
	h.t.Helper()
	h.eventually(fmt.Sprintf("message %d settled", seq), func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		info, err := h.cons.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		// Read after the consumer info: every handler that settled one of
		// these messages was counted before its ack reached the server.
		busy := h.handling.Load()
		return info.AckFloor.Stream >= seq && info.NumAckPending == 0 && busy == 0,
			fmt.Sprintf("%d handlers running; %+v", busy, info)
	})
}

// eventually polls cond until it holds; the test fails after waitLong.
func (h *harness) eventually(what string, cond func() (bool, string)) {
	h.t.Helper()
	deadline := time.Now().Add(waitLong)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: not true after %s; last: %s\nlogs:\n%s", what, waitLong, last, h.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// deadLetters lists MAIL_DEADLETTER.
func (h *harness) deadLetters() []deadletter.Entry {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	q, err := deadletter.Open(ctx, h.js)
	if err != nil {
		h.t.Fatal(err)
	}
	entries, err := q.List(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	return entries
}

// record is the person's record of ev as a worker reads it now: emails whose
// message JetStream has acknowledged are sent.
func (h *harness) record(ev *eventsv1.UserAuthenticated) *ledger.Record {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	r, _, err := h.handler.People.Get(ctx, ledger.Key(ev.GetIssuer(), ev.GetSubject()))
	if err != nil {
		h.t.Fatal(err)
	}
	acks, err := h.handler.Acks(ctx, true)
	if err != nil {
		h.t.Fatal(err)
	}
	return r.Acked(acks)
}

func (h *harness) wantCounter(name string, c prometheus.Collector, want float64) {
	h.t.Helper()
	if got := testutil.ToFloat64(c); got != want {
		h.t.Errorf("%s = %v, want %v", name, got, want)
	}
}

// paused reads doorbell_mailworker_relay_paused.
func (h *harness) paused() float64 {
	h.t.Helper()
	families, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "doorbell_mailworker_relay_paused" {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	h.t.Fatal("no doorbell_mailworker_relay_paused")
	return 0
}

// retries is retries_total for cause.
func (h *harness) retries(cause string) prometheus.Collector {
	return h.metrics.retries.WithLabelValues(cause)
}

// wantEachOnce checks that the SMTP server got exactly one email for each
// of the event ids and none for any other.
func (h *harness) wantEachOnce(eventIDs ...string) {
	h.t.Helper()
	counts := h.smtp.CountByMessageID()
	for _, id := range eventIDs {
		if n := counts["<"+id+"@example.com>"]; n != 1 {
			h.t.Errorf("event %s: %d emails, want 1", id, n)
		}
		delete(counts, "<"+id+"@example.com>")
	}
	for id, n := range counts {
		h.t.Errorf("unexpected email %s (%d times)", id, n)
	}
}

func countLines(logs, substr string) int {
	return strings.Count(logs, substr)
}
