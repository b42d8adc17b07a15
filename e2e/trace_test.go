package e2e

import (
	"context"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// otlpCollector is a stand-in OpenTelemetry collector on loopback: it
// accepts OTLP/HTTP protobuf exports and keeps every span with the
// service.name of its sender.
type otlpCollector struct {
	*httptest.Server
	mu    sync.Mutex
	spans []collectedSpan
}

type collectedSpan struct {
	service string
	span    *tracev1.Span
}

func startOTLPCollector(t *testing.T) *otlpCollector {
	t.Helper()
	c := &otlpCollector{}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		var req collectortrace.ExportTraceServiceRequest
		if err != nil || r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
			http.Error(w, "not an OTLP trace export", http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		for _, rs := range req.ResourceSpans {
			service := ""
			for _, a := range rs.GetResource().GetAttributes() {
				if a.Key == "service.name" {
					service = a.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.ScopeSpans {
				for _, sp := range ss.Spans {
					c.spans = append(c.spans, collectedSpan{service: service, span: sp})
				}
			}
		}
		c.mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	t.Cleanup(c.Close)
	return c
}

// trace returns the spans of one trace, by "service/span name".
func (c *otlpCollector) trace(traceID string) map[string]*tracev1.Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]*tracev1.Span{}
	for _, s := range c.spans {
		if hex.EncodeToString(s.span.TraceId) == traceID {
			out[s.service+"/"+s.span.Name] = s.span
		}
	}
	return out
}

// One trace covers a sign-in from the gateway's callback to the SMTP
// server accepting the email: the gateway's publish span is the parent of
// the worker's consume span, as carried by the traceparent header.
func TestOneTraceFromSignInToEmail(t *testing.T) {
	col := startOTLPCollector(t)
	s := startStack(t,
		"OTEL_EXPORTER_OTLP_ENDPOINT="+col.URL,
		"OTEL_BSP_SCHEDULE_DELAY=100",
	)
	ctx := context.Background()
	const email = "barbara@example.test"
	newBrowser(t).signIn(s.publicURL, email, true)
	eventually(t, 60*time.Second, "the welcome email", func() bool { return len(s.mailTo(email)) == 1 })
	s.waitConsumerIdle(ctx)

	js := s.jetStream()
	raw, err := js.Stream(ctx, "AUTH_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := raw.GetLastMsgForSubject(ctx, "user.authenticated")
	if err != nil {
		t.Fatal(err)
	}
	tp := msg.Header.Get("traceparent")
	parts := strings.Split(tp, "-")
	if len(parts) != 4 {
		t.Fatalf("published message has traceparent %q, want a W3C trace context", tp)
	}
	traceID := parts[1]

	want := []string{
		"auth-gateway/login.callback",
		"auth-gateway/publish user.authenticated",
		"mail-worker/consume user.authenticated",
		"mail-worker/smtp send",
	}
	var spans map[string]*tracev1.Span
	eventually(t, 30*time.Second, "both services' spans to reach the collector", func() bool {
		spans = col.trace(traceID)
		for _, name := range want {
			if spans[name] == nil {
				return false
			}
		}
		return true
	})
	publish, consume := spans["auth-gateway/publish user.authenticated"], spans["mail-worker/consume user.authenticated"]
	if hex.EncodeToString(consume.ParentSpanId) != hex.EncodeToString(publish.SpanId) {
		t.Errorf("the worker's consume span has parent %x, want the gateway's publish span %x",
			consume.ParentSpanId, publish.SpanId)
	}
	for name, sp := range spans {
		for _, a := range sp.Attributes {
			if strings.Contains(a.GetValue().GetStringValue(), email) {
				t.Errorf("span %s attribute %s holds the email address", name, a.Key)
			}
		}
	}
}
