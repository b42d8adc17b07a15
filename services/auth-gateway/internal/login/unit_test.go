package login

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/oauth2"
)

func TestSafeReturnPath(t *testing.T) {
	tests := []struct {
		name, rd, want string
	}{
		{"empty goes home", "", "/"},
		{"plain path kept", "/settings", "/settings"},
		{"path with query kept", "/a/b?x=1&y=2", "/a/b?x=1&y=2"},
		{"percent-encoded slashes stay a path", "/%2F%2Fevil.example", "/%2F%2Fevil.example"},
		{"protocol-relative URL refused", "//evil.example/x", "/"},
		{"backslash host refused", `/\evil.example`, "/"},
		{"backslash later refused", `/a\..\\evil`, "/"},
		{"absolute URL refused", "https://evil.example/", "/"},
		{"javascript URL refused", "javascript:alert(1)", "/"},
		{"relative path refused", "settings", "/"},
		{"tab that browsers drop refused", "/\t/evil.example", "/"},
		{"newline refused", "/\n/evil.example", "/"},
		{"very long path refused", "/" + strings.Repeat("a", 2000), "/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := safeReturnPath(tt.rd); got != tt.want {
				t.Errorf("safeReturnPath(%q) = %q, want %q", tt.rd, got, tt.want)
			}
		})
	}
}

func TestEmailVerifiedClaimForms(t *testing.T) {
	tests := []struct {
		name, json string
		want       *bool
	}{
		{"absent", `{}`, nil},
		{"null", `{"email_verified":null}`, nil},
		{"true", `{"email_verified":true}`, ptr(true)},
		{"false", `{"email_verified":false}`, ptr(false)},
		{"string true", `{"email_verified":"true"}`, ptr(true)},
		{"string True", `{"email_verified":"True"}`, ptr(true)},
		{"string false", `{"email_verified":"false"}`, ptr(false)},
		{"string yes is not a yes", `{"email_verified":"yes"}`, ptr(false)},
		{"number is not a yes", `{"email_verified":1}`, ptr(false)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c claims
			if err := json.Unmarshal([]byte(tt.json), &c); err != nil {
				t.Fatal(err)
			}
			switch {
			case tt.want == nil && c.EmailVerified != nil:
				t.Errorf("got %v, want absent", *c.EmailVerified)
			case tt.want != nil && c.EmailVerified == nil:
				t.Errorf("got absent, want %v", *tt.want)
			case tt.want != nil && bool(*c.EmailVerified) != *tt.want:
				t.Errorf("got %v, want %v", *c.EmailVerified, *tt.want)
			}
		})
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

func TestTruncateKeepsUTF8Whole(t *testing.T) {
	s := strings.Repeat("a", 511) + "é" // é is 2 bytes, straddling byte 512
	got := truncate(s, 512)
	if len(got) != 511 || !strings.HasSuffix(got, "a") {
		t.Errorf("truncate cut inside a rune: len %d", len(got))
	}
	if truncate("short", 512) != "short" {
		t.Error("truncate changed a short string")
	}
}

func ptr[T any](v T) *T { return &v }
