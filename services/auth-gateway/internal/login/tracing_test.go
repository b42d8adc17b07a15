package login_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/oauth2-proxy/mockoidc"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/doorbell/doorbell/platform/admin"
)

// spanNamed returns the only span called name, failing otherwise.
func spanNamed(t *testing.T, spans tracetest.SpanStubs, name string) tracetest.SpanStub {
	t.Helper()
	var found []tracetest.SpanStub
	for _, s := range spans {
		if s.Name == name {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d spans called %q, want 1", len(found), name)
	}
	return found[0]
}

// childrenOf returns the names of the spans whose parent is span, sorted.
func childrenOf(spans tracetest.SpanStubs, span tracetest.SpanStub) []string {
	var names []string
	for _, s := range spans {
		if s.Parent.SpanID() == span.SpanContext.SpanID() && s.Parent.TraceID() == span.SpanContext.TraceID() {
			names = append(names, s.Name)
		}
	}
	slices.Sort(names)
	return names
}

// spanText is everything a span says that goes to a collector.
func spanText(s tracetest.SpanStub) string {
	parts := []string{s.Name, s.Status.Description}
	for _, a := range s.Attributes {
		parts = append(parts, string(a.Key), a.Value.String())
	}
	for _, e := range s.Events {
		parts = append(parts, e.Name)
		for _, a := range e.Attributes {
			parts = append(parts, a.Value.String())
		}
	}
	return strings.Join(parts, "\n")
}

func TestSignInIsTracedFromLoginToTheMessage(t *testing.T) {
	tests := []struct {
		name string
		user mockoidc.User
		// callbackChildren are the spans under the callback span.
		callbackChildren []string
	}{
		{
			name:             "email in the ID token",
			user:             alice(),
			callbackChildren: []string{"oauth2.exchange", "oidc.verify", "publish user.authenticated"},
		},
		{
			name: "email from UserInfo",
			user: &testUser{sub: "u4", userinfo: map[string]any{"email": "alice@example.com", "email_verified": true}},
			callbackChildren: []string{
				"oauth2.exchange", "oidc.userinfo", "oidc.verify", "publish user.authenticated",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGateway(t, withTracing())
			g.idp.QueueUser(tt.user)
			b := g.browser()
			cb := b.begin("")
			resp := b.finish(cb, nil)
			if resp.StatusCode != http.StatusFound {
				t.Fatalf("sign-in: %d %s", resp.StatusCode, resp.body)
			}
			spans := g.spans.GetSpans()

			start := spanNamed(t, spans, "login.start")
			if start.Parent.IsValid() || start.SpanKind != trace.SpanKindServer {
				t.Errorf("login.start: parent %v kind %v, want a root server span", start.Parent.SpanID(), start.SpanKind)
			}
			if got := childrenOf(spans, start); !slices.Equal(got, []string{"oidc.discovery"}) {
				t.Errorf("spans under login.start = %v, want the discovery", got)
			}
			callback := spanNamed(t, spans, "login.callback")
			if callback.Parent.IsValid() || callback.SpanContext.TraceID() == start.SpanContext.TraceID() {
				t.Errorf("login.callback is not the root of its own trace")
			}
			if got := childrenOf(spans, callback); !slices.Equal(got, tt.callbackChildren) {
				t.Errorf("spans under login.callback = %v, want %v", got, tt.callbackChildren)
			}
			msgs := g.events()
			if len(msgs) != 1 {
				t.Fatalf("%d events, want 1", len(msgs))
			}
			ev := decodeEvent(t, msgs[0])
			for _, want := range []attribute.KeyValue{
				attribute.String("doorbell.provider", providerID),
				attribute.String("doorbell.result", "success"),
				attribute.String("doorbell.event_id", ev.EventId),
			} {
				if !slices.Contains(callback.Attributes, want) {
					t.Errorf("login.callback lacks %s=%s: %v", want.Key, want.Value.String(), callback.Attributes)
				}
			}

			// The message continues the callback's trace, under the publish span.
			publish := spanNamed(t, spans, "publish user.authenticated")
			tp := msgs[0].Header.Get("traceparent")
			sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(),
				propagation.MapCarrier{"traceparent": tp}))
			if sc.TraceID() != callback.SpanContext.TraceID() || sc.SpanID() != publish.SpanContext.SpanID() {
				t.Errorf("traceparent %q; want trace %s (the callback's) and parent %s (the publish span)",
					tp, callback.SpanContext.TraceID(), publish.SpanContext.SpanID())
			}

			// Nothing personal or secret goes to the collector.
			secrets := append(g.issuedTokens(), "alice@example.com", cb.Query().Get("code"), cb.Query().Get("state"),
				g.idp.ClientSecret)
			for _, s := range spans {
				text := spanText(s)
				for _, secret := range secrets {
					if secret != "" && strings.Contains(text, secret) {
						t.Errorf("span %s holds a secret or the email %.12q…", s.Name, secret)
					}
				}
			}
		})
	}
}

func TestFailedSignInsAreTracedWithTheirReason(t *testing.T) {
	g := newGateway(t, withTracing())
	b := g.browser()
	resp := b.finish(withQuery(b.begin(""), "code", "bogus-code-for-a-trace"), nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("bogus code: %d", resp.StatusCode)
	}
	spans := g.spans.GetSpans()
	callback := spanNamed(t, spans, "login.callback")
	if !slices.Contains(callback.Attributes, attribute.String("doorbell.result", "exchange_failed")) ||
		callback.Status.Description != "exchange_failed" {
		t.Errorf("callback span: %v, status %v; want result and error exchange_failed", callback.Attributes, callback.Status)
	}
	exchange := spanNamed(t, spans, "oauth2.exchange")
	if exchange.Status.Description != "exchange_failed" {
		t.Errorf("exchange span status %v", exchange.Status)
	}
	if got := childrenOf(spans, callback); slices.Contains(got, "publish user.authenticated") {
		t.Errorf("a failed sign-in published: %v", got)
	}
	for _, s := range spans {
		if strings.Contains(spanText(s), "bogus-code-for-a-trace") {
			t.Errorf("span %s holds the authorization code", s.Name)
		}
	}
}

// TestWithoutTracingNoTraceContextIsPublished: tracing is off by default
// (a no-op provider): the message has no trace headers.
func TestWithoutTracingNoTraceContextIsPublished(t *testing.T) {
	g := newGateway(t)
	g.idp.QueueUser(alice())
	b := g.browser()
	if resp := b.finish(b.begin(""), nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in: %d", resp.StatusCode)
	}
	msgs := g.events()
	if len(msgs) != 1 {
		t.Fatalf("%d events", len(msgs))
	}
	for k := range msgs[0].Header {
		if strings.EqualFold(k, "traceparent") || strings.EqualFold(k, "tracestate") {
			t.Errorf("header %s with tracing off", k)
		}
	}
	if strings.Contains(g.logs.String(), "trace_id=") {
		t.Error("log lines name a trace with tracing off")
	}
}

// TestLatencyExemplarsNameTheTrace: /metrics in OpenMetrics shows the
// callback and publish latencies with the sign-in's trace id as exemplar.
func TestLatencyExemplarsNameTheTrace(t *testing.T) {
	g := newGateway(t, withTracing())
	g.idp.QueueUser(alice())
	b := g.browser()
	if resp := b.finish(b.begin(""), nil); resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in: %d", resp.StatusCode)
	}
	traceID := spanNamed(t, g.spans.GetSpans(), "login.callback").SpanContext.TraceID().String()

	srv := httptest.NewServer(admin.Handler(g.reg, nil, g.log))
	defer srv.Close()
	req, err := http.NewRequest(http.MethodGet, srv.URL+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0; charset=utf-8")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	exemplar := `# {trace_id="` + traceID + `"}`
	for _, metric := range []string{
		`doorbell_gateway_callback_duration_seconds_bucket{provider="` + providerID + `",`,
		`doorbell_gateway_publish_duration_seconds_bucket{`,
	} {
		found := false
		for _, line := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(line, metric) && strings.Contains(line, exemplar) {
				found = true
			}
		}
		if !found {
			t.Errorf("no %s… line with the exemplar %s in:\n%s", metric, exemplar, body)
		}
	}
}
