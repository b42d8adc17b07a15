package deliver

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/doorbell/doorbell/platform/natstrace"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/ledger"
)

// TracerName names the spans this package makes.
const TracerName = "github.com/doorbell/doorbell/services/mail-worker/internal/deliver"

// Span names.
const (
	spanConsume    = "consume " + eventsv1.SubjectUserAuthenticated
	spanRead       = "kv read person"
	spanWrite      = "kv write person"
	spanRender     = "render"
	spanSend       = "smtp send"
	spanDeadLetter = "publish mail.deadletter"
)

// Span attribute keys of the worker's own (the messaging.* ones follow the
// OpenTelemetry semantic conventions). None carries an address or any
// part of an email.
const (
	attrEventID     = attribute.Key("doorbell.event_id")
	attrKind        = attribute.Key("doorbell.email.kind")
	attrResult      = attribute.Key("doorbell.result")
	attrAttempt     = attribute.Key("doorbell.attempt")
	attrSMTPOutcome = attribute.Key("doorbell.smtp.outcome")
	attrReason      = attribute.Key("doorbell.deadletter.reason")
	attrDuplicate   = attribute.Key("doorbell.duplicate")
)

// startConsume starts the span of one delivery: a consumer span that
// continues the trace whose context the message carries (the gateway's
// publish span), or a new trace when it carries none.
func (h *Handler) startConsume(ctx context.Context, msg jetstream.Msg, d delivery) (context.Context, trace.Span) {
	hdr := msg.Headers()
	parent := h.propagator().Extract(ctx, natstrace.Header(hdr))
	return h.tracer().Start(parent, spanConsume,
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.destination.name", eventsv1.SubjectUserAuthenticated),
			attribute.String("messaging.consumer.group.name", d.consumer),
			attribute.String("messaging.message.id", hdr.Get(jetstream.MsgIDHeader)),
			attribute.Int64("messaging.nats.stream_sequence", int64(d.Seq)),
			attrAttempt.Int64(int64(d.Num)),
		))
}

// endConsume records the outcome of a delivery on its span. Failures
// (given up, handed back for a retry) set the status to error with the
// reason, which never quotes the relay or an address.
func endConsume(span trace.Span, eventID string, o outcome) {
	span.SetAttributes(attrEventID.String(eventID), attrResult.String(o.result))
	if o.kind != "" {
		span.SetAttributes(attrKind.String(string(o.kind)))
	}
	switch {
	case o.result == logFailed, o.result == logRetry:
		span.SetStatus(codes.Error, o.reason)
	case o.err != nil:
		span.SetStatus(codes.Error, o.reason)
	}
}

// step runs f in a child span of ctx's named name, which ends with an
// error status when f fails (a write that lost to another writer is
// marked, not failed). For the record's reads and writes.
func (h *Handler) step(ctx context.Context, name string, f func(context.Context) error) error {
	ctx, span := h.tracer().Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient))
	defer span.End()
	err := f(ctx)
	switch {
	case errors.Is(err, ledger.ErrConflict):
		span.SetAttributes(attribute.Bool("doorbell.conflict", true))
	case err != nil:
		// Bucket errors name keys (hashed user keys), never an address.
		span.SetStatus(codes.Error, err.Error())
	}
	return err
}

func (h *Handler) tracer() trace.Tracer {
	if h.Tracer != nil {
		return h.Tracer
	}
	return noop.NewTracerProvider().Tracer(TracerName)
}

func (h *Handler) propagator() propagation.TextMapPropagator {
	if h.Propagator != nil {
		return h.Propagator
	}
	return propagation.TraceContext{}
}
