package main

import (
	"bytes"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// collector is a fake OTLP/HTTP trace collector on loopback: it decodes
// every ExportTraceServiceRequest the worker posts to /v1/traces.
type collector struct {
	*httptest.Server
	mu       sync.Mutex
	requests []*collectortrace.ExportTraceServiceRequest
}

func startCollector(t *testing.T) *collector {
	t.Helper()
	c := &collector{}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		var req collectortrace.ExportTraceServiceRequest
		if err != nil || r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
			http.Error(w, "bad export", http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		c.requests = append(c.requests, &req)
		c.mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(nil)
	}))
	t.Cleanup(c.Close)
	return c
}

// exportedSpan is a span as the collector got it, with its service.name.
type exportedSpan struct {
	service string
	span    *tracev1.Span
}

func (c *collector) spans() []exportedSpan {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []exportedSpan
	for _, req := range c.requests {
		for _, rs := range req.GetResourceSpans() {
			service := ""
			for _, a := range rs.GetResource().GetAttributes() {
				if a.GetKey() == "service.name" {
					service = a.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					out = append(out, exportedSpan{service: service, span: s})
				}
			}
		}
	}
	return out
}

// TestProcessExportsSpansInThePublishersTrace: with
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set, the worker binary sends its spans
// for a message to the collector, under service.name mail-worker, in the
// trace of the message's traceparent (lower case, as the gateway writes
// it), the consume span a child of the gateway's publish span.
func TestProcessExportsSpansInThePublishersTrace(t *testing.T) {
	const (
		traceIDHex = "0af7651916cd43dd8448eb211c80319c"
		spanIDHex  = "b7ad6b7169203331"
	)
	col := startCollector(t)
	s := newStack(t)
	s.env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = col.URL + "/v1/traces"
	w := startProc(t, s.env)

	ev := event(1)
	data, err := proto.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg(eventsv1.SubjectUserAuthenticated)
	msg.Data = data
	msg.Header.Set(eventsv1.HeaderContentType, eventsv1.ContentTypeProtobuf)
	msg.Header["traceparent"] = []string{"00-" + traceIDHex + "-" + spanIDHex + "-01"}
	ctx := t.Context()
	if _, err := s.js.PublishMsg(ctx, msg, jetstream.WithMsgID(ev.EventId)); err != nil {
		t.Fatal(err)
	}
	s.smtp.WaitForMessageIDs(t, 1, waitLong)
	s.waitSettled()
	if err := w.terminate(); err != nil { // flushes the spans
		t.Fatalf("exit status after SIGTERM = %v\n%s", err, w.logs.String())
	}
	if logs := w.logs.String(); !strings.Contains(logs, "tracing on") || !strings.Contains(logs, "trace_id="+traceIDHex) {
		t.Errorf("logs lack the tracing notice or the trace id:\n%s", logs)
	}

	traceID, _ := hex.DecodeString(traceIDHex)
	parentID, _ := hex.DecodeString(spanIDHex)
	var consume *tracev1.Span
	inTrace := map[string]bool{}
	for _, es := range col.spans() {
		if es.service != "mail-worker" {
			t.Errorf("span %s from service %q, want mail-worker", es.span.GetName(), es.service)
		}
		if !bytes.Equal(es.span.GetTraceId(), traceID) {
			continue
		}
		inTrace[es.span.GetName()] = true
		if es.span.GetName() == "consume user.authenticated" {
			consume = es.span
		}
	}
	if consume == nil {
		t.Fatalf("collector got no consume span in trace %s; got %v", traceIDHex, inTrace)
	}
	if !bytes.Equal(consume.GetParentSpanId(), parentID) || consume.GetKind() != tracev1.Span_SPAN_KIND_CONSUMER {
		t.Errorf("consume span: parent %x kind %v, want parent %s, consumer", consume.GetParentSpanId(), consume.GetKind(), spanIDHex)
	}
	// A first sign-in: the claim needs no read of the record.
	for _, want := range []string{"kv write person", "render", "smtp send"} {
		if !inTrace[want] {
			t.Errorf("collector got no %s span in the trace; got %v", want, inTrace)
		}
	}
}
