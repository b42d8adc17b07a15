package deadletter

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/doorbell/doorbell/platform/natstest"
)

const waitLong = 60 * time.Second

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestScrub(t *testing.T) {
	tests := []struct{ in, want string }{
		{"smtp 550 5.1.1 at rcpt to", "smtp 550 5.1.1 at rcpt to"},
		{"550 <ann@example.com>: no such user", "550 <<address>>: no such user"},
		{"rejected ann.o'neil+tag@mail.example.co.uk today", "rejected <address> today"},
		{"two\nlines\r\n and  spaces", "two lines and spaces"},
		{strings.Repeat("x", 300), strings.Repeat("x", 199) + "…"},
	}
	for _, tt := range tests {
		if got := Scrub(tt.in); got != tt.want {
			t.Errorf("Scrub(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestSubjectMatching(t *testing.T) {
	tests := []struct {
		filter string
		want   bool
	}{
		{"mail.deadletter", true},
		{"mail.*", true},
		{"mail.>", true},
		{">", true},
		{"*.deadletter", true},
		{"mail", false},
		{"mail.deadletter.x", false},
		{"mail.*.x", false},
		{"user.>", false},
	}
	for _, tt := range tests {
		if got := takes([]string{tt.filter}, Subject); got != tt.want {
			t.Errorf("a stream on %q takes %s: %v, want %v", tt.filter, Subject, got, tt.want)
		}
	}
}

func TestEnsureCreatesTheStream(t *testing.T) {
	js, ctx := ensured(t)
	s, err := js.Stream(ctx, Stream)
	if err != nil {
		t.Fatal(err)
	}
	c := s.CachedInfo().Config
	if len(c.Subjects) != 1 || c.Subjects[0] != Subject || c.Storage != jetstream.FileStorage ||
		c.Retention != jetstream.LimitsPolicy || c.MaxAge != 30*24*time.Hour || c.Description != Description {
		t.Errorf("stream config = %+v", c)
	}
	// A second worker (or a restart) finds it and keeps it.
	if err := Ensure(ctx, js, 1, discard); err != nil {
		t.Errorf("Ensure again: %v", err)
	}
}

func TestEnsureUsesAnOperatorsStream(t *testing.T) {
	js := natstest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: Stream, Subjects: []string{"mail.>"}, MaxAge: 90 * 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	if err := Ensure(ctx, js, 1, discard); err != nil {
		t.Fatalf("Ensure with an operator's stream: %v", err)
	}
	s, err := js.Stream(ctx, Stream)
	if err != nil {
		t.Fatal(err)
	}
	if c := s.CachedInfo().Config; c.MaxAge != 90*24*time.Hour || c.Subjects[0] != "mail.>" {
		t.Errorf("Ensure changed the operator's stream: %+v", c)
	}

	if err := js.DeleteStream(ctx, Stream); err != nil {
		t.Fatal(err)
	}
	// The server may still be removing the old stream's files, and then
	// refuses a new one of the same name for a moment ("error creating
	// store for stream").
	for deadline := time.Now().Add(time.Minute); ; {
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: Stream, Subjects: []string{"mail.other"}})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	err = Ensure(ctx, js, 1, discard)
	if err == nil || !strings.Contains(err.Error(), "does not take subject mail.deadletter") {
		t.Errorf("Ensure with a stream on other subjects = %v", err)
	}
}

func TestPublishIsIdempotentAndKeepsTheOriginal(t *testing.T) {
	js, ctx := ensured(t)
	p := NewPublisher(js, 1, discard)
	l := Letter{
		Data: []byte("payload"),
		Header: nats.Header{"Content-Type": {"application/protobuf"}, "Nats-Msg-Id": {"evt-1"},
			"Nats-Expected-Stream": {"AUTH_EVENTS"}, "ce-id": {"evt-1"}, HeaderReason: {"forged"}},
		Reason: ReasonPermanent, Detail: "smtp 550 <ann@example.com>", Attempts: 2,
		Stream: "AUTH_EVENTS", StreamSeq: 42, Consumer: "mail-worker", Time: time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC),
	}
	if dup, err := p.Publish(ctx, l); err != nil || dup {
		t.Fatalf("Publish = %v, %v", dup, err)
	}
	if dup, err := p.Publish(ctx, l); err != nil || !dup {
		t.Errorf("publishing the same letter again = %v, %v, want a duplicate", dup, err)
	}
	q, err := Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := q.List(ctx)
	if err != nil || len(entries) != 1 {
		t.Fatalf("List = %d entries, %v", len(entries), err)
	}
	e := entries[0]
	want := map[string]string{
		"Content-Type": "application/protobuf", "ce-id": "evt-1", "Nats-Msg-Id": "dlq-AUTH_EVENTS-42",
		HeaderOriginalMsgID: "evt-1", HeaderReason: "permanent", HeaderDetail: "smtp 550 <<address>>",
		HeaderAttempts: "2", HeaderStream: "AUTH_EVENTS", HeaderStreamSeq: "42", HeaderConsumer: "mail-worker",
		HeaderTime:             "2026-05-01T10:00:00Z",
		"Nats-Expected-Stream": "MAIL_DEADLETTER", // the letter's own, not the original's
	}
	for k, v := range want {
		if got := e.Header.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	if !bytes.Equal(e.Data, []byte("payload")) || e.Reason != ReasonPermanent || e.StreamSeq != 42 || e.Attempts != 2 ||
		e.Event != nil || e.DecodeErr == nil {
		t.Errorf("entry = %+v", e)
	}
}

// Each reads the letters stored when it starts, one round trip each, and
// not those stored meanwhile: redrive --all, which may see its letters
// dead-lettered again while it runs, ends.
func TestEachReadsTheLettersStoredWhenItStarts(t *testing.T) {
	js, ctx := ensured(t)
	p := NewPublisher(js, 1, discard)
	letter := func(seq uint64) Letter {
		return Letter{Data: []byte("payload"), Reason: ReasonPermanent, Attempts: 1, Stream: "AUTH_EVENTS", StreamSeq: seq,
			Consumer: "mail-worker", Time: time.Now()}
	}
	for seq := range uint64(3) {
		if _, err := p.Publish(ctx, letter(100+seq)); err != nil {
			t.Fatal(err)
		}
	}
	q, err := Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	var seen []uint64
	err = q.Each(ctx, func(e Entry) error {
		seen = append(seen, e.StreamSeq)
		_, err := p.Publish(ctx, letter(200+e.StreamSeq)) // stored meanwhile
		return err
	})
	if err != nil || len(seen) != 3 || seen[0] != 100 || seen[2] != 102 {
		t.Errorf("Each saw %v (%v), want the three letters stored before it began", seen, err)
	}
	if all, err := q.List(ctx); err != nil || len(all) != 6 {
		t.Errorf("List after = %d letters (%v), want 6", len(all), err)
	}
}

// ensured is a JetStream with MAIL_DEADLETTER made by Ensure, and a
// context bounded for the test.
func ensured(t *testing.T) (jetstream.JetStream, context.Context) {
	t.Helper()
	js := natstest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	t.Cleanup(cancel)
	if err := Ensure(ctx, js, 1, discard); err != nil {
		t.Fatal(err)
	}
	return js, ctx
}
