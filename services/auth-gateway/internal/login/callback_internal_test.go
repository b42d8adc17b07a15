package login

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/oauth2"
)

func TestPlausibleEmail(t *testing.T) {
	tests := []struct {
		email string
		want  bool
	}{
		{"alice@example.com", true},
		{"a.b+tag@sub.example.co.uk", true},
		{"jörg@example.de", true},
		{"", false},
		{"alice", false},
		{"@example.com", false},
		{"alice@", false},
		{"a@b@example.com", false},
		{"alice@example.com, bob@example.com", false},
		{"Alice <alice@example.com>", false},
		{"alice@example.com\r\nX-Evil: 1", false},
		{"alice@exa mple.com", false},
		{"alice\x00@example.com", false},
		{"alice\x85@example.com", false},
		{"\xff@example.com", false},
		{strings.Repeat("a", 250) + "@example.com", false},
	}
	for _, tt := range tests {
		if got := plausibleEmail(tt.email); got != tt.want {
			t.Errorf("plausibleEmail(%q) = %v, want %v", tt.email, got, tt.want)
		}
	}
}

func TestRedactHidesSecretsInErrors(t *testing.T) {
	code, secret := "the-authorization-code", "the-client-secret"
	tests := []struct {
		name string
		err  error
	}{
		{"token endpoint echoes them", &oauth2.RetrieveError{
			Response:         &http.Response{Status: "401 Unauthorized"},
			Body:             []byte(`{"error":"invalid_grant","error_description":"Invalid code: ` + code + `"}`),
			ErrorCode:        "invalid_grant",
			ErrorDescription: "Invalid code: " + code + " for client secret " + secret,
		}},
		{"plain error with them", fmt.Errorf("wrapped: %w", errors.New("bad "+code+" and "+secret))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := redact(tt.err, code, secret)
			if strings.Contains(got, code) || strings.Contains(got, secret) {
				t.Errorf("redact = %q", got)
			}
			if !strings.Contains(got, "[redacted]") {
				t.Errorf("redact = %q, want the secrets marked as redacted", got)
			}
		})
	}
}
