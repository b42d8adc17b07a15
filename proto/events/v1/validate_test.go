package eventsv1

import "testing"

func TestValidate(t *testing.T) {
	good := func() *UserAuthenticated {
		return &UserAuthenticated{EventId: "0190c4b2-0001-7abc-8def-0123456789ab", Issuer: "https://idp", Subject: "s",
			Email: "ann@example.com"}
	}
	tests := []struct {
		name   string
		change func(*UserAuthenticated)
		ok     bool
	}{
		{"a gateway event", func(*UserAuthenticated) {}, true},
		{"no event id", func(e *UserAuthenticated) { e.EventId = "" }, false},
		{"an event id with a space", func(e *UserAuthenticated) { e.EventId = "evt 1" }, false},
		{"an event id with a dot first", func(e *UserAuthenticated) { e.EventId = ".evt" }, false},
		{"an event id with two dots", func(e *UserAuthenticated) { e.EventId = "a..b" }, false},
		{"an event id with a non-ASCII letter", func(e *UserAuthenticated) { e.EventId = "évt" }, false},
		{"an event id too long", func(e *UserAuthenticated) { e.EventId = string(make([]byte, 129)) }, false},
		{"no issuer", func(e *UserAuthenticated) { e.Issuer = "" }, false},
		{"no subject", func(e *UserAuthenticated) { e.Subject = "" }, false},
		{"no email", func(e *UserAuthenticated) { e.Email = "" }, false},
		{"an email with a display name", func(e *UserAuthenticated) { e.Email = "Ann <ann@example.com>" }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := good()
			tt.change(e)
			if err := e.Validate(); (err == nil) != tt.ok {
				t.Errorf("Validate() = %v, want ok %v", err, tt.ok)
			}
		})
	}
}

func TestValidEventID(t *testing.T) {
	long := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = 'a'
		}
		return string(b)
	}
	tests := []struct {
		id   string
		want bool
	}{
		{"0190c4b2-0001-7abc-8def-0123456789ab", true}, // a gateway's UUIDv7
		{"evt_1.retry-2", true},
		{long(128), true},
		{"", false},
		{long(129), false},
		{"evt 1", false},
		{".evt", false},
		{"evt.", false},
		{"a..b", false},
		{"évt", false},
		{"evt@host", false}, // it stands left of the "@" in a Message-ID
		{"evt/1", false},    // and as a KV key
	}
	for _, tt := range tests {
		if got := ValidEventID(tt.id); got != tt.want {
			t.Errorf("ValidEventID(%q) = %v, want %v", tt.id, got, tt.want)
		}
	}
}
