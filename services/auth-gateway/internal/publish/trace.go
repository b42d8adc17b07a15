package publish

import (
	"net/http"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// headerCarrier lets a propagator read and write NATS message headers.
// NATS headers are case-sensitive and the contract (DESIGN.md) names the
// trace context headers in lower case, as W3C Trace Context does
// (traceparent, tracestate): Set writes exactly that spelling, once. Get
// also accepts the canonical http.Header form (Traceparent) from other
// producers.
type headerCarrier nats.Header

var _ propagation.TextMapCarrier = headerCarrier(nil)

func (c headerCarrier) Get(key string) string {
	if v := nats.Header(c).Get(strings.ToLower(key)); v != "" {
		return v
	}
	return http.Header(c).Get(key)
}

func (c headerCarrier) Set(key, value string) {
	nats.Header(c).Set(strings.ToLower(key), value)
}

func (c headerCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// observe records v on o, with the trace id as an exemplar when sc is
// sampled, so that a slow bucket links to a trace.
func observe(o prometheus.Observer, v float64, sc trace.SpanContext) {
	if eo, ok := o.(prometheus.ExemplarObserver); ok && sc.IsSampled() {
		eo.ObserveWithExemplar(v, prometheus.Labels{"trace_id": sc.TraceID().String()})
		return
	}
	o.Observe(v)
}
