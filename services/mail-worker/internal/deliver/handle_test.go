package deliver

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"mime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/deadletter"
	"github.com/doorbell/doorbell/services/mail-worker/internal/ledger"
	"github.com/doorbell/doorbell/services/mail-worker/internal/smtptest"
)

func TestFirstSignInGetsOneWelcome(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ack := h.publish(signIn("0190c4b2-0001-7abc-8def-0123456789ab", "dev-a"), "0190c4b2-0001-7abc-8def-0123456789ab")
	msgs := h.smtp.WaitForMessages(t, 1, waitLong)
	h.waitSettled(ack.Sequence)

	if n := len(h.smtp.Messages()); n != 1 {
		t.Fatalf("server got %d emails, want 1", n)
	}
	hdr := msgs[0].Header(t)
	if got, want := hdr.Get("Message-Id"), "<0190c4b2-0001-7abc-8def-0123456789ab@example.com>"; got != want {
		t.Errorf("Message-ID = %q, want %q", got, want)
	}
	if got := hdr.Get("Subject"); got != "Welcome to Doorbell" {
		t.Errorf("Subject = %q", got)
	}
	if msgs[0].To[0] != "ann@example.com" {
		t.Errorf("sent to %v", msgs[0].To)
	}
	h.wantCounter("events_received_total", h.metrics.received, 1)
	h.wantCounter(`emails_total{welcome,sent}`, h.metrics.emails.WithLabelValues("welcome", ResultSent), 1)
	h.wantCounter(`decisions_total{welcome}`, h.metrics.decisions.WithLabelValues("welcome"), 1)
	if n := testutil.CollectAndCount(h.metrics.loginToMail); n != 1 {
		t.Errorf("login_to_email_seconds has %d series, want 1", n)
	}

	logs := h.logs.String()
	if !strings.Contains(logs, "event_id=0190c4b2-0001-7abc-8def-0123456789ab kind=welcome result=sent attempts=1") {
		t.Errorf("no log line for the event:\n%s", logs)
	}
	if strings.Contains(logs, "ann@example.com") {
		t.Errorf("the email address appears in info logs:\n%s", logs)
	}
}

func TestTheSameEventSendsOnlyOnce(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ev := signIn("evt-dup", "dev-a")
	first := h.publish(ev, "evt-dup")
	h.smtp.WaitForMessages(t, 1, waitLong)
	h.waitSettled(first.Sequence)

	// The gateway retries the publish: JetStream drops the copy.
	if ack := h.publish(ev, "evt-dup"); !ack.Duplicate {
		t.Errorf("a re-publish with the same Nats-Msg-Id was not flagged as duplicate")
	}
	// The same event under another Nats-Msg-Id (a publish from the
	// gateway's spool after the dedup window) reaches the worker, which
	// finds the email sent in the person's record.
	ack := h.publish(ev, "evt-dup-again")
	h.waitSettled(ack.Sequence)

	if n := len(h.smtp.Messages()); n != 1 {
		t.Errorf("server got %d emails, want 1", n)
	}
	if e, ok := h.record(ev).Email("evt-dup"); !ok || e.State != ledger.Sent {
		t.Errorf("the record's email = %+v, want sent", e)
	}
	h.wantCounter(`emails_total{welcome,duplicate}`, h.metrics.emails.WithLabelValues("welcome", ResultDuplicate), 1)
	h.wantCounter(`emails_total{welcome,sent}`, h.metrics.emails.WithLabelValues("welcome", ResultSent), 1)
	h.wantCounter(`decisions_total{welcome}`, h.metrics.decisions.WithLabelValues("welcome"), 1)
}

func TestKnownDeviceGetsNothingAndNewDeviceGetsAnAlert(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	h.publish(signIn("evt-1", "dev-a"), "evt-1")
	h.smtp.WaitForMessages(t, 1, waitLong)

	ack := h.publish(signIn("evt-2", "dev-a"), "evt-2")
	h.waitSettled(ack.Sequence)
	if n := len(h.smtp.Messages()); n != 1 {
		t.Fatalf("a sign-in from a known device sent an email: %d emails", n)
	}
	h.wantCounter(`decisions_total{none}`, h.metrics.decisions.WithLabelValues("none"), 1)

	alertEvent := signIn("evt-3", "dev-b")
	alertEvent.Client.Ip = "198.51.100.23"
	ack = h.publish(alertEvent, "evt-3")
	msgs := h.smtp.WaitForMessages(t, 2, waitLong)
	h.waitSettled(ack.Sequence)
	if n := len(h.smtp.Messages()); n != 2 {
		t.Fatalf("server got %d emails, want 2", n)
	}
	alert := msgs[1]
	hdr := alert.Header(t)
	if got := hdr.Get("Subject"); got != "New sign-in to Doorbell from a new device" {
		t.Errorf("alert Subject = %q", got)
	}
	if got, want := hdr.Get("Message-Id"), "<evt-3@example.com>"; got != want {
		t.Errorf("alert Message-ID = %q, want %q", got, want)
	}
	if !bytes.Contains(alert.Data, []byte("198.51.100.23")) || !bytes.Contains(alert.Data, []byte("Firefox/140")) {
		t.Errorf("alert does not say where the sign-in came from:\n%s", alert.Data)
	}
	h.wantCounter(`emails_total{new_device,sent}`, h.metrics.emails.WithLabelValues("new_device", ResultSent), 1)

	// The new device is now known.
	ack = h.publish(signIn("evt-4", "dev-b"), "evt-4")
	h.waitSettled(ack.Sequence)
	if n := len(h.smtp.Messages()); n != 2 {
		t.Errorf("a sign-in from the newly known device sent an email: %d emails", n)
	}
}

// A worker decides first on the record as it last saw it. When another
// replica changed the record since, the claim's compare-and-set fails and
// the sign-in is decided again on the record as it is.
func TestARecordChangedByAnotherReplicaIsReadAgain(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	h.publish(signIn("evt-1", "dev-a"), "evt-1")
	h.smtp.WaitForMessages(t, 1, waitLong)
	h.waitSettled(1)

	// Another replica, with a store of its own, takes a sign-in from
	// dev-b and sends its alert: this worker's idea of the record is now
	// old.
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	other, err := ledger.Open(ctx, h.js, 1, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	key := ledger.Key(signIn("", "").GetIssuer(), signIn("", "").GetSubject())
	rec, rev, err := other.Get(ctx, key)
	if err != nil || rec == nil {
		t.Fatalf("Get = %v, %v", rec, err)
	}
	d := ledger.Delivery{Seq: 100, Num: 1, Now: time.Now()}
	plan := ledger.Claim(rec, ledger.SignIn{EventID: "evt-other", At: time.Now(), DeviceID: "dev-b"}, d, ledger.Policy{})
	if plan.Step != ledger.Send || plan.Kind != ledger.NewDevice {
		t.Fatalf("the other replica's plan = %+v", plan)
	}
	if _, err := other.Put(ctx, key, plan.Record, rev); err != nil {
		t.Fatal(err)
	}

	// dev-b is known now: nothing to send, though this worker last saw
	// it as new.
	ack := h.publish(signIn("evt-2", "dev-b"), "evt-2")
	h.waitSettled(ack.Sequence)
	if n := len(h.smtp.Messages()); n != 1 {
		t.Errorf("server got %d emails, want only the welcome: the old record was trusted", n)
	}
	h.wantCounter(`decisions_total{none}`, h.metrics.decisions.WithLabelValues("none"), 1)
	h.wantCounter(`decisions_total{new_device}`, h.metrics.decisions.WithLabelValues("new_device"), 0)
}

func TestTransientFailuresAreRetriedAndDeliveredOnce(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	h.smtp.FailNext(2, 451)
	ack := h.publish(signIn("evt-451", "dev-a"), "evt-451")
	msgs := h.smtp.WaitForMessages(t, 1, waitLong)
	h.waitSettled(ack.Sequence)

	if n := len(h.smtp.Messages()); n != 1 {
		t.Fatalf("server got %d emails, want 1", n)
	}
	if got := msgs[0].Header(t).Get("Message-Id"); got != "<evt-451@example.com>" {
		t.Errorf("Message-ID = %q", got)
	}
	h.wantCounter("retries_total{email}", h.retries(causeEmail), 2)
	if p := h.paused(); p != 0 {
		t.Errorf("relay_paused = %v, want 0", p)
	}
	h.wantCounter("events_received_total", h.metrics.received, 3)
	h.wantCounter(`emails_total{welcome,sent}`, h.metrics.emails.WithLabelValues("welcome", ResultSent), 1)
	h.wantCounter(`emails_total{welcome,failed}`, h.metrics.emails.WithLabelValues("welcome", ResultFailed), 0)
	if logs := h.logs.String(); !strings.Contains(logs, "result=sent attempts=3") {
		t.Errorf("the final log line does not count 3 attempts:\n%s", logs)
	}
}

func TestPermanentFailureTerminatesAndTheNextMessageFlows(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	h.smtp.FailNext(1, 550)
	ack := h.publish(signIn("evt-550", "dev-a"), "evt-550")
	h.waitSettled(ack.Sequence)

	if n := len(h.smtp.Messages()); n != 0 {
		t.Fatalf("server got %d emails, want 0", n)
	}
	h.wantCounter(`deadletters_total{permanent}`, h.metrics.deadletters.WithLabelValues(ReasonPermanent), 1)
	h.wantCounter(`emails_total{welcome,failed}`, h.metrics.emails.WithLabelValues("welcome", ResultFailed), 1)
	h.wantCounter("retries_total{email}", h.retries(causeEmail), 0)
	h.wantCounter("events_received_total", h.metrics.received, 1)
	if dl := h.deadLetters(); len(dl) != 1 || dl[0].Reason != ReasonPermanent || dl[0].Detail != "smtp 550 5.0.0 at rcpt to" ||
		dl[0].StreamSeq != ack.Sequence || dl[0].EventID() != "evt-550" {
		t.Errorf("dead letters = %+v, want one permanent for evt-550", dl)
	}

	other := signIn("evt-other", "dev-x")
	other.Subject, other.Email = "user-2", "bob@example.com"
	h.publish(other, "evt-other")
	if msgs := h.smtp.WaitForMessages(t, 1, waitLong); msgs[0].To[0] != "bob@example.com" {
		t.Errorf("next email went to %v", msgs[0].To)
	}
}

// A given-up email is tried again only when an operator redrives it:
// another copy of its event (a re-publish after the duplicate window)
// sends nothing, even to a relay that would now take it, and stores no
// second dead letter; the redrive sends it.
func TestAGivenUpEmailIsSentAgainOnlyByARedrive(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	h.smtp.RejectRecipient("ann@example.com", 550, "5.1.1")
	ev := signIn("evt-gone", "dev-a")
	h.waitSettled(h.publish(ev, "evt-gone").Sequence)
	if dl := h.deadLetters(); len(dl) != 1 {
		t.Fatalf("dead letters = %+v, want one", dl)
	}
	h.smtp.RejectRecipient("ann@example.com", 0, "") // the mailbox works again

	h.waitSettled(h.publish(ev, "evt-gone-copy").Sequence)
	if n := len(h.smtp.Messages()); n != 0 {
		t.Errorf("another copy of the event sent the given-up email (%d emails)", n)
	}
	if dl := h.deadLetters(); len(dl) != 1 {
		t.Errorf("%d dead letters after the copy, want still one", len(dl))
	}

	h.publishWithHeader(marshal(t, ev), "redrive-evt-gone-1",
		map[string]string{deadletter.HeaderRedrivenFrom: deadletter.Stream + "/1"})
	h.smtp.WaitForMessageIDs(t, 1, waitLong)
	h.wantEachOnce("evt-gone")
}

func TestAnEventPastTheRetryHorizonIsDeadLetteredAsExpired(t *testing.T) {
	// A mailbox deferred for ever (4xx to this one recipient); the others
	// go through, so the relay is not to blame.
	h := newHarness(t, harnessOptions{horizon: 2 * time.Second})
	h.smtp.RejectRecipient("ann@example.com", 452, "4.2.2")
	ack := h.publish(signIn("evt-expire", "dev-a"), "evt-expire")
	ids, last := h.publishPeople(0, 5)
	h.waitSettled(max(ack.Sequence, last))

	h.wantEachOnce(ids...)
	dl := h.deadLetters()
	if len(dl) != 1 || dl[0].Reason != ReasonExpired || dl[0].EventID() != "evt-expire" ||
		dl[0].Detail != "smtp 452 4.2.2 at rcpt to; older than the retry horizon" || dl[0].Attempts < 2 {
		t.Fatalf("dead letters = %+v, want evt-expire expired after several attempts", dl)
	}
	h.wantCounter(`deadletters_total{expired}`, h.metrics.deadletters.WithLabelValues(ReasonExpired), 1)
	h.wantCounter(`emails_total{welcome,failed}`, h.metrics.emails.WithLabelValues("welcome", ResultFailed), 1)
	if p := h.paused(); p != 0 {
		t.Errorf("relay_paused = %v, want 0", p)
	}
	if got := testutil.ToFloat64(h.retries(causeEmail)); got != float64(dl[0].Attempts-1) {
		t.Errorf("retries_total{email} = %v, want one per failed attempt but the last (%d)", got, dl[0].Attempts-1)
	}
	if e, _ := h.record(signIn("evt-expire", "")).Email("evt-expire"); e.State != ledger.Failed {
		t.Errorf("the record says %+v, want failed", e)
	}
}

func TestUndecodableAndInvalidPayloadsAreTerminated(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	noEmail := signIn("evt-no-email", "dev-a")
	noEmail.Email = ""
	badID := signIn("evt with spaces", "dev-a")
	badMarshal := func(ev *eventsv1.UserAuthenticated) []byte {
		b, err := proto.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	payloads := []struct {
		name string
		data []byte
	}{
		{"not protobuf", []byte("\xff\xff\xff not a protobuf")},
		{"empty", nil},
		{"no email", badMarshal(noEmail)},
		{"event id unusable as key", badMarshal(badID)},
	}
	var last uint64
	for i, p := range payloads {
		last = h.publishRaw(p.data, fmt.Sprintf("bad-%d", i)).Sequence
	}
	ack := h.publish(signIn("evt-good", "dev-a"), "evt-good")
	msgs := h.smtp.WaitForMessages(t, 1, waitLong)
	h.waitSettled(ack.Sequence)
	if last >= ack.Sequence {
		t.Fatal("sequence numbers out of order")
	}
	if n := len(h.smtp.Messages()); n != 1 || msgs[0].Header(t).Get("Message-Id") != "<evt-good@example.com>" {
		t.Errorf("want only the good event's email, got %d", n)
	}
	h.wantCounter(`deadletters_total{undecodable}`, h.metrics.deadletters.WithLabelValues(ReasonUndecodable), float64(len(payloads)))
	dl := h.deadLetters()
	if len(dl) != len(payloads) {
		t.Fatalf("%d dead letters, want %d", len(dl), len(payloads))
	}
	byOriginal := map[uint64]deadletter.Entry{}
	for _, e := range dl {
		byOriginal[e.StreamSeq] = e
	}
	for i, p := range payloads {
		e, ok := byOriginal[uint64(i+1)]
		if !ok || e.Reason != ReasonUndecodable || !bytes.Equal(e.Data, p.data) || e.OriginalMsg != fmt.Sprintf("bad-%d", i) {
			t.Errorf("%s: dead letter %+v, want the original bytes with reason undecodable", p.name, e)
		}
	}
	h.wantCounter("retries_total{store}", h.retries(causeStore), 0)
	if logs := h.logs.String(); strings.Count(logs, `result=failed attempts=1`) != len(payloads) ||
		strings.Count(logs, `reason="undecodable: `) != len(payloads) {
		t.Errorf("want one undecodable log line per bad payload:\n%s", logs)
	}
}

// subjectOf decodes a message's Subject header (RFC 2047).
func subjectOf(t *testing.T, m smtptest.Message) string {
	t.Helper()
	s, err := new(mime.WordDecoder).DecodeHeader(m.Header(t).Get("Subject"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestEmailsSpeakThePersonsLanguage(t *testing.T) {
	tests := []struct {
		name           string
		locale, accept string
		wantSubject    string
		wantLang       string
	}{
		{"the provider says Korean", "ko", "en-US,en;q=0.9", "Doorbell에 오신 것을 환영합니다", "ko"},
		{"the browser asks for Korean", "", "ko-KR,ko;q=0.9,en;q=0.8", "Doorbell에 오신 것을 환영합니다", "ko"},
		{"neither: the default", "fr", "de", "Welcome to Doorbell", "en"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, harnessOptions{})
			ev := signIn("evt-lang", "dev-a")
			ev.Locale, ev.Client.AcceptLanguage = tt.locale, tt.accept
			ack := h.publish(ev, "evt-lang")
			msgs := h.smtp.WaitForMessages(t, 1, waitLong)
			h.waitSettled(ack.Sequence)
			if got := subjectOf(t, msgs[0]); got != tt.wantSubject {
				t.Errorf("subject %q, want %q", got, tt.wantSubject)
			}
			if got := msgs[0].Header(t).Get("Content-Language"); got != tt.wantLang {
				t.Errorf("Content-Language %q, want %q", got, tt.wantLang)
			}
		})
	}
}

// Five sign-ins from new browsers in a row: one alert at once, and one
// follow-up that lists the other four when the alert window ends; none is
// dropped, and the metrics show the folding.
func TestNewBrowsersInARowSendOneAlertAndOneFollowUp(t *testing.T) {
	h := newHarness(t, harnessOptions{alertWindow: 4 * time.Second})
	msgs := newBrowsersInARow(h, 5)
	first, follow := msgs[1], msgs[2]
	if got := subjectOf(t, first); got != "New sign-in to Doorbell from a new device" {
		t.Errorf("the first alert's subject %q", got)
	}
	if got := subjectOf(t, follow); got != "4 sign-ins to Doorbell from new devices" {
		t.Errorf("the follow-up's subject %q", got)
	}
	for i := 1; i < 5; i++ {
		if ip := fmt.Sprintf("198.51.100.%d", 10+i); !bytes.Contains(follow.Data, []byte(ip)) {
			t.Errorf("the follow-up does not tell of the sign-in from %s:\n%s", ip, follow.Data)
		}
	}
	h.wantCounter(`emails_total{new_device,sent}`, h.metrics.emails.WithLabelValues("new_device", ResultSent), 2)
	h.wantCounter(`emails_total{new_device,folded}`, h.metrics.emails.WithLabelValues("new_device", ResultFolded), 3)
	h.wantCounter(`decisions_total{new_device}`, h.metrics.decisions.WithLabelValues("new_device"), 5)
	if got := testutil.ToFloat64(h.retries(causeWindow)); got < 4 {
		t.Errorf("retries_total{window} = %v, want every held sign-in handed back until the window ended", got)
	}
}

// More new browsers in one alert window than an alert lists: the
// follow-up lists ledger.MaxHeld of them and tells of the rest by number,
// and the person's record stays writable throughout.
func TestAFloodOfNewBrowsersIsToldOfByNumber(t *testing.T) {
	h := newHarness(t, harnessOptions{alertWindow: 4 * time.Second})
	const flood = ledger.MaxHeld + 6
	follow := newBrowsersInARow(h, flood)[2]
	if got, want := subjectOf(t, follow), fmt.Sprintf("%d sign-ins to Doorbell from new devices", flood-1); got != want {
		t.Errorf("the follow-up's subject %q, want %q", got, want)
	}
	if more := fmt.Sprintf("and %d more, too many to list", flood-1-ledger.MaxHeld); !bytes.Contains(follow.Data, []byte(more)) {
		t.Errorf("the follow-up does not say %q:\n%s", more, follow.Data)
	}
	h.wantCounter(`emails_total{new_device,folded}`, h.metrics.emails.WithLabelValues("new_device", ResultFolded), flood-2)
	h.wantCounter(`decisions_total{new_device}`, h.metrics.decisions.WithLabelValues("new_device"), flood)
}

// newBrowsersInARow signs a person in once, then n times from a new
// browser each (IPs 198.51.100.10 on), and returns the three emails that
// follow once every message is settled: the welcome, the first alert, and
// the follow-up at the end of the alert window.
func newBrowsersInARow(h *harness, n int) []smtptest.Message {
	h.t.Helper()
	h.publish(signIn("evt-first", "home"), "evt-first")
	h.smtp.WaitForMessages(h.t, 1, waitLong) // the welcome
	var last uint64
	for i := range n {
		ev := signIn(fmt.Sprintf("evt-new-%d", i), fmt.Sprintf("browser-%d", i))
		ev.Client.Ip = fmt.Sprintf("198.51.100.%d", 10+i)
		last = h.publish(ev, ev.EventId).Sequence
		if i == 0 {
			h.smtp.WaitForMessages(h.t, 2, waitLong) // the first alert goes at once
		}
	}
	msgs := h.smtp.WaitForMessages(h.t, 3, waitLong)
	h.waitSettled(last)
	if got := len(h.smtp.Messages()); got != 3 {
		h.t.Fatalf("%d emails, want the welcome, one alert and one follow-up", got)
	}
	return msgs
}
