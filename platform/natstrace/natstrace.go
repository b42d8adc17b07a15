// Package natstrace carries W3C trace context in NATS message headers, so
// that the auth-gateway's publish span and the mail-worker's consume span
// belong to one trace.
package natstrace

import (
	"net/http"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
)

// Header lets a propagator read and write NATS message headers.
// NATS headers are case-sensitive and the contract (docs/design.md) names the
// trace context headers in lower case, as W3C Trace Context does
// (traceparent, tracestate): Set writes exactly that spelling, once. Get
// also accepts the canonical http.Header form (Traceparent) from other
// producers.
type Header nats.Header

var _ propagation.TextMapCarrier = Header(nil)

// Get returns the first value of key, spelt in lower case or, failing
// that, in the canonical http.Header form.
func (c Header) Get(key string) string {
	if v := nats.Header(c).Get(strings.ToLower(key)); v != "" {
		return v
	}
	return http.Header(c).Get(key)
}

// Set replaces the values of key, spelt in lower case.
func (c Header) Set(key, value string) {
	nats.Header(c).Set(strings.ToLower(key), value)
}

// Keys lists the header names as they are spelt.
func (c Header) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
