package login

import (
	"bytes"
	"encoding/json"
	"strings"
)

// claims are the ID token or UserInfo claims the gateway uses.
type claims struct {
	Email string `json:"email"`
	// EmailVerified is nil when the claim is absent (or null).
	EmailVerified *looseBool `json:"email_verified"`
	Name          string     `json:"name"`
	Locale        string     `json:"locale"`
	// AuthorizedParty (azp) is the client the token was issued to; ID
	// tokens only.
	AuthorizedParty string `json:"azp"`
}

// looseBool accepts a JSON boolean or the strings "true"/"false", which some
// providers (AWS Cognito among them) send. Anything else counts as false, so
// an odd value never verifies an email.
type looseBool bool

func (b *looseBool) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	switch {
	case bytes.Equal(data, []byte("true")):
		*b = true
	case len(data) > 0 && data[0] == '"':
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		*b = looseBool(strings.EqualFold(strings.TrimSpace(s), "true"))
	default:
		*b = false
	}
	return nil
}
