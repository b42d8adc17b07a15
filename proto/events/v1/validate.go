package eventsv1

import (
	"errors"
	"net/mail"
	"strings"
	"unicode"
)

// Validate checks what a consumer of the event relies on: an event id
// usable as a key and in a Message-ID (see ValidEventID), a user key
// (issuer and subject), and a deliverable address. It does not check that
// the email was verified: an unverified one is never published.
func (e *UserAuthenticated) Validate() error {
	if !ValidEventID(e.GetEventId()) {
		return errors.New("event_id missing or not an id (letters, digits, '-', '_', '.')")
	}
	if e.GetIssuer() == "" || e.GetSubject() == "" {
		return errors.New("issuer or subject missing")
	}
	addr, err := mail.ParseAddress(e.GetEmail())
	if err != nil || addr.Address != e.GetEmail() {
		return errors.New("email missing or not a bare address")
	}
	return nil
}

// ValidEventID accepts what may stand as a key and left of the "@" in a
// Message-ID without quoting: 1 to 128 ASCII letters, digits, '-', '_' and
// '.', with no dot first, last or twice in a row. The UUIDv7 ids the
// auth-gateway makes are such ids.
func ValidEventID(id string) bool {
	if id == "" || len(id) > 128 || id[0] == '.' || id[len(id)-1] == '.' || strings.Contains(id, "..") {
		return false
	}
	for _, r := range id {
		if r > unicode.MaxASCII || !(unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}
