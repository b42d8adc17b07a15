package login

import (
	"testing"

	"golang.org/x/oauth2"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/config"
)

func TestAuthStyleFollowsTheRegistrationDefault(t *testing.T) {
	basic, post := config.TokenAuthBasic, config.TokenAuthPost
	tests := []struct {
		name         string
		configured   string
		supported    []string
		confidential bool
		want         oauth2.AuthStyle
	}{
		{"public client sends its id in the form", config.TokenAuthAuto, []string{basic}, false, oauth2.AuthStyleInParams},
		{"auto, nothing listed: basic (OIDC Discovery default)", config.TokenAuthAuto, nil, true, oauth2.AuthStyleInHeader},
		{"auto, both listed: basic (RFC 7591 registration default)", config.TokenAuthAuto, []string{post, basic}, true, oauth2.AuthStyleInHeader},
		{"auto, only post listed: post", config.TokenAuthAuto, []string{post, "private_key_jwt"}, true, oauth2.AuthStyleInParams},
		{"auto, only methods we lack: basic", config.TokenAuthAuto, []string{"private_key_jwt"}, true, oauth2.AuthStyleInHeader},
		{"configured post wins over the list", post, []string{basic}, true, oauth2.AuthStyleInParams},
		{"configured basic wins over the list", basic, []string{post}, true, oauth2.AuthStyleInHeader},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := authStyle(tc.configured, tc.supported, tc.confidential); got != tc.want {
				t.Errorf("authStyle(%q, %v, %v) = %v, want %v", tc.configured, tc.supported, tc.confidential, got, tc.want)
			}
		})
	}
}
