package telemetry

import (
	"errors"
	"net/url"
	"strconv"
	"strings"
)

// ExportFromEnv reads, through getenv (os.Getenv in production), the
// standard OpenTelemetry variables that decide whether spans are exported,
// and checks the ones the OTLP/HTTP exporter would otherwise ignore or
// misread. Export is on with OTEL_TRACES_EXPORTER=otlp, or with an OTLP
// endpoint and no exporter named; OTEL_SDK_DISABLED=true and
// OTEL_TRACES_EXPORTER=none turn it off. It calls bad once for each
// variable that is wrong, with its value ("" for an endpoint, which may
// hold credentials) and what is wrong, so that a config loader reports
// them in its own style with its other errors.
func ExportFromEnv(getenv func(string) string, bad func(name, value string, err error)) bool {
	get := func(name string) string { return strings.TrimSpace(getenv(name)) }
	if v := get("OTEL_SDK_DISABLED"); v != "" {
		disabled, err := strconv.ParseBool(v)
		if err != nil {
			bad("OTEL_SDK_DISABLED", v, errors.New("must be true or false"))
		} else if disabled {
			return false
		}
	}
	exporter := strings.ToLower(get("OTEL_TRACES_EXPORTER"))
	switch exporter {
	case "", "otlp", "none":
	default:
		bad("OTEL_TRACES_EXPORTER", exporter, errors.New("is not supported: use otlp (OTLP over HTTP) or none"))
		return false
	}
	endpoint := false
	for _, name := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} {
		v := get(name)
		if v == "" {
			continue
		}
		endpoint = true
		if u, err := url.Parse(v); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			// The URL may hold credentials: do not echo it.
			bad(name, "", errors.New("is not an http(s) URL such as http://otel-collector:4318"))
		}
	}
	for _, name := range []string{"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"} {
		switch v := get(name); v {
		case "", "http/protobuf", "http/json":
		default:
			bad(name, v, errors.New("is not supported: spans are exported over HTTP, use http/protobuf (port 4318)"))
		}
	}
	return exporter == "otlp" || (exporter == "" && endpoint)
}
