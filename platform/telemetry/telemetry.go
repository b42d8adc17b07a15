// Package telemetry builds the OpenTelemetry tracer provider a Doorbell
// service's parts make their spans with, and links latency histograms to
// traces. Both services use it, so that a span is exported, named and
// linked from a histogram by the same rules in each.
//
// Export is off unless configured (each service's Config.TraceExport):
// spans are then still made, by a no-op provider that records nothing and
// propagates nothing, at next to no cost. When on, spans go in batches to
// an OTLP/HTTP collector that the standard OTEL_EXPORTER_OTLP_* variables
// describe (endpoint, headers, TLS, timeout, http/protobuf or http/json);
// the exporter and SDK read those, and OTEL_TRACES_SAMPLER,
// OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME, from the process
// environment themselves.
package telemetry

import (
	"context"
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Setup returns the tracer provider and the function that flushes and
// stops it, which main calls last on shutdown, bounded by its ctx. With
// export off it returns a no-op provider. serviceName is the service.name
// of the spans unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names
// another. Setup does not contact the collector: an unreachable one costs
// dropped spans and an error from the OpenTelemetry error handler, never a
// failed sign-in or an email.
func Setup(ctx context.Context, serviceName string, export bool) (trace.TracerProvider, func(context.Context) error, error) {
	if !export {
		return noop.NewTracerProvider(), func(context.Context) error { return nil }, nil
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("telemetry: otlp exporter: %w", err)
	}
	// Later sources win: the default name, then the environment.
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", serviceName)),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		_ = exp.Shutdown(ctx)
		return nil, nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return tp, tp.Shutdown, nil
}

// Observe records v on o, with the trace id of ctx's span as an exemplar
// when that span is recorded and sampled (so the trace is exported and a
// slow bucket links to it). A span that only carries a remote parent's
// context, as with export off, adds no exemplar: its trace id might name
// a trace nobody stored.
func Observe(ctx context.Context, o prometheus.Observer, v float64) {
	span := trace.SpanFromContext(ctx)
	if eo, ok := o.(prometheus.ExemplarObserver); ok && span.IsRecording() && span.SpanContext().IsSampled() {
		eo.ObserveWithExemplar(v, prometheus.Labels{"trace_id": span.SpanContext().TraceID().String()})
		return
	}
	o.Observe(v)
}
