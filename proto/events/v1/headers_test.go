package eventsv1

import (
	"maps"
	"testing"
)

func TestSetHeadersPutsTheContractsHeaders(t *testing.T) {
	got := map[string]string{}
	signIn().SetHeaders(func(k, v string) { got[k] = v }, "https://login.example.com")
	want := map[string]string{
		"Nats-Msg-Id":    "0190f0c2-7a3e-7bcd-8ef0-123456789abc",
		"Content-Type":   "application/protobuf",
		"ce-specversion": "1.0",
		"ce-id":          "0190f0c2-7a3e-7bcd-8ef0-123456789abc",
		"ce-source":      "https://login.example.com",
		"ce-type":        "doorbell.events.v1.UserAuthenticated",
		"ce-time":        "2026-05-01T12:00:00.123456789Z",
	}
	if !maps.Equal(got, want) {
		t.Errorf("headers:\n got %v\nwant %v", got, want)
	}
}
