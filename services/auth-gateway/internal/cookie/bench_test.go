package cookie_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/cookie"
)

// BenchmarkSealOpen measures what every sign-in pays twice (the attempt
// cookie) and every page view once (the session cookie): sealing and
// opening one cookie with the second of two rotated keys in play.
func BenchmarkSealOpen(b *testing.B) {
	newKey, _ := cookie.RandomKey()
	oldKey, _ := cookie.RandomKey()
	s, err := cookie.New([][]byte{newKey, oldKey})
	if err != nil {
		b.Fatal(err)
	}
	payload := bytes.Repeat([]byte("x"), 256)
	expires := time.Now().Add(time.Hour)
	b.ReportAllocs()
	for b.Loop() {
		v, err := s.Seal("doorbell_session", payload, expires)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.Open("doorbell_session", v, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}
