package publish_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"github.com/doorbell/doorbell/platform/natstest"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// BenchmarkMessage measures encoding one sign-in's event for JetStream: the
// protobuf body, the contract's headers and the caller's trace context,
// without tracing (nothing to inject) and with a sampled span (traceparent).
// No NATS in the loop: the server only lets the publisher be built.
func BenchmarkMessage(b *testing.B) {
	h := newHarness(b, natstest.Run(b).ClientURL())
	ev := event("0190f0c2-0000-7000-8000-000000000001")
	ev.Issuer, ev.Subject, ev.Provider = "https://accounts.google.com", "108123456789012345678", "google"
	ev.Client = &eventsv1.Client{
		Ip:             "203.0.113.7",
		UserAgent:      "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:140.0) Gecko/20100101 Firefox/140.0",
		DeviceId:       "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		AcceptLanguage: "en-GB,en;q=0.9,de;q=0.8",
	}
	traced := trace.ContextWithSpanContext(b.Context(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
		TraceFlags: trace.FlagsSampled,
	}))
	for _, c := range []struct {
		name        string
		ctx         context.Context
		traceparent string
	}{
		{"untraced", b.Context(), ""},
		{"traced", traced, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
	} {
		b.Run(c.name, func(b *testing.B) {
			msg, err := h.pub.Message(c.ctx, ev)
			if err != nil {
				b.Fatal(err)
			}
			var got eventsv1.UserAuthenticated
			if err := proto.Unmarshal(msg.Data, &got); err != nil || !proto.Equal(&got, ev) {
				b.Fatalf("body = %v (%v), want the event", &got, err)
			}
			if msg.Header.Get("Nats-Msg-Id") != ev.EventId || msg.Header.Get("ce-time") != "2026-05-01T12:00:00.123456789Z" ||
				msg.Header.Get("traceparent") != c.traceparent {
				b.Fatalf("headers = %v", msg.Header)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := h.pub.Message(c.ctx, ev); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
