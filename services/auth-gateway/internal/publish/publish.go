// Package publish delivers UserAuthenticated events to NATS JetStream and
// waits for the server to store them.
//
// A Publisher owns one NATS connection. It never fails to start because NATS
// is down: it keeps reconnecting in the background and makes sure the
// AUTH_EVENTS stream exists before the first publish that finds NATS usable.
// It does not queue events while NATS is unreachable; Publish then fails at
// once, and the caller decides what the person sees.
package publish

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// ErrNotConnected is returned by Publish and Ready while the NATS connection
// is down or still being established.
var ErrNotConnected = errors.New("publish: not connected to NATS")

// Config says where and how to publish.
type Config struct {
	// URL is the NATS server URL, or several separated by commas.
	URL string
	// Name identifies the connection in the NATS server's monitoring.
	Name string
	// Source is the CloudEvents ce-source header: the gateway's public URL.
	Source string
	// Replicas is used only when the stream has to be created.
	Replicas int
}

// Ack is the server's receipt for a stored event.
type Ack struct {
	Stream   string
	Sequence uint64
	// Duplicate is true when the stream already held an event with the same
	// event id (within its duplicate window) and did not store this one.
	Duplicate bool
}

// Publisher publishes events. It is safe for concurrent use.
type Publisher struct {
	cfg     Config
	log     *slog.Logger
	metrics *Metrics
	nc      *nats.Conn
	js      jetstream.JetStream

	// ensureSem lets one caller at a time look up or create the stream.
	ensureSem   chan struct{}
	streamKnown atomic.Bool
	closed      chan struct{}
}

// Connect starts connecting to NATS and returns without waiting when the
// server cannot be reached; the connection then retries forever. Call Close
// to drain and release it.
func Connect(cfg Config, log *slog.Logger, m *Metrics) (*Publisher, error) {
	if cfg.Replicas < 1 {
		cfg.Replicas = 1
	}
	if cfg.Name == "" {
		cfg.Name = "doorbell-auth-gateway"
	}
	p := &Publisher{
		cfg:       cfg,
		log:       log,
		metrics:   m,
		ensureSem: make(chan struct{}, 1),
		closed:    make(chan struct{}),
	}
	nc, err := nats.Connect(cfg.URL,
		nats.Name(cfg.Name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		// No outbound buffer while reconnecting: a publish then fails at once
		// instead of being sent later, after the person was told it failed.
		nats.ReconnectBufSize(-1),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info("nats connected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ClosedHandler(func(*nats.Conn) { close(p.closed) }),
	)
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

// Publish sends ev on user.authenticated with the contract's headers and
// waits for JetStream's ack; ctx bounds the whole call. Publishing the same
// event id twice within the stream's duplicate window stores it once and
// reports Ack.Duplicate. Each stored event is logged with its id and stream
// sequence, never with personal data.
func (p *Publisher) Publish(ctx context.Context, ev *eventsv1.UserAuthenticated) (Ack, error) {
	start := time.Now()
	ack, err := p.publish(ctx, ev)
	p.metrics.duration.Observe(time.Since(start).Seconds())
	if err != nil {
		p.metrics.failures.Inc()
		return Ack{}, err
	}
	p.metrics.published.Inc()
	p.log.Info("event published",
		"event_id", ev.GetEventId(), "stream", ack.Stream, "seq", ack.Sequence, "duplicate", ack.Duplicate)
	return ack, nil
}

func (p *Publisher) publish(ctx context.Context, ev *eventsv1.UserAuthenticated) (Ack, error) {
	id := ev.GetEventId()
	if id == "" {
		return Ack{}, errors.New("publish: event has no event_id")
	}
	if !p.nc.IsConnected() {
		return Ack{}, ErrNotConnected
	}
	if err := p.EnsureStream(ctx); err != nil {
		return Ack{}, err
	}
	data, err := proto.Marshal(ev)
	if err != nil {
		return Ack{}, fmt.Errorf("publish: marshal event %s: %w", id, err)
	}
	msg := nats.NewMsg(eventsv1.SubjectUserAuthenticated)
	msg.Data = data
	msg.Header.Set(eventsv1.HeaderContentType, eventsv1.ContentTypeProtobuf)
	msg.Header.Set(eventsv1.HeaderSpecVersion, eventsv1.SpecVersion)
	msg.Header.Set(eventsv1.HeaderID, id)
	msg.Header.Set(eventsv1.HeaderSource, p.cfg.Source)
	msg.Header.Set(eventsv1.HeaderType, eventsv1.TypeUserAuthenticated)
	msg.Header.Set(eventsv1.HeaderTime, ev.GetAuthenticatedAt().AsTime().UTC().Format(time.RFC3339Nano))

	pa, err := p.js.PublishMsg(ctx, msg, jetstream.WithMsgID(id))
	if err != nil {
		if errors.Is(err, jetstream.ErrNoStreamResponse) {
			// The stream vanished or no longer captures the subject: look
			// again before the next publish.
			p.streamKnown.Store(false)
		}
		return Ack{}, fmt.Errorf("publish: event %s: %w", id, err)
	}
	return Ack{Stream: pa.Stream, Sequence: pa.Sequence, Duplicate: pa.Duplicate}, nil
}

// Ready reports whether a publish could succeed now: NATS is connected and
// the stream is known. When connected but the stream is not yet known, it
// tries to find or create it, bounded by ctx.
func (p *Publisher) Ready(ctx context.Context) error {
	if !p.nc.IsConnected() {
		return fmt.Errorf("%w (%s)", ErrNotConnected, p.nc.Status())
	}
	return p.EnsureStream(ctx)
}

// Close drains the connection, so that publishes already sent get their
// acks, then closes it; ctx bounds the wait.
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
