package telemetry_test

import (
	"context"
	"testing"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/telemetry"
)

func TestExportOffMakesSpansThatRecordNothing(t *testing.T) {
	tp, shutdown, err := telemetry.Setup(context.Background(), false)
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
	tp, shutdown, err := telemetry.Setup(context.Background(), true)
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
