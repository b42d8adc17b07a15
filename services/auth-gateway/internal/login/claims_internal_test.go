package login

import (
	"encoding/json"
	"testing"
)

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

func ptr[T any](v T) *T { return &v }
