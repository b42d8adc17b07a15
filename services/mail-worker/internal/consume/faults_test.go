package consume

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

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/deadletter"
	"github.com/doorbell/doorbell/services/mail-worker/internal/smtptest"
)

func TestAPoisonMessageNeitherBlocksNorSlowsTheQueue(t *testing.T) {
	h := newHarness(t, harnessOptions{maxDeliver: 4})
	// The relay greylists one recipient for ever; it is published first,
	// in the middle of 50 good sign-ins.
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
		return len(dl) == 1, fmt.Sprint(len(dl))
	})

	h.wantEachOnce(ids...)
	dl := h.deadLetters()[0]
	if dl.EventID() != "evt-999" || dl.Reason != ReasonExhausted || dl.Attempts != 4 || dl.Detail != "smtp 451 4.7.1 at rcpt to" {
		t.Errorf("dead letter = %+v, want evt-999 exhausted after 4 attempts", dl)
	}
	h.wantCounter("retries_total", h.metrics.retries, 3)
	h.wantCounter(`deadletters_total{exhausted}`, h.metrics.deadletters.WithLabelValues(ReasonExhausted), 1)
	h.wantCounter("relay_paused", h.metrics.relayPaused, 0)
	if logs := h.logs.String(); strings.Contains(logs, "poison@example.com") {
		t.Errorf("logs show the address:\n%s", logs)
	}
}

func TestAMessageThatBreaksTheConnectionEveryTimeIsDeadLettered(t *testing.T) {
	// The relay fails only on this one email, in a way that looks like an
	// outage (the connection breaks). Once other emails get through in
	// between, the failure counts against the message.
	h := newHarness(t, harnessOptions{maxDeliver: 3})
	h.smtp.DropMidDataFor("poison@example.com")
	poison := person(999)
	poison.Email = "poison@example.com"
	h.publish(poison, poison.EventId)
	var ids []string
	var last uint64
	for i := range 20 {
		ev := person(i)
		ids = append(ids, ev.EventId)
		last = h.publish(ev, ev.EventId).Sequence
	}
	h.smtp.WaitForMessageIDs(t, 20, waitLong)
	h.waitSettled(last)
	h.eventually("the poison message is dead-lettered", func() (bool, string) {
		return len(h.deadLetters()) == 1, ""
	})
	h.wantEachOnce(ids...)
	if dl := h.deadLetters()[0]; dl.EventID() != "evt-999" || dl.Reason != ReasonExhausted {
		t.Errorf("dead letter = %+v, want evt-999 exhausted", dl)
	}
	h.wantCounter("relay_paused", h.metrics.relayPaused, 0)
}

func TestARelayOutageCostsNoAttempts(t *testing.T) {
	// Two deliveries at most: were the outage to count, every email
	// would be dead-lettered.
	h := newHarness(t, harnessOptions{maxDeliver: 2})
	h.smtp.SetDelay(20 * time.Millisecond)
	var ids []string
	var last uint64
	for i := range 12 {
		ev := person(i)
		ids = append(ids, ev.EventId)
		last = h.publish(ev, ev.EventId).Sequence
	}
	h.smtp.WaitForMessages(t, 3, waitLong)
	h.smtp.Refuse()
	h.eventually("the worker pauses and keeps probing", func() (bool, string) {
		logs := h.logs.String()
		return testutil.ToFloat64(h.metrics.relayPaused) == 1 && countLines(logs, "SMTP relay still unusable") >= 5, logs
	})
	h.smtp.Accept(t)
	h.smtp.WaitForMessageIDs(t, 12, waitLong)
	h.waitSettled(last)

	h.wantEachOnce(ids...)
	h.wantCounter("events_received_total", h.metrics.received, 12)
	h.wantCounter("retries_total", h.metrics.retries, 0)
	h.wantCounter(`deadletters_total{exhausted}`, h.metrics.deadletters.WithLabelValues(ReasonExhausted), 0)
	h.wantCounter("relay_paused", h.metrics.relayPaused, 0)
	if dl := h.deadLetters(); len(dl) != 0 {
		t.Errorf("%d dead letters after an outage, want none", len(dl))
	}
	if logs := h.logs.String(); !strings.Contains(logs, "SMTP relay answers again; resuming") {
		t.Errorf("no resume logged:\n%s", logs)
	}
}

func TestRelayFailuresOfOneEmailAreSentAgainOnce(t *testing.T) {
	tests := []struct {
		name      string
		script    func(*smtptest.Server)
		wantMaybe bool
		wantLog   string
	}{
		{"421 at RCPT TO", func(s *smtptest.Server) { s.FailNextAt(smtptest.AtRcpt, 1, 421, "4.3.2") }, false,
			"smtp relay unusable at rcpt to (smtp 421 4.3.2)"},
		{"421 at the greeting", func(s *smtptest.Server) { s.FailNextAt(smtptest.AtGreeting, 1, 421, "4.3.2") }, false,
			"smtp relay unusable at greeting (smtp 421 4.3.2)"},
		{"connection dropped in the middle of the data", func(s *smtptest.Server) { s.DropNextMidData(1) }, true,
			"smtp relay unusable, email may have been accepted at end of data"},
		{"a stalled relay (longer than SMTP_TIMEOUT)", func(s *smtptest.Server) { s.StallNext(1, waitLong) }, false,
			"smtp relay unusable at mail from (timeout)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, harnessOptions{maxDeliver: 1, concurrency: 1})
			tt.script(h.smtp)
			ack := h.publish(signIn("evt-relay", "dev-a"), "evt-relay")
			h.smtp.WaitForMessages(t, 1, waitLong)
			h.waitSettled(ack.Sequence)
			h.wantEachOnce("evt-relay")
			h.wantCounter("retries_total", h.metrics.retries, 0)
			h.wantCounter("events_received_total", h.metrics.received, 1)
			if dl := h.deadLetters(); len(dl) != 0 {
				t.Errorf("dead letters = %+v, want none", dl)
			}
			logs := h.logs.String()
			if !strings.Contains(logs, "SMTP relay unusable; pausing") || !strings.Contains(logs, "result=sent attempts=1") {
				t.Errorf("want a pause and the email sent on its first delivery:\n%s", logs)
			}
			if !strings.Contains(logs, tt.wantLog) {
				t.Errorf("logs lack %q:\n%s", tt.wantLog, logs)
			}
			if got := strings.Contains(logs, "may arrive twice"); got != tt.wantMaybe {
				t.Errorf("a maybe-sent warning logged = %v, want %v", got, tt.wantMaybe)
			}
		})
	}
}

func TestAConfigurationProblemAtRcptAlertsAndIsRetried(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	h.smtp.FailNextAt(smtptest.AtRcpt, 1, 550, "5.7.1")
	ack := h.publish(signIn("evt-policy", "dev-a"), "evt-policy")
	h.smtp.WaitForMessages(t, 1, waitLong)
	h.waitSettled(ack.Sequence)
	h.wantEachOnce("evt-policy")
	h.wantCounter("retries_total", h.metrics.retries, 1)
	if dl := h.deadLetters(); len(dl) != 0 {
		t.Errorf("a 5.7.1 was dead-lettered: %+v", dl)
	}
	logs := h.logs.String()
	if !strings.Contains(logs, `level=ERROR msg="event handled" event_id=evt-policy kind=welcome result=retry attempts=1 stream_seq=1 reason="smtp 550 5.7.1 at rcpt to"`) {
		t.Errorf("want an ERROR line for the configuration problem:\n%s", logs)
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
}

func TestADeadLetterThatCannotBeStoredIsNotLost(t *testing.T) {
	// Deliveries enough to outlast the impostor however slowly the test
	// gets to removing it: the backoff is at most 50 ms here, and with the
	// default 10 a stall of well under a second would exhaust the message
	// (the MAX_DELIVERIES path, reason exhausted) before the stream is back.
	h := newHarness(t, harnessOptions{maxDeliver: 10000})
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

func TestMessagesAbandonedOnEveryDeliveryAreDeadLettered(t *testing.T) {
	// A worker that crashes on every delivery never decides anything;
	// JetStream's MAX_DELIVERIES advisory is what catches the message.
	h := newHarness(t, harnessOptions{maxDeliver: 2, ackWait: 300 * time.Millisecond, noRun: true})
	ack := h.publish(signIn("evt-crash", "dev-a"), "evt-crash")
	// JetStream notices the exhausted message when it would deliver it a
	// third time, that is while someone pulls: pull until the watcher has
	// filed it (it logs its line after counting it), however late the
	// redeliveries come on a busy machine.
	h.eventually("the abandoned message is dead-lettered", func() (bool, string) {
		batch, err := h.cons.Fetch(1, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for msg := range batch.Messages() {
			_ = msg // taken, never acknowledged: the worker "crashed"
		}
		return len(h.deadLetters()) == 1 &&
			strings.Contains(h.logs.String(), `msg="event handled" event_id=evt-crash result=failed`), ""
	})
	e := h.deadLetters()[0]
	if e.Reason != ReasonExhausted || e.Attempts != 2 || e.StreamSeq != ack.Sequence || e.EventID() != "evt-crash" {
		t.Errorf("dead letter = %+v, want evt-crash exhausted after 2 deliveries", e)
	}
	h.wantCounter(`deadletters_total{exhausted}`, h.metrics.deadletters.WithLabelValues(ReasonExhausted), 1)
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

// exhaust takes the message and never answers, as workers that crash on it
// would, until the server has announced that it ran out of deliveries and
// the announcement is stored. The server announces it when it would
// deliver the message once more, so it is a pull (here, or the next
// worker's first one) that triggers it.
func (h *harness) exhaust() {
	h.t.Helper()
	h.eventually("the message to run out of deliveries and the advisory to be stored", func() (bool, string) {
		batch, err := h.cons.Fetch(1, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			h.t.Fatal(err)
		}
		for range batch.Messages() {
			// taken, never acknowledged
		}
		n, state := h.storedAdvisories()
		return n == 1, state
	})
}

// storedAdvisories is how many advisories wait in MAIL_MAX_DELIVERIES.
func (h *harness) storedAdvisories() (uint64, string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	s, err := h.js.Stream(ctx, eventsv1.StreamMaxDeliveries)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	return info.State.Msgs, fmt.Sprintf("%+v", info.State)
}

func TestAnExhaustedMessageIsDeadLetteredThoughNoWorkerWatchedWhenItRanOut(t *testing.T) {
	// Every worker crashed on the message. The next one to start pulls
	// before its watcher runs, and that pull is what makes the server
	// announce that the message ran out of deliveries: the announcement
	// waits in MAIL_MAX_DELIVERIES instead of being missed.
	h := newHarness(t, harnessOptions{maxDeliver: 2, ackWait: 300 * time.Millisecond, noRun: true, noWatch: true})
	ack := h.publish(signIn("evt-orphan", "dev-a"), "evt-orphan")
	h.exhaust()
	if n := len(h.deadLetters()); n != 0 {
		t.Fatalf("%d dead letters before any worker watched", n)
	}

	h.watch() // a worker starts again
	h.eventually("the exhausted message is dead-lettered", func() (bool, string) {
		return len(h.deadLetters()) == 1 &&
			strings.Contains(h.logs.String(), `msg="event handled" event_id=evt-orphan result=failed`), ""
	})
	e := h.deadLetters()[0]
	if e.Reason != ReasonExhausted || e.Attempts != 2 || e.StreamSeq != ack.Sequence || e.EventID() != "evt-orphan" {
		t.Errorf("dead letter = %+v, want evt-orphan exhausted after 2 deliveries", e)
	}
	h.eventually("the advisory is acknowledged and gone", func() (bool, string) {
		n, state := h.storedAdvisories()
		return n == 0, state
	})
	h.wantCounter(`deadletters_total{exhausted}`, h.metrics.deadletters.WithLabelValues(ReasonExhausted), 1)
}

func TestAnAdvisoryWhoseDeadLetterCannotBeStoredIsTriedAgain(t *testing.T) {
	h := newHarness(t, harnessOptions{maxDeliver: 2, ackWait: 300 * time.Millisecond, noRun: true, noWatch: true})
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	h.replaceDeadLetterStream(ctx)
	h.publish(signIn("evt-later", "dev-a"), "evt-later")
	h.exhaust()
	h.watch()
	h.eventually("the watcher says it tries again later", func() (bool, string) {
		return strings.Contains(h.logs.String(), "cannot be dead-lettered yet; trying again later"), ""
	})
	if n, state := h.storedAdvisories(); n != 1 {
		t.Fatalf("the advisory is not kept for the retry: %s", state)
	}
	if err := h.js.DeleteStream(ctx, "IMPOSTOR"); err != nil {
		t.Fatal(err)
	}
	h.eventually("the message is dead-lettered on a retry", func() (bool, string) {
		// The watcher makes the dead-letter stream again on its retry.
		if _, err := h.js.Stream(ctx, deadletter.Stream); err != nil {
			return false, err.Error()
		}
		return len(h.deadLetters()) == 1, ""
	})
	if e := h.deadLetters()[0]; e.Reason != ReasonExhausted || e.EventID() != "evt-later" {
		t.Errorf("dead letter = %+v, want evt-later exhausted", e)
	}
	h.eventually("the advisory is acknowledged and gone", func() (bool, string) {
		n, state := h.storedAdvisories()
		return n == 0, state
	})
}

func TestTheAdvisoryConsumerIsMadeAgainWhenDeleted(t *testing.T) {
	h := newHarness(t, harnessOptions{maxDeliver: 2, ackWait: 300 * time.Millisecond, noRun: true})
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	// An operator removes the worker's consumer on MAIL_MAX_DELIVERIES.
	if err := h.js.DeleteConsumer(ctx, eventsv1.StreamMaxDeliveries, eventsv1.ConsumerMailWorker); err != nil {
		t.Fatal(err)
	}
	h.eventually("the watcher says it sets up again", func() (bool, string) {
		return strings.Contains(h.logs.String(), "setting up again"), ""
	})
	h.eventually("the consumer is back", func() (bool, string) {
		_, err := h.js.Consumer(ctx, eventsv1.StreamMaxDeliveries, eventsv1.ConsumerMailWorker)
		return err == nil, fmt.Sprint(err)
	})
	ack := h.publish(signIn("evt-after", "dev-a"), "evt-after")
	h.pullUntilDeadLettered("evt-after")
	if e := h.deadLetters()[0]; e.Reason != ReasonExhausted || e.StreamSeq != ack.Sequence {
		t.Errorf("dead letter = %+v, want evt-after exhausted", e)
	}
}

func TestAdvisoriesCapturedByAnotherStreamAreStillActedOn(t *testing.T) {
	// An audit stream on $JS.EVENT.ADVISORY.> leaves no room for
	// MAIL_MAX_DELIVERIES: the worker says so and listens instead.
	h := newHarness(t, harnessOptions{maxDeliver: 2, ackWait: 300 * time.Millisecond, noRun: true, auditStream: true})
	h.eventually("the watcher explains why it cannot store advisories", func() (bool, string) {
		return strings.Contains(h.logs.String(), "another stream already captures the MAX_DELIVERIES advisories"), ""
	})
	ack := h.publish(signIn("evt-audited", "dev-a"), "evt-audited")
	h.pullUntilDeadLettered("evt-audited")
	if e := h.deadLetters()[0]; e.Reason != ReasonExhausted || e.StreamSeq != ack.Sequence {
		t.Errorf("dead letter = %+v, want evt-audited exhausted", e)
	}
}

// pullUntilDeadLettered takes the message again and again without an
// answer, as crashing workers would, until the watcher has filed it.
func (h *harness) pullUntilDeadLettered(eventID string) {
	h.t.Helper()
	h.eventually(eventID+" is dead-lettered", func() (bool, string) {
		batch, err := h.cons.Fetch(1, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			h.t.Fatal(err)
		}
		for range batch.Messages() {
			// taken, never acknowledged
		}
		return strings.Contains(h.logs.String(), `msg="event handled" event_id=`+eventID+` result=failed`), ""
	})
}

func TestShutdownFinishesTheSendsInFlight(t *testing.T) {
	h := newHarness(t, harnessOptions{concurrency: 4})
	h.smtp.SetDelay(300 * time.Millisecond)
	// Enough that the stop comes long before the last is taken, even when
	// the test is descheduled for a while after the first email.
	const published = 48
	for i := range published {
		h.publish(person(i), person(i).EventId)
	}
	h.smtp.WaitForMessages(t, 1, waitLong)
	h.stop()

	// Everything taken was finished: sent and acknowledged, nothing
	// left unacknowledged to come back after AckWait.
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	info, err := h.cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sent := len(h.smtp.Messages())
	if info.NumAckPending != 0 || info.AckFloor.Stream != uint64(sent) || sent >= published {
		t.Errorf("after shutdown: %d sent, ack floor %d, %d unacknowledged; want every taken message sent and acknowledged, the rest untouched",
			sent, info.AckFloor.Stream, info.NumAckPending)
	}
	if logs := h.logs.String(); !strings.Contains(logs, "consumer drained") {
		t.Errorf("no drain logged:\n%s", logs)
	}
}

func TestShutdownDuringAnOutageHandsMessagesBack(t *testing.T) {
	h := newHarness(t, harnessOptions{concurrency: 2})
	h.smtp.Refuse()
	h.publish(person(1), person(1).EventId)
	h.eventually("the worker pauses", func() (bool, string) {
		return testutil.ToFloat64(h.metrics.relayPaused) == 1, ""
	})
	h.stop()
	// Handed back, the message is there for the next worker at once, not
	// only after AckWait (30 s here, counted from the delivery or the
	// progress report before the send); 15 s leaves room on both sides.
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
		t.Errorf("the held message was not handed back (fetched %d)", got)
	}
	if n := len(h.smtp.Messages()); n != 0 {
		t.Errorf("%d emails sent while the relay refused connections", n)
	}
	if logs := h.logs.String(); !strings.Contains(logs, "result=shutdown") {
		t.Errorf("no shutdown outcome logged:\n%s", logs)
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
