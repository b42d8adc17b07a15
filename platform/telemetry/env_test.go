package telemetry_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/doorbell/doorbell/platform/telemetry"
)

func TestExportFollowsTheOpenTelemetryVariables(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    bool
		wantBad []string // the variables reported, in order
	}{
		{"off by default", nil, false, nil},
		{"on with OTEL_TRACES_EXPORTER=otlp", map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true, nil},
		{"the exporter name is case-insensitive", map[string]string{"OTEL_TRACES_EXPORTER": "OTLP"}, true, nil},
		{"on with a base endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, true, nil},
		{"on with a traces endpoint", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector:4318/v1/traces"}, true, nil},
		{"none wins over an endpoint", map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, false, nil},
		{"OTEL_SDK_DISABLED wins over everything", map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, false, nil},
		{"OTEL_SDK_DISABLED=false changes nothing", map[string]string{"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, true, nil},
		{"http/json is accepted", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, true, nil},
		{"OTEL_SDK_DISABLED must be a boolean", map[string]string{"OTEL_SDK_DISABLED": "yes please"}, false, []string{"OTEL_SDK_DISABLED"}},
		{"other exporters are not built in", map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, false, []string{"OTEL_TRACES_EXPORTER"}},
		{"an endpoint must be an http(s) URL", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, true, []string{"OTEL_EXPORTER_OTLP_ENDPOINT"}},
		{"grpc is not spoken", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, true, []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var reported []string
			got := telemetry.ExportFromEnv(func(k string) string { return tt.env[k] }, func(name, value string, err error) {
				reported = append(reported, name)
				if strings.Contains(name, "ENDPOINT") && value != "" {
					t.Errorf("%s: the endpoint %q is echoed; it may hold credentials", name, value)
				}
			})
			if got != tt.want || !slices.Equal(reported, tt.wantBad) {
				t.Errorf("ExportFromEnv = %v reporting %q; want %v reporting %q", got, reported, tt.want, tt.wantBad)
			}
		})
	}
}
