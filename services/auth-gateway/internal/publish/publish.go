// Package publish delivers UserAuthenticated events to NATS JetStream and
// waits for the server to store them.
//
// A Publisher owns one NATS connection. It never fails to start because NATS
// is down: it keeps reconnecting in the background and makes sure the
// AUTH_EVENTS stream exists before the first publish that finds NATS usable.
//
// Publish rides through a NATS server's loss: it waits for the connection
// to come back (for Config.Timeout after it went) and for the stream to
// answer again, and tries again with the same message id. Without a spool
// it queues nothing beyond that: Publish fails, at once when NATS has been
// unreachable for longer, and the caller decides what the person sees.
// With a spool (Config.Spool), an event JetStream does not acknowledge in
// time is written to local disk instead and Publish succeeds; Run publishes
// spooled events later, with the same message id. An event JetStream
// refuses for good is neither (ErrRefused).
//
// Each publish is a span in the caller's trace, and the W3C trace context
// travels in the message headers (see Config.Propagator).
package publish

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/protobuf/proto"

	"github.com/doorbell/doorbell/platform/natstrace"
	"github.com/doorbell/doorbell/platform/telemetry"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/spool"
)

// ErrNotConnected is returned by Publish and Ready while the NATS connection
// is down or still being established.
var ErrNotConnected = errors.New("publish: not connected to NATS")

// tracerName names the spans this package makes.
const tracerName = "github.com/doorbell/doorbell/services/auth-gateway/internal/publish"

// defaultTimeout is Config.Timeout's default.
const defaultTimeout = 5 * time.Second

// Config says where and how to publish.
type Config struct {
	// URL is the NATS server URL, or several separated by commas.
	URL string
	// Name identifies the connection in the NATS server's monitoring.
	Name string
	// Source is the CloudEvents ce-source header: the gateway's public URL.
	Source string
	// Replicas is the replica count of the stream the gateway makes, and
	// the least it raises its own stream to at start (see EnsureStream).
	// Zero means auto: as many as the NATS servers can place, up to three.
	Replicas int
	// Timeout bounds Run's publish of one spooled event. It is also how
	// long after losing the connection a publish waits for it to come
	// back: later publishes fail (or spool) at once until it is back.
	// Zero means 5 seconds.
	Timeout time.Duration

	// Spool, when not nil, takes every event Publish could not get
	// JetStream to acknowledge, and Run publishes it later. Nil means a
	// failed publish is the caller's to handle.
	Spool *spool.Spool

	// TracerProvider makes the publish spans; nil means no spans.
	TracerProvider trace.TracerProvider
	// Propagator writes the caller's trace context into each message's
	// headers; nil means W3C Trace Context, the contract's traceparent and
	// tracestate. It writes nothing when the caller has no valid span, as
	// when tracing is off.
	Propagator propagation.TextMapPropagator
}

// Ack is the server's receipt for a stored event.
type Ack struct {
	Stream   string
	Sequence uint64
	// Duplicate is true when the stream already held an event with the same
	// event id (within its duplicate window) and did not store this one.
	Duplicate bool
	// Spooled is true when JetStream did not take the event in time and it
	// went to the spool instead; Stream and Sequence are then empty.
	Spooled bool
}

// Publisher publishes events. It is safe for concurrent use.
type Publisher struct {
	cfg        Config
	log        *slog.Logger
	metrics    *Metrics
	nc         *nats.Conn
	js         jetstream.JetStream
	spool      *spool.Spool
	tracer     trace.Tracer
	propagator propagation.TextMapPropagator

	// link is the connection's state, as its handlers report it.
	link *link
	// denied holds the subjects the server denied a publish on (string
	// keys), until a publish there succeeds.
	denied sync.Map
	// ensureSem lets one caller at a time look up or create the stream.
	ensureSem   chan struct{}
	streamKnown atomic.Bool
	// adopted is set once the existing stream's replicas were looked at:
	// a later look (after a publish got no answer) only checks its
	// subjects.
	adopted atomic.Bool
	closed  chan struct{}
	// connected wakes Run when the connection comes (back) up.
	connected chan struct{}
}

// Connect starts connecting to NATS and returns without waiting when the
// server cannot be reached; the connection then retries forever. Call Close
// to drain and release it.
func Connect(cfg Config, log *slog.Logger, m *Metrics) (*Publisher, error) {
	cfg = cfg.withDefaults()
	p := &Publisher{
		cfg:        cfg,
		log:        log,
		metrics:    m,
		spool:      cfg.Spool,
		tracer:     cfg.TracerProvider.Tracer(tracerName),
		propagator: cfg.Propagator,
		link:       newLink(time.Now()),
		ensureSem:  make(chan struct{}, 1),
		closed:     make(chan struct{}),
		connected:  make(chan struct{}, 1),
	}
	if cfg.Spool != nil {
		m.spool.Store(cfg.Spool)
	}
	nc, err := nats.Connect(cfg.URL, p.connectionOptions()...)
	if err != nil {
		return nil, fmt.Errorf("publish: connect to nats: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("publish: jetstream: %w", err)
	}
	p.nc, p.js = nc, js
	return p, nil
}

// withDefaults fills in the zero fields that have a default.
func (cfg Config) withDefaults() Config {
	if cfg.Replicas < 0 {
		cfg.Replicas = 0
	}
	if cfg.Name == "" {
		cfg.Name = "doorbell-auth-gateway"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultTimeout
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = noop.NewTracerProvider()
	}
	if cfg.Propagator == nil {
		cfg.Propagator = propagation.TraceContext{}
	}
	return cfg
}

// connectionOptions keep p's link state and log line in step with the
// connection, and never buffer a publish while reconnecting.
func (p *Publisher) connectionOptions() []nats.Option {
	log := p.log
	return []nats.Option{
		nats.Name(p.cfg.Name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		// No outbound buffer while reconnecting: a publish waits for the
		// reconnection (see deliver) instead of being sent later, after the
		// person was told it failed.
		nats.ReconnectBufSize(-1),
		nats.ConnectHandler(func(nc *nats.Conn) {
			p.link.set(true, time.Now())
			log.Info("nats connected", "url", nc.ConnectedUrlRedacted())
			p.wake()
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			p.link.set(true, time.Now())
			log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
			p.wake()
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			p.link.set(false, time.Now())
			if err != nil {
				log.Warn("nats disconnected", "error", err)
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { p.noteAsyncError(err) }),
		nats.ClosedHandler(func(*nats.Conn) {
			p.link.set(false, time.Now())
			close(p.closed)
		}),
	}
}

// Publish sends ev on user.authenticated with the contract's headers and
// waits for JetStream's ack; ctx bounds the whole call. Publishing the same
// event id twice within the stream's duplicate window stores it once and
// reports Ack.Duplicate. Each stored event is logged with its id and stream
// sequence, never with personal data.
//
// With a spool, an event JetStream did not acknowledge (NATS down, no
// stream, ctx expired) is written to the spool and Publish returns an Ack
// with Spooled set; it fails only when the spool write fails too. If
// JetStream did store it and only the ack was lost, Run's copy carries the
// same Nats-Msg-Id: the stream drops it within its duplicate window (2
// minutes), and after that the mail-worker suppresses it by event id.
func (p *Publisher) Publish(ctx context.Context, ev *eventsv1.UserAuthenticated) (Ack, error) {
	id := ev.GetEventId()
	ctx, span := p.tracer.Start(ctx, "publish "+eventsv1.SubjectUserAuthenticated,
		trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(spanAttributes(id)...))
	defer span.End()

	start := time.Now()
	msg, err := p.message(ctx, ev)
	if err != nil {
		p.metrics.failures.Inc()
		span.SetStatus(codes.Error, err.Error())
		return Ack{}, err
	}
	ack, err := p.send(ctx, msg)
	telemetry.Observe(ctx, p.metrics.duration, time.Since(start).Seconds())
	if err == nil {
		p.metrics.published.Inc()
		span.SetAttributes(attribute.Int64("messaging.nats.stream_sequence", int64(ack.Sequence)),
			attribute.Bool("doorbell.duplicate", ack.Duplicate))
		p.log.Info("event published",
			"event_id", id, "stream", ack.Stream, "seq", ack.Sequence, "duplicate", ack.Duplicate)
		return ack, nil
	}
	p.metrics.failures.Inc()
	if p.spool == nil || errors.Is(err, ErrRefused) {
		span.SetStatus(codes.Error, err.Error())
		if errors.Is(err, ErrRefused) {
			p.log.Error("event refused for good by JetStream: not published, not spooled", "event_id", id, "error", err)
		}
		return Ack{}, err
	}
	if _, serr := p.spool.Put(id, spool.Message{Subject: msg.Subject, Header: msg.Header, Data: msg.Data}); serr != nil {
		err = fmt.Errorf("%w; not spooled either: %w", err, serr)
		span.SetStatus(codes.Error, err.Error())
		return Ack{}, err
	}
	p.metrics.spooled.Inc()
	span.SetAttributes(attribute.Bool("doorbell.spooled", true))
	p.log.Warn("event spooled to disk: JetStream did not take it in time; it is published once NATS is usable",
		"event_id", id, "error", err, "spool_depth", p.spool.Len())
	return Ack{Spooled: true}, nil
}

// message is the NATS message for ev: the event and the contract's headers,
// including the trace context of ctx's span.
func (p *Publisher) message(ctx context.Context, ev *eventsv1.UserAuthenticated) (*nats.Msg, error) {
	id := ev.GetEventId()
	if id == "" {
		return nil, errors.New("publish: event has no event_id")
	}
	data, err := proto.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("publish: marshal event %s: %w", id, err)
	}
	msg := nats.NewMsg(eventsv1.SubjectUserAuthenticated)
	msg.Data = data
	ev.SetHeaders(msg.Header.Set, p.cfg.Source)
	p.propagator.Inject(ctx, natstrace.Header(msg.Header))
	return msg, nil
}

// send publishes msg, whose Nats-Msg-Id header is set, and waits for the
// ack, within ctx (see deliver). An error that means JetStream will never
// store msg wraps ErrRefused.
func (p *Publisher) send(ctx context.Context, msg *nats.Msg) (Ack, error) {
	ack, err := p.deliver(ctx, msg)
	if err != nil {
		return Ack{}, p.refused(err, msg.Subject)
	}
	p.denied.Delete(msg.Subject)
	return ack, nil
}

// deliver publishes msg and waits for the ack, within ctx. It rides
// through what a NATS cluster does when it loses a server: while the
// connection is down it waits for it to come back
// (unless it has been down for Config.Timeout already: then it fails at
// once), an attempt the connection dropped under is made again once it is
// back, and a stream without a leader for a moment (no responders) is
// asked again until ctx ends. Every attempt carries the same Nats-Msg-Id,
// so the stream stores the event once however many attempts reach it.
func (p *Publisher) deliver(ctx context.Context, msg *nats.Msg) (Ack, error) {
	for {
		up, since, changed := p.link.state()
		if !up {
			if err := p.awaitConnection(ctx, since, changed); err != nil {
				return Ack{}, err
			}
			continue
		}
		ack, err := p.attempt(ctx, msg, changed)
		switch {
		case err == nil:
			return ack, nil
		case ctx.Err() != nil:
			return Ack{}, err
		case changed.Err() != nil:
			continue // the connection dropped under the attempt
		case connectionLost(err):
			// The handlers have not reported it yet: wait until they do.
			select {
			case <-changed.Done():
			case <-ctx.Done():
				return Ack{}, err
			}
		default:
			return Ack{}, err
		}
	}
}

// awaitConnection waits for the connection, down since since, to change
// state. It fails with ErrNotConnected once the connection has been down
// for Config.Timeout, at once if it has already.
func (p *Publisher) awaitConnection(ctx context.Context, since time.Time, changed context.Context) error {
	wait := time.Until(since.Add(p.cfg.Timeout))
	if wait <= 0 {
		return ErrNotConnected
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-changed.Done():
		return nil
	case <-timer.C:
		return ErrNotConnected
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrNotConnected, ctx.Err())
	}
}

// attempt makes sure the stream exists and publishes msg once, retrying
// while the stream has no responders (a leader election), until ctx ends
// or the connection's state changes.
func (p *Publisher) attempt(ctx context.Context, msg *nats.Msg, changed context.Context) (Ack, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(changed, cancel)()
	if err := p.EnsureStream(ctx); err != nil {
		return Ack{}, err
	}
	id := msg.Header.Get(jetstream.MsgIDHeader)
	pa, err := p.js.PublishMsg(ctx, msg, jetstream.WithMsgID(id),
		jetstream.WithRetryWait(jetstream.DefaultPubRetryWait), jetstream.WithRetryAttempts(noResponderRetries(ctx)))
	if err != nil {
		if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, context.DeadlineExceeded) {
			// The stream may have vanished or stopped capturing the
			// subject: look again before the next publish.
			p.streamKnown.Store(false)
		}
		return Ack{}, fmt.Errorf("publish: event %s: %w", id, err)
	}
	return Ack{Stream: pa.Stream, Sequence: pa.Sequence, Duplicate: pa.Duplicate}, nil
}

// noResponderRetries is how often the client asks the stream again,
// DefaultPubRetryWait apart, while it has no responders: as often as fits
// before ctx ends.
func noResponderRetries(ctx context.Context) int {
	deadline, ok := ctx.Deadline()
	if !ok {
		return jetstream.DefaultPubRetryAttempts
	}
	return max(int(time.Until(deadline)/jetstream.DefaultPubRetryWait), 0) + 1
}

// connectionLost reports whether err is the client's way of saying the
// connection is not there right now.
func connectionLost(err error) bool {
	return errors.Is(err, nats.ErrReconnectBufExceeded) || errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.Is(err, nats.ErrDisconnected) || errors.Is(err, nats.ErrNoServers)
}

// Ready reports whether a publish could succeed now: NATS is connected and
// the stream is known. When connected but the stream is not yet known, it
// tries to find or create it, bounded by ctx.
//
// With a spool that has room, a NATS that is not usable yields ErrSpooling
// instead: sign-ins still succeed. A full spool is an ordinary error.
func (p *Publisher) Ready(ctx context.Context) error {
	err := p.ready(ctx)
	if err == nil || p.spool == nil {
		return err
	}
	if p.spool.Full() {
		return fmt.Errorf("%w; spool full (%d events)", err, p.spool.Len())
	}
	return ErrSpooling
}

func (p *Publisher) ready(ctx context.Context) error {
	if !p.nc.IsConnected() {
		return fmt.Errorf("%w (%s)", ErrNotConnected, p.nc.Status())
	}
	return p.EnsureStream(ctx)
}

// Close drains the connection, so that publishes already sent get their
// acks, then closes it; ctx bounds the wait. Stop Run first.
func (p *Publisher) Close(ctx context.Context) error {
	if err := p.nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionReconnecting) &&
		!errors.Is(err, nats.ErrConnectionClosed) {
		p.nc.Close()
		return fmt.Errorf("publish: drain: %w", err)
	}
	select {
	case <-p.closed:
		return nil
	case <-ctx.Done():
		p.nc.Close()
		return fmt.Errorf("publish: drain: %w", ctx.Err())
	}
}

// spanAttributes describe a publish of the event id; none is personal.
func spanAttributes(id string) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.String("messaging.system", "nats"),
		attribute.String("messaging.operation.type", "send"),
		attribute.String("messaging.destination.name", eventsv1.SubjectUserAuthenticated),
		attribute.String("messaging.message.id", id),
	}
}
