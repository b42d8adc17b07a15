package deliver

// Faults of the worker's own world: poison messages, dead letters that
// cannot be stored, NATS gone at the worst moment, workers that die,
// shutdowns, and sign-ins that arrive out of order.

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/doorbell/doorbell/services/mail-worker/internal/deadletter"
	"github.com/doorbell/doorbell/services/mail-worker/internal/ledger"
)

func TestAPoisonMessageNeitherBlocksNorSlowsTheQueue(t *testing.T) {
	h := newHarness(t, harnessOptions{horizon: 2 * time.Second})
	// The relay defers one recipient for ever; it is published in the
	// middle of 50 good sign-ins.
	h.smtp.RejectRecipient("poison@example.com", 451, "4.7.1")
	var ids []string
	var last uint64
	for i := range 50 {
		if i == 10 {
			poison := person(999)
			poison.Email = "poison@example.com"
			h.publish(poison, poison.EventId)
		}
		ev := person(i)
		ids = append(ids, ev.EventId)
		last = h.publish(ev, ev.EventId).Sequence
	}
	h.smtp.WaitForMessageIDs(t, 50, waitLong)
	h.waitSettled(last)
	h.eventually("the poison message is dead-lettered", func() (bool, string) {
		dl := h.deadLetters()
		return len(dl) == 1 && h.handling.Load() == 0, fmt.Sprint(len(dl))
	})

	h.wantEachOnce(ids...)
	dl := h.deadLetters()[0]
	if dl.EventID() != "evt-999" || dl.Reason != ReasonExpired || dl.Detail != "smtp 451 4.7.1 at rcpt to; older than the retry horizon" {
		t.Errorf("dead letter = %+v, want evt-999 expired", dl)
	}
	h.wantCounter(`deadletters_total{expired}`, h.metrics.deadletters.WithLabelValues(ReasonExpired), 1)
	if p := h.paused(); p != 0 {
		t.Errorf("relay_paused = %v, want 0", p)
	}
	if logs := h.logs.String(); strings.Contains(logs, "poison@example.com") {
		t.Errorf("logs show the address:\n%s", logs)
	}
}

func TestTheSameEventHandledTwiceAtOnceSendsOneEmail(t *testing.T) {
	h := newHarness(t, harnessOptions{concurrency: 4})
	h.smtp.SetDelay(50 * time.Millisecond) // keep the first send in flight while the copies arrive
	var last uint64
	for copyNo := range 4 {
		for i := range 5 {
			// The same event under other Nats-Msg-Ids: a re-publish after
			// the duplicate window, or a redrive.
			last = h.publish(person(i), fmt.Sprintf("%s-copy-%d", person(i).EventId, copyNo)).Sequence
		}
	}
	h.smtp.WaitForMessageIDs(t, 5, waitLong)
	h.waitSettled(last)
	h.wantEachOnce("evt-000", "evt-001", "evt-002", "evt-003", "evt-004")
	if got := testutil.ToFloat64(h.metrics.emails.WithLabelValues("welcome", ResultDuplicate)); got != 15 {
		t.Errorf(`emails_total{welcome,duplicate} = %v, want 15`, got)
	}
}

func TestSignInsOfOnePersonAtOnceSendOneWelcome(t *testing.T) {
	h := newHarness(t, harnessOptions{concurrency: 4})
	h.smtp.SetDelay(30 * time.Millisecond)
	var last uint64
	for i := range 4 {
		// One person signs in four times in a row from one browser.
		last = h.publish(signIn(fmt.Sprintf("evt-burst-%d", i), "dev-a"), fmt.Sprintf("evt-burst-%d", i)).Sequence
	}
	h.waitSettled(last)
	if msgs := h.smtp.Messages(); len(msgs) != 1 {
		t.Errorf("%d emails, want one welcome", len(msgs))
	}
	h.wantCounter(`decisions_total{welcome}`, h.metrics.decisions.WithLabelValues("welcome"), 1)
	h.wantCounter(`decisions_total{none}`, h.metrics.decisions.WithLabelValues("none"), 3)
}

// A first sign-in whose email is deferred is overtaken by a later sign-in
// from another browser: the welcome still describes the first, and the
// later one gets the new-device alert, not a second welcome.
func TestARetriedFirstSignInIsNotOvertaken(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	h.smtp.RejectRecipient("ann@example.com", 451, "4.2.0")
	first := signIn("evt-first", "dev-a")
	first.AuthenticatedAt = timestamppb.New(time.Now().Add(-time.Minute))
	h.publish(first, "evt-first")
	h.eventually("the first email is deferred", func() (bool, string) {
		return testutil.ToFloat64(h.retries(causeEmail)) >= 1, ""
	})
	later := signIn("evt-later", "dev-b")
	ack := h.publish(later, "evt-later")
	h.eventually("the later email is deferred too", func() (bool, string) {
		e, _ := h.record(later).Email("evt-later")
		return e.Tries >= 1, fmt.Sprintf("%+v", e)
	})
	h.smtp.RejectRecipient("ann@example.com", 0, "")
	h.smtp.WaitForMessageIDs(t, 2, waitLong)
	h.waitSettled(ack.Sequence)

	h.wantEachOnce("evt-first", "evt-later")
	subjects := map[string]string{}
	for _, m := range h.smtp.Messages() {
		subjects[m.MessageID()] = m.Header(t).Get("Subject")
	}
	if s := subjects["<evt-first@example.com>"]; s != "Welcome to Doorbell" {
		t.Errorf("the first sign-in got %q, want the welcome", s)
	}
	if s := subjects["<evt-later@example.com>"]; !strings.Contains(s, "new device") {
		t.Errorf("the later sign-in got %q, want the new-device alert", s)
	}
}

// An earlier sign-in that arrives after a later one was welcomed (it sat
// in the gateway's spool) belongs to the first visit: no email.
func TestASignInOlderThanTheWelcomeSendsNothing(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	later := signIn("evt-later", "dev-b")
	h.publish(later, "evt-later")
	h.smtp.WaitForMessages(t, 1, waitLong)
	earlier := signIn("evt-earlier", "dev-a")
	earlier.AuthenticatedAt = timestamppb.New(later.AuthenticatedAt.AsTime().Add(-10 * time.Minute))
	ack := h.publish(earlier, "evt-earlier")
	h.waitSettled(ack.Sequence)

	h.wantEachOnce("evt-later")
	h.wantCounter(`decisions_total{none}`, h.metrics.decisions.WithLabelValues("none"), 1)
	if r := h.record(later); len(r.Devices) != 2 {
		t.Errorf("devices = %v, want both browsers remembered", r.Devices)
	}
}

func TestADeadLetterKeepsTheOriginal(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	h.smtp.RejectRecipient("gone@example.com", 550, "5.1.1")
	ev := signIn("evt-gone", "dev-a")
	ev.Email = "gone@example.com"
	data := marshal(t, ev)
	ack := h.publishRaw(data, "evt-gone")
	h.waitSettled(ack.Sequence)

	dl := h.deadLetters()
	if len(dl) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dl))
	}
	e := dl[0]
	if !bytes.Equal(e.Data, data) {
		t.Error("the dead letter does not hold the original bytes")
	}
	want := map[string]string{
		"Content-Type":                 "application/protobuf",
		"Nats-Msg-Id":                  "dlq-AUTH_EVENTS-" + strconv.FormatUint(ack.Sequence, 10),
		deadletter.HeaderOriginalMsgID: "evt-gone",
		deadletter.HeaderReason:        "permanent",
		deadletter.HeaderDetail:        "smtp 550 5.1.1 at rcpt to",
		deadletter.HeaderAttempts:      "1",
		deadletter.HeaderStream:        "AUTH_EVENTS",
		deadletter.HeaderStreamSeq:     strconv.FormatUint(ack.Sequence, 10),
		deadletter.HeaderConsumer:      "mail-worker",
	}
	for k, v := range want {
		if got := e.Header.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	if _, err := time.Parse(time.RFC3339Nano, e.Header.Get(deadletter.HeaderTime)); err != nil {
		t.Errorf("header %s: %v", deadletter.HeaderTime, err)
	}
	for k, vs := range e.Header {
		if strings.Contains(strings.Join(vs, " "), "@example.com") {
			t.Errorf("header %s shows an address: %v", k, vs)
		}
	}
	// The original is terminated: JetStream never delivers it again.
	h.wantCounter("events_received_total", h.metrics.received, 1)
	if r, _ := h.record(ev).Email("evt-gone"); r.State != ledger.Failed {
		t.Errorf("the record says %+v, want failed", r)
	}
}

func TestADeadLetterThatCannotBeStoredIsNotLost(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	h.replaceDeadLetterStream(ctx)
	h.smtp.RejectRecipient("gone@example.com", 550, "5.1.1")
	ev := signIn("evt-gone", "dev-a")
	ev.Email = "gone@example.com"
	ack := h.publish(ev, "evt-gone")
	h.eventually("the worker says it cannot dead-letter yet", func() (bool, string) {
		return strings.Contains(h.logs.String(), "cannot dead-letter yet"), ""
	})
	if err := h.js.DeleteStream(ctx, "IMPOSTOR"); err != nil {
		t.Fatal(err)
	}
	h.waitSettled(ack.Sequence)
	h.eventually("the message is dead-lettered", func() (bool, string) {
		return len(h.deadLetters()) == 1, ""
	})
	h.wantCounter(`deadletters_total{permanent}`, h.metrics.deadletters.WithLabelValues(ReasonPermanent), 1)
	if logs := h.logs.String(); !strings.Contains(logs, "dead-letter stream is missing; making it again") {
		t.Errorf("the stream was not made again:\n%s", logs)
	}
}

// An email whose outcome was unknown twice is given up as unconfirmed.
// When its dead letter cannot be stored yet, the deliveries that follow
// give it up again without sending: the relay never gets a third copy.
func TestAnUnconfirmedEmailIsNotSentAgainWhileItsDeadLetterWaits(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	h.replaceDeadLetterStream(ctx)
	h.smtp.DropMidDataFor("poison@example.com") // the connection breaks after the data, every time
	poison := person(999)
	poison.Email = "poison@example.com"
	ack := h.publish(poison, poison.EventId)
	h.eventually("the give-up fails on two deliveries", func() (bool, string) {
		logs := h.logs.String()
		return countLines(logs, "cannot dead-letter yet") >= 2, logs
	})
	sessions := h.smtp.Connections() // each attempt breaks its connection
	if err := h.js.DeleteStream(ctx, "IMPOSTOR"); err != nil {
		t.Fatal(err)
	}
	h.waitSettled(ack.Sequence)

	if sessions != 2 || h.smtp.Connections() != 2 {
		t.Errorf("the relay saw %d, then %d sessions; want the two attempts only", sessions, h.smtp.Connections())
	}
	if dl := h.deadLetters(); len(dl) != 1 || dl[0].Reason != ReasonUnconfirmed || dl[0].EventID() != "evt-999" {
		t.Errorf("dead letters = %+v, want evt-999 unconfirmed", dl)
	}
	if e, ok := h.record(poison).Email("evt-999"); !ok || e.State != ledger.Failed {
		t.Errorf("the record says %+v, want failed", e)
	}
}

// replaceDeadLetterStream has someone replace the dead-letter stream by
// one under another name, IMPOSTOR, which the test deletes to heal it.
func (h *harness) replaceDeadLetterStream(ctx context.Context) {
	h.t.Helper()
	if err := h.js.DeleteStream(ctx, deadletter.Stream); err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.js.CreateStream(ctx, jetstream.StreamConfig{Name: "IMPOSTOR", Subjects: []string{deadletter.Subject}}); err != nil {
		h.t.Fatal(err)
	}
}

// deadMsg is a delivery whose worker has died: it never reports progress
// again, so JetStream hands the message to someone else after AckWait.
type deadMsg struct{ jetstream.Msg }

func (deadMsg) InProgress() error { return nil }

// An email whose sending kills the worker every time (here: the relay hangs
// on it and the worker stops reporting progress, as a dead one does) is
// taken over after each death, and given up as poison after the third,
// without anyone's clock involved. The other emails flow meanwhile.
func TestAnEmailWhoseWorkerDiesEveryTimeIsPoison(t *testing.T) {
	h := newHarness(t, harnessOptions{concurrency: 8, ackWait: time.Second, smtpTimeout: waitLong,
		wrap: func(m jetstream.Msg) jetstream.Msg {
			if bytes.Contains(m.Data(), []byte("poison@example.com")) {
				return deadMsg{m}
			}
			return m
		}})
	h.smtp.StallFor("poison@example.com", waitLong)
	poison := person(999)
	poison.Email = "poison@example.com"
	h.publish(poison, poison.EventId)
	ids, _ := h.publishPeople(0, 10)
	h.smtp.WaitForMessageIDs(t, 10, waitLong)
	h.eventually("the poison email is dead-lettered", func() (bool, string) {
		return len(h.deadLetters()) == 1, h.logs.String()
	})

	dl := h.deadLetters()[0]
	if dl.EventID() != "evt-999" || dl.Reason != ReasonPoison {
		t.Errorf("dead letter = %+v, want evt-999 poison", dl)
	}
	e, _ := h.record(poison).Email("evt-999")
	if e.State != ledger.Failed || e.Abandoned != ledger.MaxAbandoned {
		t.Errorf("the record says %+v, want failed after %d abandoned deliveries", e, ledger.MaxAbandoned)
	}
	h.wantEachOnce(ids...)
	h.wantCounter(`deadletters_total{poison}`, h.metrics.deadletters.WithLabelValues(ReasonPoison), 1)
	if got := testutil.ToFloat64(h.retries(causeBusy)); got < ledger.MaxAbandoned {
		t.Errorf("retries_total{busy} = %v, want a wait for the holder before each takeover", got)
	}
}

// NATS goes away right after the relay accepted an email, before the
// worker could record it: the worker keeps the message, retries the record
// and the acknowledgement until NATS is back, and the email goes out once.
func TestNATSGoneJustAfterTheRelayAcceptedSendsOneCopy(t *testing.T) {
	h := newHarness(t, harnessOptions{concurrency: 1, ackWait: 5 * time.Second})
	h.smtp.SetReplyDelay(500 * time.Millisecond) // stored now, 250 in half a second
	ev := signIn("evt-nats", "dev-a")
	h.publish(ev, "evt-nats")
	h.smtp.WaitForMessages(t, 1, waitLong)
	h.nats.Stop()
	h.eventually("the worker fails to record the sent email", func() (bool, string) {
		return testutil.ToFloat64(h.metrics.emails.WithLabelValues("welcome", ResultSent)) == 1, ""
	})
	time.Sleep(time.Second) // the record's writes fail meanwhile
	h.nats.Restart()
	h.eventually("the record says sent", func() (bool, string) {
		e, ok := h.record(ev).Email("evt-nats")
		return ok && e.State == ledger.Sent, fmt.Sprintf("%+v", e)
	})
	ack := h.publish(signIn("evt-after", "dev-a"), "evt-after") // a known device: nothing to send
	h.waitSettled(ack.Sequence)

	h.wantEachOnce("evt-nats")
	if dl := h.deadLetters(); len(dl) != 0 {
		t.Errorf("dead letters = %+v, want none", dl)
	}
}

func TestShutdownFinishesTheSendsInFlight(t *testing.T) {
	h := newHarness(t, harnessOptions{concurrency: 4})
	h.smtp.SetReplyDelay(300 * time.Millisecond)
	// Enough that the stop comes long before the last is taken, even when
	// the test is descheduled for a while after the first email.
	const published = 48
	h.publishPeople(0, published)
	h.smtp.WaitForMessages(t, 1, waitLong)
	h.stop()

	// Every email the relay got was finished: recorded and acknowledged.
	sent := len(h.smtp.Messages())
	if sent == 0 || sent >= published {
		t.Fatalf("%d of %d sent before the stop", sent, published)
	}
	if got := testutil.ToFloat64(h.metrics.emails.WithLabelValues("welcome", ResultSent)); got != float64(sent) {
		t.Errorf("%d emails reached the relay but %v were recorded as sent", sent, got)
	}
	// The rest is there for the next worker at once, not after AckWait
	// (30 s here): handed back or never taken. 15 s leaves room on both
	// sides.
	rest := 0
	deadline := time.Now().Add(15 * time.Second)
	for rest < published-sent && time.Now().Before(deadline) {
		batch, err := h.cons.Fetch(published, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for msg := range batch.Messages() {
			rest++
			_ = msg.Ack()
		}
	}
	if rest != published-sent {
		t.Errorf("the next worker got %d messages at once, want the %d not sent", rest, published-sent)
	}
	if logs := h.logs.String(); !strings.Contains(logs, "consumer drained") {
		t.Errorf("no drain logged:\n%s", logs)
	}
}

func TestShutdownDuringAnOutageLeavesTheMessagesToOthers(t *testing.T) {
	h := newHarness(t, harnessOptions{concurrency: 2})
	h.smtp.Refuse()
	h.publish(person(1), person(1).EventId)
	h.eventually("the worker pauses", func() (bool, string) {
		return h.paused() == 1, ""
	})
	h.stop()
	// Handed back, the message is there for the next worker at once, not
	// only after AckWait (30 s here); 15 s leaves room on both sides.
	batch, err := h.cons.Fetch(1, jetstream.FetchMaxWait(15*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for msg := range batch.Messages() {
		got++
		_ = msg.Ack()
	}
	if got != 1 {
		t.Errorf("the message was not handed back (fetched %d)", got)
	}
	if n := len(h.smtp.Messages()); n != 0 {
		t.Errorf("%d emails sent while the relay refused connections", n)
	}
}
