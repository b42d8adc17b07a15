package login_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/doorbell/doorbell/platform/admin"
)

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
	body := fetch(t, req).body
	exemplar := `# {trace_id="` + traceID + `"}`
	for _, metric := range []string{
		`doorbell_gateway_callback_duration_seconds_bucket{provider="` + providerID + `",`,
		`doorbell_gateway_publish_duration_seconds_bucket{`,
	} {
		found := false
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, metric) && strings.Contains(line, exemplar) {
				found = true
			}
		}
		if !found {
			t.Errorf("no %s… line with the exemplar %s in:\n%s", metric, exemplar, body)
		}
	}
}
