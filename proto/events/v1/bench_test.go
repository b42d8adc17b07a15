package eventsv1

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// signIn is a UserAuthenticated event as the auth-gateway publishes it for
// a Google sign-in from Firefox.
func signIn() *UserAuthenticated {
	return &UserAuthenticated{
		EventId:         "0190f0c2-7a3e-7bcd-8ef0-123456789abc",
		AuthenticatedAt: timestamppb.New(time.Date(2026, 5, 1, 12, 0, 0, 123456789, time.UTC)),
		Issuer:          "https://accounts.google.com",
		Subject:         "108123456789012345678",
		Provider:        "google",
		Email:           "ann.example@example.com",
		Name:            "Ann Example",
		Locale:          "en-GB",
		Client: &Client{
			Ip:             "203.0.113.7",
			UserAgent:      "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:140.0) Gecko/20100101 Firefox/140.0",
			DeviceId:       "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
			AcceptLanguage: "en-GB,en;q=0.9,de;q=0.8",
		},
	}
}

// BenchmarkMarshal measures what the auth-gateway pays to encode the event
// of each sign-in.
func BenchmarkMarshal(b *testing.B) {
	ev := signIn()
	data, err := proto.Marshal(ev)
	if err != nil {
		b.Fatal(err)
	}
	var back UserAuthenticated
	if err := proto.Unmarshal(data, &back); err != nil || !proto.Equal(&back, ev) {
		b.Fatalf("the encoding decodes to %v (%v), want the event", &back, err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := proto.Marshal(ev); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnmarshal measures what the mail-worker pays to decode the event
// of each sign-in.
func BenchmarkUnmarshal(b *testing.B) {
	ev := signIn()
	data, err := proto.Marshal(ev)
	if err != nil {
		b.Fatal(err)
	}
	var got UserAuthenticated
	if err := proto.Unmarshal(data, &got); err != nil || !proto.Equal(&got, ev) {
		b.Fatalf("the encoding decodes to %v (%v), want the event", &got, err)
	}
	b.ReportAllocs()
	for b.Loop() {
		var got UserAuthenticated
		if err := proto.Unmarshal(data, &got); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkValidate measures the check a consumer makes of each event it
// decoded, on an event that passes.
func BenchmarkValidate(b *testing.B) {
	ev := signIn()
	if err := ev.Validate(); err != nil {
		b.Fatalf("Validate() = %v for a gateway event", err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := ev.Validate(); err != nil {
			b.Fatal(err)
		}
	}
}
