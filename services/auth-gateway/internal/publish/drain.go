package publish

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"github.com/doorbell/doorbell/platform/natstrace"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/spool"
)

// ErrSpooling is what Ready returns while NATS is not usable but the spool
// has room, so sign-ins still succeed. Its Degraded method returns true,
// which /readyz reads as "usable, but say so".
var ErrSpooling error = degraded("down, spooling")

type degraded string

func (d degraded) Error() string  { return string(d) }
func (d degraded) Degraded() bool { return true }

// How long Run waits between passes over the spool: drainPoll while all is
// well, from drainRetryMin doubling up to drainRetryMax after failures. A
// (re)connection to NATS starts a pass at once.
const (
	drainPoll     = time.Second
	drainRetryMin = time.Second
	drainRetryMax = 30 * time.Second
)

// Run publishes spooled events, oldest first, until ctx is cancelled; it
// returns at once when there is no spool. Start it once, and stop it before
// Close. It picks up what a previous run left in the spool.
//
// Each event goes out with the headers it was spooled with, so with the
// same Nats-Msg-Id: JetStream drops it as a duplicate if an earlier attempt
// did store it within the stream's duplicate window (the mail-worker
// suppresses later duplicates by event id). A file is removed only after
// JetStream acknowledged its event. While NATS is down Run waits, longer
// after each failed pass, and starts again as soon as the connection is
// back. An event being published when ctx is cancelled is finished first,
// within Config.Timeout. Unreadable files are moved aside (see spool), and
// so are events JetStream refuses for good (ErrRefused), with an error in
// the log, so that one of them does not hold up the rest.
func (p *Publisher) Run(ctx context.Context) {
	if p.spool == nil {
		return
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-p.connected:
		}
		wait := drainPoll
		if err := p.drain(ctx); err != nil {
			failures++
			wait = min(drainRetryMin<<min(failures-1, 10), drainRetryMax)
			level := p.log.Warn
			if errors.Is(err, ErrNotConnected) {
				level = p.log.Debug // said once by the disconnect handler
			}
			level("spooled events wait: NATS or the spool is not usable", "error", err,
				"spool_depth", p.spool.Len(), "retry_in", wait.String())
		} else {
			failures = 0
		}
		timer.Reset(wait)
	}
}

// wake starts a pass of Run now, if it is waiting.
func (p *Publisher) wake() {
	select {
	case p.connected <- struct{}{}:
	default:
	}
}

// drain publishes spooled events until the spool is empty, a publish
// fails, or ctx is cancelled.
func (p *Publisher) drain(ctx context.Context) error {
	for ctx.Err() == nil {
		e, ok := p.spool.Oldest()
		if !ok {
			return nil
		}
		if !p.nc.IsConnected() {
			return ErrNotConnected
		}
		msg, err := p.load(e)
		if err != nil {
			return err
		}
		if msg == nil {
			continue // set aside
		}
		if err := p.drainOne(ctx, e, msg); errors.Is(err, ErrRefused) {
			// Retrying it would hold up every event behind it.
			p.log.Error("spooled event refused for good by JetStream; set aside in bad/", "event_id", e.ID, "error", err)
			p.spool.SetAside(e, err.Error())
		} else if err != nil {
			return err
		}
	}
	return nil
}

// load reads e back as a message. It returns nil and no error when e was
// set aside because it is not a usable event.
func (p *Publisher) load(e spool.Entry) (*nats.Msg, error) {
	m, err := p.spool.Load(e)
	switch {
	case errors.Is(err, spool.ErrCorrupt):
		p.spool.SetAside(e, err.Error())
		return nil, nil
	case errors.Is(err, fs.ErrNotExist):
		// Deleted by someone else: nothing left to publish.
		_ = p.spool.Remove(e)
		p.log.Warn("spooled event vanished before it was published", "event_id", e.ID)
		return nil, nil
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EISDIR):
		// Not the gateway's to read (a file moved back from bad/ with
		// another owner) or not a file: waiting would hold up every
		// event behind it.
		p.spool.SetAside(e, err.Error())
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("read spooled event %s: %w", e.ID, err)
	}
	var ev eventsv1.UserAuthenticated
	if err := proto.Unmarshal(m.Data, &ev); err != nil || ev.GetEventId() != e.ID ||
		m.Subject != eventsv1.SubjectUserAuthenticated || nats.Header(m.Header).Get(jetstream.MsgIDHeader) != e.ID {
		p.spool.SetAside(e, "not a UserAuthenticated event for "+eventsv1.SubjectUserAuthenticated+" with this event id")
		return nil, nil
	}
	return &nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data}, nil
}

// drainOne publishes one spooled event and removes it once acknowledged.
// Its span continues the trace of the sign-in that spooled it.
func (p *Publisher) drainOne(ctx context.Context, e spool.Entry, msg *nats.Msg) error {
	parent := p.propagator.Extract(ctx, natstrace.Header(msg.Header))
	sctx, span := p.tracer.Start(parent, "publish "+eventsv1.SubjectUserAuthenticated,
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(append(spanAttributes(e.ID), attribute.Bool("doorbell.from_spool", true))...))
	defer span.End()
	pctx, cancel := context.WithTimeout(context.WithoutCancel(sctx), p.cfg.Timeout)
	defer cancel()
	ack, err := p.send(pctx, msg)
	if err != nil {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(sctx), p.cfg.Timeout)
		err = p.refusedForNoStream(lctx, err, msg.Subject)
		cancel()
		span.SetStatus(codes.Error, err.Error())
		return fmt.Errorf("spooled %w", err)
	}
	p.metrics.published.Inc()
	p.metrics.drained.Inc()
	span.SetAttributes(attribute.Int64("messaging.nats.stream_sequence", int64(ack.Sequence)),
		attribute.Bool("doorbell.duplicate", ack.Duplicate))
	if err := p.spool.Remove(e); err != nil {
		p.log.Error("spooled event published but its file could not be deleted; it is published again (and deduplicated) after the next start",
			"event_id", e.ID, "error", err)
	}
	p.log.Info("spooled event published",
		"event_id", e.ID, "stream", ack.Stream, "seq", ack.Sequence, "duplicate", ack.Duplicate,
		"spooled_for", time.Since(e.Spooled).Round(time.Millisecond).String())
	return nil
}
