package telemetry_test

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/doorbell/doorbell/platform/telemetry"
)

func TestExportOffMakesSpansThatRecordNothing(t *testing.T) {
	tp, shutdown, err := telemetry.Setup(context.Background(), "doorbell-test", false)
	if err != nil {
		t.Fatal(err)
	}
	_, span := tp.Tracer("test").Start(context.Background(), "x")
	if span.IsRecording() || span.SpanContext().IsValid() {
		t.Error("with export off, spans record or carry a trace id that would be propagated")
	}
	span.End()
	if err := shutdown(context.Background()); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

func TestExportOnRecordsSampledSpans(t *testing.T) {
	tp, shutdown, err := telemetry.Setup(context.Background(), "doorbell-test", true)
	if err != nil {
		t.Fatal(err)
	}
	_, span := tp.Tracer("test").Start(context.Background(), "x")
	if !span.IsRecording() || !span.SpanContext().IsSampled() {
		t.Error("with export on, a root span is not recorded and sampled")
	}
	// Stopped before the span ends, so nothing is sent: there is no
	// collector here.
	if err := shutdown(context.Background()); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	span.End()
}

// exemplarOf observes 0.5 under ctx and returns the exemplar's trace_id,
// "" when there is none.
func exemplarOf(t *testing.T, ctx context.Context) string {
	t.Helper()
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x_seconds", Help: "x", Buckets: []float64{1}})
	telemetry.Observe(ctx, h, 0.5)
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.GetHistogram().GetSampleCount() != 1 {
		t.Fatalf("observed %d values, want 1", m.GetHistogram().GetSampleCount())
	}
	for _, b := range m.GetHistogram().GetBucket() {
		for _, l := range b.GetExemplar().GetLabel() {
			if l.GetName() == "trace_id" {
				return l.GetValue()
			}
		}
	}
	return ""
}

func TestObserveLinksSampledSpansOnly(t *testing.T) {
	recorded := sdktrace.NewTracerProvider(sdktrace.WithSyncer(tracetest.NewInMemoryExporter()))
	ctx, span := recorded.Tracer("test").Start(context.Background(), "x")
	defer span.End()
	if got, want := exemplarOf(t, ctx), span.SpanContext().TraceID().String(); got != want {
		t.Errorf("recorded, sampled span: exemplar trace_id %q, want %q", got, want)
	}

	unsampled := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
	ctx, span2 := unsampled.Tracer("test").Start(context.Background(), "x")
	defer span2.End()
	if got := exemplarOf(t, ctx); got != "" {
		t.Errorf("unsampled span: exemplar trace_id %q, want none", got)
	}

	// Export off: the span only carries the remote parent's context.
	remote := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled, Remote: true})
	if got := exemplarOf(t, trace.ContextWithRemoteSpanContext(context.Background(), remote)); got != "" {
		t.Errorf("remote parent only: exemplar trace_id %q, want none", got)
	}
	if got := exemplarOf(t, context.Background()); got != "" {
		t.Errorf("no span: exemplar trace_id %q, want none", got)
	}
}
