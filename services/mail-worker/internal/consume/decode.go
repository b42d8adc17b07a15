package consume

import (
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"unicode"

	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// decode reads a user.authenticated payload and checks what the worker
// relies on. Its errors say why, for the dead letter.
func decode(data []byte) (*eventsv1.UserAuthenticated, error) {
	ev := &eventsv1.UserAuthenticated{}
	if err := proto.Unmarshal(data, ev); err != nil {
		return nil, fmt.Errorf("payload is not a UserAuthenticated protobuf: %w", err)
	}
	if err := validate(ev); err != nil {
		return nil, fmt.Errorf("invalid event: %w", err)
	}
	return ev, nil
}

// validate checks what the worker relies on: an event id usable in a
// Message-ID, a user key, and a deliverable address.
func validate(ev *eventsv1.UserAuthenticated) error {
	if !validEventID(ev.GetEventId()) {
		return errors.New("event_id missing or not an id (letters, digits, '-', '_', '.')")
	}
	if ev.GetIssuer() == "" || ev.GetSubject() == "" {
		return errors.New("issuer or subject missing")
	}
	addr, err := mail.ParseAddress(ev.GetEmail())
	if err != nil || addr.Address != ev.GetEmail() {
		return errors.New("email missing or not a bare address")
	}
	return nil
}

func validEventID(id string) bool {
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
