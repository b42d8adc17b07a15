// Package telemetry builds the OpenTelemetry tracer provider the worker's
// parts make their spans with, and links latency histograms to traces.
//
// Export is off unless configured (see config.Config.TraceExport): spans
// are then still made, by a no-op provider that records nothing, at next
// to no cost. When on, spans go in batches to an OTLP/HTTP collector that
// the standard OTEL_EXPORTER_OTLP_* variables describe (endpoint, headers,
// TLS, timeout, http/protobuf or http/json); the exporter and SDK read
// those, and OTEL_TRACES_SAMPLER, OTEL_RESOURCE_ATTRIBUTES and
// OTEL_SERVICE_NAME, from the process environment themselves.
//
// (A copy of the auth-gateway's package of the same name, with the
// worker's service name: the services share no code.)
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// DefaultServiceName is the service.name of the worker's spans unless
// OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names another.
const DefaultServiceName = "mail-worker"

// Setup returns the tracer provider and the function that flushes and
// stops it, which main calls last on shutdown, bounded by its ctx. With
// export off it returns a no-op provider. Setup does not contact the
// collector: an unreachable one costs dropped spans and an error from the
// OpenTelemetry error handler, never an email.
func Setup(ctx context.Context, export bool) (trace.TracerProvider, func(context.Context) error, error) {
	if !export {
		return noop.NewTracerProvider(), func(context.Context) error { return nil }, nil
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("telemetry: otlp exporter: %w", err)
	}
	// Later sources win: the default name, then the environment.
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", DefaultServiceName)),
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

// NATSHeader lets a propagator read and write NATS message headers.
// NATS headers are case-sensitive; the contract (DESIGN.md) names the
// trace context headers in lower case, as W3C Trace Context does
// (traceparent, tracestate), and the auth-gateway writes them so. Get also
// accepts the canonical http.Header form (Traceparent) from other
// producers; Set writes the lower-case spelling.
type NATSHeader nats.Header

var _ propagation.TextMapCarrier = NATSHeader(nil)

func (c NATSHeader) Get(key string) string {
	if v := nats.Header(c).Get(strings.ToLower(key)); v != "" {
		return v
	}
	return http.Header(c).Get(key)
}

func (c NATSHeader) Set(key, value string) {
	nats.Header(c).Set(strings.ToLower(key), value)
}

func (c NATSHeader) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
