package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/doorbell/doorbell/platform/natstest"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/deadletter"
)

// dlqFixture is a NATS server with AUTH_EVENTS and three dead letters:
// 1 permanent (ann), 2 undecodable, 3 exhausted (bob, a reason of earlier
// versions: their letters stay listable and redrivable).
type dlqFixture struct {
	url string
	js  jetstream.JetStream
	ann []byte // the permanent letter's payload
}

func newDLQFixture(t *testing.T) *dlqFixture {
	t.Helper()
	url := natstest.Start(t)
	_, js := natstest.Connect(t, url)
	natstest.CreateAuthEvents(t, js, 1)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := deadletter.Ensure(ctx, js, 1, log); err != nil {
		t.Fatal(err)
	}
	event := func(id, email string) []byte {
		b, err := proto.Marshal(&eventsv1.UserAuthenticated{
			EventId: id, AuthenticatedAt: timestamppb.New(time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)),
			Issuer: "https://idp.example.com", Subject: "s-" + id, Provider: "dev", Email: email, Name: "Ann",
			Client: &eventsv1.Client{Ip: "192.0.2.1", UserAgent: "Firefox", DeviceId: "d1"},
		})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	f := &dlqFixture{url: url, js: js, ann: event("evt-ann", "ann@example.com")}
	pub := deadletter.NewPublisher(js, 1, log)
	for i, l := range []deadletter.Letter{
		{Data: f.ann, Reason: deadletter.ReasonPermanent, Detail: "smtp 550 5.1.1 at rcpt to", Attempts: 1, StreamSeq: 11},
		{Data: []byte("\xff not protobuf"), Reason: deadletter.ReasonUndecodable, Detail: "payload is not a UserAuthenticated protobuf", Attempts: 1, StreamSeq: 12},
		{Data: event("evt-bob", "bob@example.com"), Reason: "exhausted", Detail: "smtp 451 4.0.0 at rcpt to", Attempts: 10, StreamSeq: 13},
	} {
		l.Header = nats.Header{"Content-Type": {"application/protobuf"}, "Nats-Msg-Id": {"orig-" + strconv.Itoa(i)}}
		l.Stream, l.Consumer, l.Time = eventsv1.StreamAuthEvents, eventsv1.ConsumerMailWorker, time.Now()
		if _, err := pub.Publish(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// dlq runs "mail-worker dlq args..." against the fixture.
func (f *dlqFixture) dlq(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = runDLQ(context.Background(), args, func(k string) string {
		if k == "NATS_URL" {
			return f.url
		}
		return ""
	}, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestDLQList(t *testing.T) {
	f := newDLQFixture(t)
	code, out, errOut := f.dlq(t, "list")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("want a header and 3 lines:\n%s", out)
	}
	want := [][]string{
		{"SEQ", "TIME", "REASON", "ATTEMPTS", "ORIGINAL", "SEQ", "EVENT", "ID"},
		{"1", "", "permanent", "1", "11", "evt-ann"},
		{"2", "", "undecodable", "1", "12", "-"},
		{"3", "", "exhausted", "10", "13", "evt-bob"},
	}
	for i, line := range lines {
		fields := strings.Fields(line)
		if i == 0 {
			if strings.Join(fields, " ") != strings.Join(want[0], " ") {
				t.Errorf("header = %q", line)
			}
			continue
		}
		if len(fields) != 6 || fields[0] != want[i][0] || fields[2] != want[i][2] || fields[3] != want[i][3] ||
			fields[4] != want[i][4] || fields[5] != want[i][5] {
			t.Errorf("line %d = %q, want %v", i, line, want[i])
		}
		if _, err := time.Parse(time.RFC3339, fields[1]); err != nil {
			t.Errorf("line %d time: %v", i, err)
		}
	}
	if strings.Contains(out, "@example.com") {
		t.Errorf("list shows an address:\n%s", out)
	}
}

func TestDLQShow(t *testing.T) {
	f := newDLQFixture(t)
	code, out, errOut := f.dlq(t, "show", "1")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"dead letter 1, stored ",
		"  Doorbell-Dlq-Reason: permanent\n",
		"  Doorbell-Dlq-Detail: smtp 550 5.1.1 at rcpt to\n",
		"  Doorbell-Dlq-Stream-Seq: 11\n",
		"  Doorbell-Dlq-Original-Msg-Id: orig-0\n",
		"  Nats-Msg-Id: dlq-AUTH_EVENTS-11\n",
		`  event_id: "evt-ann"`,
		`  email: "a**@example.com"`,
		`  authenticated_at: "2026-05-01T10:00:00Z"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "ann@example.com") {
		t.Errorf("show reveals the address without --reveal:\n%s", out)
	}

	_, out, _ = f.dlq(t, "show", "1", "--reveal")
	if !strings.Contains(out, `  email: "ann@example.com"`) {
		t.Errorf("show --reveal hides the address:\n%s", out)
	}
	_, out, _ = f.dlq(t, "show", "2")
	if !strings.Contains(out, "payload (14 bytes) is not a UserAuthenticated event") || !strings.Contains(out, `"\xff not protobuf"`) {
		t.Errorf("show of an undecodable letter:\n%s", out)
	}
	if code, _, errOut := f.dlq(t, "show", "99"); code != exitNotFound || !strings.Contains(errOut, "no such dead letter at sequence 99") {
		t.Errorf("show 99: exit %d, %q", code, errOut)
	}
}

func TestDLQRedrive(t *testing.T) {
	f := newDLQFixture(t)
	code, out, errOut := f.dlq(t, "redrive", "1")
	if code != exitOK || !strings.Contains(out, "redriven dead letter 1: event evt-ann is AUTH_EVENTS sequence 1") {
		t.Fatalf("redrive 1: exit %d\n%s%s", code, out, errOut)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	stream, err := f.js.Stream(ctx, eventsv1.StreamAuthEvents)
	if err != nil {
		t.Fatal(err)
	}
	m, err := stream.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != eventsv1.SubjectUserAuthenticated || !bytes.Equal(m.Data, f.ann) ||
		m.Header.Get("Nats-Msg-Id") != "redrive-evt-ann-1" || m.Header.Get("Content-Type") != "application/protobuf" ||
		m.Header.Get(deadletter.HeaderRedrivenFrom) != "MAIL_DEADLETTER/1" || m.Header.Get(deadletter.HeaderReason) != "" {
		t.Errorf("re-published message: subject %s headers %v", m.Subject, m.Header)
	}
	if code, _, _ := f.dlq(t, "show", "1"); code != exitNotFound {
		t.Errorf("the redriven letter is still there (show exit %d)", code)
	}

	code, _, errOut = f.dlq(t, "redrive", "2")
	if code != exitFailed || !strings.Contains(errOut, "cannot redrive") {
		t.Errorf("redrive of an undecodable letter: exit %d, %q", code, errOut)
	}
	code, out, errOut = f.dlq(t, "redrive", "--all")
	if code != exitOK || !strings.Contains(out, "skipped dead letter 2") ||
		!strings.Contains(out, "redriven dead letter 3: event evt-bob") || !strings.Contains(out, "redriven 1, skipped 1, failed 0") {
		t.Errorf("redrive --all: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, _ := f.dlq(t, "redrive", "3"); code != exitNotFound {
		t.Errorf("redrive of a redriven letter: exit %d, want %d", code, exitNotFound)
	}
}

func TestDLQPurge(t *testing.T) {
	f := newDLQFixture(t)
	if code, out, errOut := f.dlq(t, "purge", "2"); code != exitOK || out != "deleted dead letter 2\n" {
		t.Fatalf("purge 2: exit %d %q %q", code, out, errOut)
	}
	if code, _, _ := f.dlq(t, "purge", "2"); code != exitNotFound {
		t.Errorf("purge 2 again: exit %d, want %d", code, exitNotFound)
	}
	if _, out, _ := f.dlq(t, "list"); strings.Contains(out, "undecodable") || !strings.Contains(out, "evt-bob") {
		t.Errorf("list after purge 2:\n%s", out)
	}
	if code, out, _ := f.dlq(t, "purge", "--all"); code != exitOK || out != "purged 2 dead letters\n" {
		t.Errorf("purge --all: exit %d %q", code, out)
	}
	if _, out, _ := f.dlq(t, "list"); out != "no dead letters\n" {
		t.Errorf("list after purge --all: %q", out)
	}
}

func TestDLQUsageAndFailures(t *testing.T) {
	f := newDLQFixture(t)
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no command", nil, exitUsage, "no command"},
		{"unknown command", []string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{"show without SEQ", []string{"show"}, exitUsage, "show takes one SEQ"},
		{"show with a word", []string{"show", "abc"}, exitUsage, `SEQ "abc" is not a sequence number`},
		{"purge without anything", []string{"purge"}, exitUsage, "purge takes one SEQ"},
		{"redrive with both", []string{"redrive", "1", "--all"}, exitUsage, "not both"},
		{"unknown flag", []string{"list", "--json"}, exitUsage, "unknown flag --json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := f.dlq(t, tt.args...)
			if code != tt.code || !strings.Contains(errOut, tt.want) || !strings.Contains(errOut, "usage: mail-worker dlq") {
				t.Errorf("exit %d, stderr %q; want %d and %q with the usage", code, errOut, tt.code, tt.want)
			}
		})
	}

	if code, out, _ := f.dlq(t, "help"); code != exitOK || !strings.Contains(out, "redrive SEQ | --all") {
		t.Errorf("help: exit %d\n%s", code, out)
	}

	var out, errOut bytes.Buffer
	closed := "nats://user:secret@127.0.0.1:1"
	code := runDLQ(context.Background(), []string{"list"}, func(k string) string {
		return map[string]string{"NATS_URL": closed}[k]
	}, &out, &errOut)
	if code != exitFailed || !strings.Contains(errOut.String(), "cannot connect to NATS at nats://redacted@127.0.0.1:1") ||
		strings.Contains(errOut.String(), "secret") {
		t.Errorf("unreachable NATS: exit %d, %q", code, errOut.String())
	}

	empty := natstest.Start(t)
	errOut.Reset()
	code = runDLQ(context.Background(), []string{"list"}, func(k string) string {
		return map[string]string{"NATS_URL": empty}[k]
	}, &out, &errOut)
	if code != exitFailed || !strings.Contains(errOut.String(), "stream MAIL_DEADLETTER does not exist") {
		t.Errorf("no dead-letter stream: exit %d, %q", code, errOut.String())
	}
}
