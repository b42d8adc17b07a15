package deliver

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/doorbell/doorbell/platform/admin"
)

// Trace and span ids of the gateway's publish span, as its traceparent
// header carries them.
const (
	remoteTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	remoteSpanID  = "00f067aa0ba902b7"
	traceparent   = "00-" + remoteTraceID + "-" + remoteSpanID + "-01"
)

func tracing() (*sdktrace.TracerProvider, *tracetest.InMemoryExporter) {
	exp := tracetest.NewInMemoryExporter()
	return sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp)), exp
}

// spansOf returns the spans of the trace of the consume span of the
// message with eventID, consume span first; it fails when there is none.
func spansOf(t *testing.T, exp *tracetest.InMemoryExporter, eventID string) (tracetest.SpanStub, []tracetest.SpanStub) {
	t.Helper()
	var consume *tracetest.SpanStub
	spans := exp.GetSpans()
	for i, s := range spans {
		if s.Name == spanConsume && slices.Contains(s.Attributes, attrEventID.String(eventID)) {
			consume = &spans[i]
		}
	}
	if consume == nil {
		t.Fatalf("no %q span for %s among %v", spanConsume, eventID, names(spans))
	}
	var inTrace []tracetest.SpanStub
	for _, s := range spans {
		if s.SpanContext.TraceID() == consume.SpanContext.TraceID() && s.SpanContext.SpanID() != consume.SpanContext.SpanID() {
			inTrace = append(inTrace, s)
		}
	}
	return *consume, inTrace
}

func names(spans []tracetest.SpanStub) []string {
	var n []string
	for _, s := range spans {
		n = append(n, s.Name)
	}
	return n
}

func attr(s tracetest.SpanStub, key attribute.Key) (attribute.Value, bool) {
	for _, a := range s.Attributes {
		if a.Key == key {
			return a.Value, true
		}
	}
	return attribute.Value{}, false
}

// descends reports whether s is below root through spans.
func descends(s, root tracetest.SpanStub, spans []tracetest.SpanStub) bool {
	for range len(spans) + 1 {
		if s.Parent.SpanID() == root.SpanContext.SpanID() {
			return true
		}
		i := slices.IndexFunc(spans, func(p tracetest.SpanStub) bool { return p.SpanContext.SpanID() == s.Parent.SpanID() })
		if i < 0 {
			return false
		}
		s = spans[i]
	}
	return false
}

func TestConsumeContinuesThePublishersTrace(t *testing.T) {
	for _, header := range []string{"traceparent", "Traceparent"} {
		t.Run(header, func(t *testing.T) {
			tp, exp := tracing()
			h := newHarness(t, harnessOptions{tracer: tp})
			ev := signIn("evt-traced", "dev-a")
			ack := h.publishWithHeader(marshal(t, ev), ev.EventId, map[string]string{header: traceparent})
			h.smtp.WaitForMessages(t, 1, waitLong)
			h.waitSettled(ack.Sequence)
			h.stop() // every span has ended

			consume, children := spansOf(t, exp, ev.EventId)
			if consume.SpanKind != trace.SpanKindConsumer {
				t.Errorf("consume span kind %v, want consumer", consume.SpanKind)
			}
			if got := consume.SpanContext.TraceID().String(); got != remoteTraceID {
				t.Errorf("consume span in trace %s, want the publisher's %s", got, remoteTraceID)
			}
			if got := consume.Parent.SpanID().String(); got != remoteSpanID || !consume.Parent.IsRemote() {
				t.Errorf("consume span parent %s (remote %v), want the remote publish span %s", got, consume.Parent.IsRemote(), remoteSpanID)
			}
			for key, want := range map[attribute.Key]attribute.Value{
				attrEventID:                      attribute.StringValue("evt-traced"),
				attrKind:                         attribute.StringValue("welcome"),
				attrResult:                       attribute.StringValue("sent"),
				attrAttempt:                      attribute.Int64Value(1),
				"messaging.message.id":           attribute.StringValue("evt-traced"),
				"messaging.destination.name":     attribute.StringValue("user.authenticated"),
				"messaging.nats.stream_sequence": attribute.Int64Value(int64(ack.Sequence)),
			} {
				if got, ok := attr(consume, key); !ok || got != want {
					t.Errorf("consume span %s = %v, want %v", key, got.String(), want.String())
				}
			}
			if consume.Status.Code == codes.Error {
				t.Errorf("consume span status %v for a sent email", consume.Status)
			}

			// A first sign-in: claimed on the guess that there is no
			// record, which the claim's compare-and-set confirms; once
			// sent, the acknowledgement records it (no second write).
			if got, want := names(children), []string{spanWrite, spanRender, spanSend}; !slices.Equal(got, want) {
				t.Errorf("spans under the delivery %v, want %v", got, want)
			}
			for _, want := range []string{spanWrite, spanRender, spanSend} {
				i := slices.IndexFunc(children, func(s tracetest.SpanStub) bool { return s.Name == want })
				if i < 0 {
					t.Errorf("no %q span in the trace; got %v", want, names(children))
					continue
				}
				if !descends(children[i], consume, children) {
					t.Errorf("%q span is not below the consume span", want)
				}
			}
			send := children[slices.IndexFunc(children, func(s tracetest.SpanStub) bool { return s.Name == spanSend })]
			if got, _ := attr(send, attrSMTPOutcome); got.AsString() != "success" {
				t.Errorf("smtp send outcome %q, want success", got.AsString())
			}
			for _, s := range append(children, consume) {
				for _, a := range s.Attributes {
					if strings.Contains(a.Value.String(), "ann@example.com") || strings.Contains(a.Value.String(), "Ann Example") {
						t.Errorf("span %s attribute %s shows personal data: %s", s.Name, a.Key, a.Value.String())
					}
				}
			}
		})
	}
}

func TestConsumeWithoutTraceContextStartsATrace(t *testing.T) {
	tp, exp := tracing()
	h := newHarness(t, harnessOptions{tracer: tp})
	ev := signIn("evt-untraced", "dev-a")
	ack := h.publish(ev, ev.EventId)
	h.smtp.WaitForMessages(t, 1, waitLong)
	h.waitSettled(ack.Sequence)
	h.stop()

	consume, children := spansOf(t, exp, ev.EventId)
	if consume.Parent.IsValid() {
		t.Errorf("consume span has parent %s, want a root span", consume.Parent.SpanID())
	}
	if !consume.SpanContext.IsValid() || consume.SpanContext.TraceID().String() == remoteTraceID {
		t.Errorf("consume span trace %s, want a new one", consume.SpanContext.TraceID())
	}
	if !slices.ContainsFunc(children, func(s tracetest.SpanStub) bool { return s.Name == spanSend }) {
		t.Errorf("no smtp send span in the new trace; got %v", names(children))
	}
}

func TestFailuresShowInTheTrace(t *testing.T) {
	tp, exp := tracing()
	h := newHarness(t, harnessOptions{tracer: tp})
	h.smtp.RejectRecipient("ann@example.com", 550, "5.1.1")
	ev := signIn("evt-rejected", "dev-a")
	ack := h.publishWithHeader(marshal(t, ev), ev.EventId, map[string]string{"traceparent": traceparent})
	h.waitSettled(ack.Sequence)
	h.stop()

	consume, children := spansOf(t, exp, ev.EventId)
	if consume.Status.Code != codes.Error || !strings.Contains(consume.Status.Description, "permanent: smtp 550 5.1.1 at rcpt to") {
		t.Errorf("consume span status %+v, want an error naming the rejection", consume.Status)
	}
	if got, _ := attr(consume, attrResult); got.AsString() != "failed" {
		t.Errorf("consume span result %q, want failed", got.AsString())
	}
	i := slices.IndexFunc(children, func(s tracetest.SpanStub) bool { return s.Name == spanSend })
	if i < 0 {
		t.Fatalf("no smtp send span; got %v", names(children))
	}
	if got, _ := attr(children[i], attrSMTPOutcome); children[i].Status.Code != codes.Error || got.AsString() != "permanent" {
		t.Errorf("smtp send span: status %+v outcome %q, want an error, permanent", children[i].Status, got.AsString())
	}
	i = slices.IndexFunc(children, func(s tracetest.SpanStub) bool { return s.Name == spanDeadLetter })
	if i < 0 {
		t.Fatalf("no %q span; got %v", spanDeadLetter, names(children))
	}
	if got, _ := attr(children[i], attrReason); got.AsString() != "permanent" || children[i].SpanKind != trace.SpanKindProducer {
		t.Errorf("dead-letter span: reason %q kind %v", got.AsString(), children[i].SpanKind)
	}
	for _, s := range append(children, consume) {
		if strings.Contains(s.Status.Description, "ann@example.com") {
			t.Errorf("span %s status shows the address: %s", s.Name, s.Status.Description)
		}
	}
}

// scrape reads the registry as Prometheus does when it asks for
// OpenMetrics, the format that carries exemplars.
func scrape(t *testing.T, h *harness) string {
	t.Helper()
	srv := httptest.NewServer(admin.Handler(h.reg, nil, slog.New(slog.DiscardHandler)))
	defer srv.Close()
	req, err := http.NewRequest(http.MethodGet, srv.URL+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/openmetrics-text;version=1.0.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") {
		t.Fatalf("Content-Type %q, want OpenMetrics", ct)
	}
	return string(body)
}

func TestLatencyHistogramsLinkToTheTrace(t *testing.T) {
	tp, _ := tracing()
	h := newHarness(t, harnessOptions{tracer: tp})
	ev := signIn("evt-exemplar", "dev-a")
	ack := h.publishWithHeader(marshal(t, ev), ev.EventId, map[string]string{"traceparent": traceparent})
	h.smtp.WaitForMessages(t, 1, waitLong)
	h.waitSettled(ack.Sequence)

	body := scrape(t, h)
	exemplar := fmt.Sprintf(`# {trace_id="%s"}`, remoteTraceID)
	for _, metric := range []string{"doorbell_mailworker_smtp_send_duration_seconds_bucket", "doorbell_mailworker_login_to_email_seconds_bucket"} {
		found := false
		for line := range strings.Lines(body) {
			if strings.HasPrefix(line, metric) && strings.Contains(line, exemplar) {
				found = true
			}
		}
		if !found {
			t.Errorf("no %s line with exemplar %s in:\n%s", metric, exemplar, body)
		}
	}
	if !strings.Contains(h.logs.String(), "trace_id="+remoteTraceID) {
		t.Errorf("the log line lacks the trace id:\n%s", h.logs.String())
	}
}

func TestWithoutTracingNoExemplars(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ev := signIn("evt-no-exemplar", "dev-a")
	// The gateway traces, the worker does not: its spans are not stored,
	// so its histograms must not point at them.
	ack := h.publishWithHeader(marshal(t, ev), ev.EventId, map[string]string{"traceparent": traceparent})
	h.smtp.WaitForMessages(t, 1, waitLong)
	h.waitSettled(ack.Sequence)

	body := scrape(t, h)
	if !strings.Contains(body, "doorbell_mailworker_smtp_send_duration_seconds_count 1") {
		t.Fatalf("the send was not observed:\n%s", body)
	}
	if strings.Contains(body, "trace_id") {
		t.Errorf("exemplars with tracing off:\n%s", body)
	}
}

func TestEmailAddressesAreLoggedOnlyWhenAsked(t *testing.T) {
	for _, logEmails := range []bool{false, true} {
		t.Run(fmt.Sprint("WORKER_LOG_EMAILS=", logEmails), func(t *testing.T) {
			h := newHarness(t, harnessOptions{logEmails: logEmails})
			ev := signIn("evt-logged", "dev-a")
			ack := h.publish(ev, ev.EventId)
			h.smtp.WaitForMessages(t, 1, waitLong)
			h.waitSettled(ack.Sequence)
			logs := h.logs.String()
			if !strings.Contains(logs, "event_id=evt-logged kind=welcome result=sent") {
				t.Fatalf("no line for the email:\n%s", logs)
			}
			if got := strings.Contains(logs, "email=ann@example.com"); got != logEmails {
				t.Errorf("address in the info-level log: %v, want %v\n%s", got, logEmails, logs)
			}
		})
	}
}
