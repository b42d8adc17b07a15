package natstrace_test

import (
	"context"
	"net/http"
	"slices"
	"testing"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/doorbell/doorbell/platform/natstrace"
)

const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func TestInjectWritesTheContractsLowerCaseNamesOnce(t *testing.T) {
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0x4b, 0xf9}, SpanID: trace.SpanID{1}, TraceFlags: trace.FlagsSampled})
	h := nats.Header{}
	propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(context.Background(), sc), natstrace.Header(h))
	if got := h.Values("traceparent"); len(got) != 1 {
		t.Errorf("traceparent values %q, want one", got)
	}
	if keys := natstrace.Header(h).Keys(); !slices.Equal(keys, []string{"traceparent"}) {
		t.Errorf("header names %q, want only traceparent (no canonical Traceparent as well)", keys)
	}
}

func TestExtractReadsBothSpellings(t *testing.T) {
	for name, h := range map[string]nats.Header{
		"the contract's lower case": {"traceparent": {traceparent}},
		"http.Header's canonical":   nats.Header(http.Header{"Traceparent": {traceparent}}),
	} {
		t.Run(name, func(t *testing.T) {
			ctx := propagation.TraceContext{}.Extract(context.Background(), natstrace.Header(h))
			if got := trace.SpanContextFromContext(ctx).TraceID().String(); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
				t.Errorf("trace id %q, want the traceparent's", got)
			}
		})
	}
}
