package publish_test

import (
	"context"
	"net/http"
	"slices"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/doorbell/doorbell/platform/natstest"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/publish"
)

func tracing() (*sdktrace.TracerProvider, *tracetest.InMemoryExporter) {
	exp := tracetest.NewInMemoryExporter()
	return sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp)), exp
}

func withTracing(tp trace.TracerProvider) func(*publish.Config) {
	return func(c *publish.Config) { c.TracerProvider = tp }
}

// extracted is the span context a reader of the contract finds in h: under
// the lower-case name docs/design.md gives, read case-sensitively as NATS
// headers are, and through http.Header as Go's HeaderCarrier reads them.
func extracted(t *testing.T, h map[string][]string) (contract, viaHTTPHeader trace.SpanContext) {
	t.Helper()
	tc := propagation.TraceContext{}
	lower := propagation.MapCarrier{}
	for _, k := range []string{"traceparent", "tracestate"} {
		if v := h[k]; len(v) > 0 {
			lower[k] = v[0]
		}
	}
	contract = trace.SpanContextFromContext(tc.Extract(context.Background(), lower))
	viaHTTPHeader = trace.SpanContextFromContext(tc.Extract(context.Background(), propagation.HeaderCarrier(http.Header(h))))
	return contract, viaHTTPHeader
}

func TestMessagesCarryTheCallersTraceContext(t *testing.T) {
	srv := natstest.Run(t)
	tp, exp := tracing()
	h := newHarness(t, srv.ClientURL(), withTracing(tp))
	waitConnected(testCtx(t), t, h)
	ctx, parent := tp.Tracer("test").Start(testCtx(t), "login.callback")
	ack, err := h.pub.Publish(ctx, event("0190f0c2-0000-7000-8000-000000000601"))
	if err != nil {
		t.Fatal(err)
	}
	parent.End()
	msg, err := mustStream(t, srv.ClientURL()).GetMsg(testCtx(t), ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}

	spans := exp.GetSpans()
	i := slices.IndexFunc(spans, func(s tracetest.SpanStub) bool { return s.Name == "publish user.authenticated" })
	if i < 0 {
		t.Fatalf("no publish span among %d spans", len(spans))
	}
	pubSpan := spans[i]
	if pubSpan.Parent.SpanID() != parent.SpanContext().SpanID() || pubSpan.SpanKind != trace.SpanKindProducer {
		t.Errorf("publish span: parent %s kind %v; want a producer span under the caller's", pubSpan.Parent.SpanID(), pubSpan.SpanKind)
	}
	if !slices.Contains(pubSpan.Attributes, attribute.String("messaging.message.id", "0190f0c2-0000-7000-8000-000000000601")) {
		t.Errorf("publish span attributes %v lack the event id", pubSpan.Attributes)
	}

	sc, _ := extracted(t, msg.Header)
	if sc.TraceID() != parent.SpanContext().TraceID() || sc.SpanID() != pubSpan.SpanContext.SpanID() || !sc.IsSampled() {
		t.Errorf("traceparent: trace %s span %s, want trace %s span %s (the publish span)",
			sc.TraceID(), sc.SpanID(), parent.SpanContext().TraceID(), pubSpan.SpanContext.SpanID())
	}
	// One spelling on the wire: the contract's lower-case header, once.
	for _, k := range []string{"Traceparent", "Tracestate"} {
		if v, ok := msg.Header[k]; ok {
			t.Errorf("header %s = %v next to the contract's lower-case one", k, v)
		}
	}
	if got := msg.Header["traceparent"]; len(got) != 1 {
		t.Errorf("traceparent header values = %v, want exactly one", got)
	}
}

func TestWithoutTracingMessagesCarryNoTraceContext(t *testing.T) {
	srv := natstest.Run(t)
	h := newHarness(t, srv.ClientURL())
	waitConnected(testCtx(t), t, h)
	ack, err := h.pub.Publish(testCtx(t), event("0190f0c2-0000-7000-8000-000000000602"))
	if err != nil {
		t.Fatal(err)
	}
	msg, err := mustStream(t, srv.ClientURL()).GetMsg(testCtx(t), ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	for k := range msg.Header {
		if http.CanonicalHeaderKey(k) == "Traceparent" || http.CanonicalHeaderKey(k) == "Tracestate" {
			t.Errorf("header %s = %v with tracing off", k, msg.Header[k])
		}
	}
}

// TestSpooledEventsKeepTheirTraceContext: the drained message carries the
// sign-in's trace, and the drain is a span of that trace.
func TestSpooledEventsKeepTheirTraceContext(t *testing.T) {
	addr := freeAddr(t)
	tp, exp := tracing()
	sp := openSpool(t, t.TempDir(), 10, &syncBuffer{})
	h := newHarness(t, "nats://"+addr, withSpool(sp), withTracing(tp))
	h.run(t)
	ctx, parent := tp.Tracer("test").Start(testCtx(t), "login.callback")
	if ack, err := h.pub.Publish(ctx, event("0190f0c2-0000-7000-8000-000000000603")); err != nil || !ack.Spooled {
		t.Fatalf("Publish = %+v, %v; want spooled", ack, err)
	}
	parent.End()

	srv := natstest.RunOn(t, portOf(t, addr))
	waitFor(testCtx(t), t, "the spool to drain", func() bool { return sp.Len() == 0 })
	msgs := streamMessages(testCtx(t), t, inspector(t, srv.ClientURL()))
	if len(msgs) != 1 {
		t.Fatalf("%d messages, want 1", len(msgs))
	}
	if sc, _ := extracted(t, msgs[0].Header); sc.TraceID() != parent.SpanContext().TraceID() {
		t.Errorf("drained message's trace %s, want the sign-in's %s", sc.TraceID(), parent.SpanContext().TraceID())
	}
	// The drain span ends just after the spool file is removed: wait for it.
	drainSpans := func() []tracetest.SpanStub {
		var out []tracetest.SpanStub
		for _, s := range exp.GetSpans() {
			// Attempts that failed while NATS was starting are spans too.
			if slices.Contains(s.Attributes, attribute.Bool("doorbell.from_spool", true)) && s.Status.Code != codes.Error {
				out = append(out, s)
			}
		}
		return out
	}
	waitFor(testCtx(t), t, "the successful drain span", func() bool { return len(drainSpans()) > 0 })
	drains := drainSpans()
	for _, s := range drains {
		if s.SpanContext.TraceID() != parent.SpanContext().TraceID() {
			t.Errorf("drain span in trace %s, want %s", s.SpanContext.TraceID(), parent.SpanContext().TraceID())
		}
	}
	if len(drains) != 1 {
		t.Errorf("%d successful drain spans, want 1", len(drains))
	}
}

func mustStream(t *testing.T, url string) jetstream.Stream {
	t.Helper()
	s, err := inspector(t, url).Stream(testCtx(t), eventsv1.StreamAuthEvents)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
