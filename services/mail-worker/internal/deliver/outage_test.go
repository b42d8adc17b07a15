package deliver

// How the worker lives with a relay that fails: the relay's failure is
// charged to no email, one email's failure only to that email.

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/doorbell/doorbell/services/mail-worker/internal/relay"
	"github.com/doorbell/doorbell/services/mail-worker/internal/smtpsend"
	"github.com/doorbell/doorbell/services/mail-worker/internal/smtptest"
)

func TestARelayOutageChargesNoEmail(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	h.smtp.SetDelay(20 * time.Millisecond)
	ids, last := h.publishPeople(0, 12)
	h.smtp.WaitForMessages(t, 3, waitLong)
	h.smtp.Refuse()
	h.eventually("the worker pauses and keeps probing", func() (bool, string) {
		logs := h.logs.String()
		return h.paused() == 1 && countLines(logs, "SMTP relay still unusable") >= 5, logs
	})
	pulledDuringOutage := testutil.ToFloat64(h.metrics.received)
	time.Sleep(200 * time.Millisecond) // probes go on; nothing is pulled meanwhile
	if got := testutil.ToFloat64(h.metrics.received); got != pulledDuringOutage {
		t.Errorf("the worker pulled %v messages while the relay was down", got-pulledDuringOutage)
	}
	h.smtp.Accept(t)
	h.smtp.WaitForMessageIDs(t, 12, waitLong)
	h.waitSettled(last)

	h.wantEachOnce(ids...)
	h.wantCounter("retries_total{email}", h.retries(causeEmail), 0)
	if p := h.paused(); p != 0 {
		t.Errorf("relay_paused = %v, want 0", p)
	}
	if dl := h.deadLetters(); len(dl) != 0 {
		t.Errorf("%d dead letters after an outage, want none", len(dl))
	}
	logs := h.logs.String()
	for _, want := range []string{"SMTP relay answers a probe; trying one email", "SMTP relay works again; resuming"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
}

// After an outage, the first message pulled (the trial) may have nothing
// to send: a sign-in from a known device. The worker goes on to try the
// next one rather than waiting for a trial result that will never come.
func TestAfterAnOutageATrialWithNothingToSendLetsTheNextOneTry(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	first := h.publish(signIn("evt-1", "dev-a"), "evt-1")
	h.smtp.WaitForMessageIDs(t, 1, waitLong)
	h.waitSettled(first.Sequence)
	h.smtp.Refuse()
	// The relay fails for everyone, as a send would report it.
	h.handler.Gate.Report(context.Background(), "", smtpsend.Classify(smtpsend.StageConnect, errors.New("connection refused")))
	h.eventually("the worker pauses", func() (bool, string) { return h.paused() == 1, h.logs.String() })
	// Let the pull under way when it paused end, so that the next
	// message pulled is a trial.
	time.Sleep(3 * fetchWait)
	h.publish(signIn("evt-2", "dev-a"), "evt-2") // a known device: nothing to send
	last := h.publish(person(5), "evt-005").Sequence
	h.smtp.Accept(t)

	h.smtp.WaitForMessageIDs(t, 2, waitLong)
	h.waitSettled(last)
	h.wantEachOnce("evt-1", "evt-005")
	if p := h.paused(); p != 0 {
		t.Errorf("relay_paused = %v after the relay came back, want 0", p)
	}
	if !strings.Contains(h.logs.String(), "SMTP relay answers a probe; trying one email") {
		t.Errorf("the worker never tried a trial:\n%s", h.logs.String())
	}
}

// A relay that defers every recipient for a while (its queue disk is
// full, it is restarted behind a load balancer): a few emails fail, then
// the worker pauses instead of burning through their retries, tries one
// email at a time, and delivers everything once the relay recovers, long
// after the emails' own backoff ran out.
func TestARelayThatDefersEveryoneIsPausedNotChargedToTheEmails(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	h.smtp.FailNext(1<<20, 451)
	ids, last := h.publishPeople(0, 10)
	h.eventually("the worker pauses and tries single emails", func() (bool, string) {
		logs := h.logs.String()
		return h.paused() == 1 && countLines(logs, "trying one email") >= 3, logs
	})
	if dl := h.deadLetters(); len(dl) != 0 {
		t.Fatalf("%d dead letters during a relay-wide deferral", len(dl))
	}
	h.smtp.FailNext(0, 451)
	h.smtp.WaitForMessageIDs(t, 10, waitLong)
	h.waitSettled(last)

	h.wantEachOnce(ids...)
	if dl := h.deadLetters(); len(dl) != 0 {
		t.Errorf("%d dead letters, want none", len(dl))
	}
	// Only the emails that failed before the worker could tell that the
	// relay fails everyone are charged.
	if got := testutil.ToFloat64(h.retries(causeEmail)); got > relay.DefaultSuspects-1 {
		t.Errorf("retries_total{email} = %v, want at most %d", got, relay.DefaultSuspects-1)
	}
	if p := h.paused(); p != 0 {
		t.Errorf("relay_paused = %v, want 0", p)
	}
}

func TestRelayFailuresOfOneEmailAreSentAgain(t *testing.T) {
	tests := []struct {
		name       string
		script     func(*smtptest.Server)
		wantLog    string
		wantCharge float64 // retries_total{email}
	}{
		{"421 at RCPT TO", func(s *smtptest.Server) { s.FailNextAt(smtptest.AtRcpt, 1, 421, "4.3.2") },
			"smtp relay unusable at rcpt to (smtp 421 4.3.2)", 0},
		{"421 at the greeting", func(s *smtptest.Server) { s.FailNextAt(smtptest.AtGreeting, 1, 421, "4.3.2") },
			"smtp relay unusable at greeting (smtp 421 4.3.2)", 0},
		{"a stalled relay (longer than SMTP_TIMEOUT)", func(s *smtptest.Server) { s.StallNext(1, waitLong) },
			"smtp relay unusable at mail from (timeout)", 0},
		{"the connection dropped after the data", func(s *smtptest.Server) { s.DropNextMidData(1) },
			"may arrive twice", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, harnessOptions{concurrency: 1, smtpTimeout: 2 * time.Second})
			tt.script(h.smtp)
			ack := h.publish(signIn("evt-relay", "dev-a"), "evt-relay")
			h.smtp.WaitForMessages(t, 1, waitLong)
			h.waitSettled(ack.Sequence)
			h.wantEachOnce("evt-relay")
			h.wantCounter("retries_total{email}", h.retries(causeEmail), tt.wantCharge)
			if dl := h.deadLetters(); len(dl) != 0 {
				t.Errorf("dead letters = %+v, want none", dl)
			}
			logs := h.logs.String()
			if !strings.Contains(logs, "result=sent attempts=2") || !strings.Contains(logs, tt.wantLog) {
				t.Errorf("want %q and the email sent on its second delivery:\n%s", tt.wantLog, logs)
			}
		})
	}
}

// A relay whose content filter crashes on one email (the connection breaks
// after the data, every time): the outcome is unknown, so the email is
// sent once more, later, then given up as unconfirmed for an operator to
// judge; the other emails flow meanwhile and the relay is never paused.
func TestAnEmailThatBreaksTheConnectionEveryTimeIsGivenUpUnconfirmed(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	h.smtp.DropMidDataFor("poison@example.com")
	poison := person(999)
	poison.Email = "poison@example.com"
	first := h.publish(poison, poison.EventId)
	ids, last := h.publishPeople(0, 20)
	h.smtp.WaitForMessageIDs(t, 20, waitLong)
	h.waitSettled(max(first.Sequence, last))

	h.wantEachOnce(ids...)
	dl := h.deadLetters()
	if len(dl) != 1 || dl[0].EventID() != "evt-999" || dl[0].Reason != ReasonUnconfirmed || dl[0].Attempts != 2 {
		t.Fatalf("dead letters = %+v, want evt-999 unconfirmed after 2 attempts", dl)
	}
	if p := h.paused(); p != 0 {
		t.Errorf("relay_paused = %v, want 0", p)
	}
	h.wantCounter(`deadletters_total{unconfirmed}`, h.metrics.deadletters.WithLabelValues(ReasonUnconfirmed), 1)
	if n := countLines(h.logs.String(), "may arrive twice"); n != 1 {
		t.Errorf("%d maybe-sent warnings, want 1", n)
	}
}

// A relay that stores the email and answers the final "." only after a
// content scan longer than SMTP_TIMEOUT: the worker waits for the reply
// (the message kept in progress) and sends one copy.
func TestASlowFinalReplyIsAwaitedAndSendsOneCopy(t *testing.T) {
	h := newHarness(t, harnessOptions{smtpTimeout: time.Second, finalTimeout: waitLong, ackWait: 2 * time.Second})
	h.smtp.SetReplyDelay(3 * time.Second)
	ids, last := h.publishPeople(0, 4)
	h.waitSettled(last)

	h.wantEachOnce(ids...)
	h.wantCounter("retries_total{email}", h.retries(causeEmail), 0)
	h.wantCounter("retries_total{busy}", h.retries(causeBusy), 0)
	h.wantCounter("events_received_total", h.metrics.received, 4)
	if dl := h.deadLetters(); len(dl) != 0 {
		t.Errorf("dead letters = %+v, want none", dl)
	}
}

func TestAConfigurationProblemAtRcptAlertsAndIsRetried(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	h.smtp.FailNextAt(smtptest.AtRcpt, 1, 550, "5.7.1")
	ack := h.publish(signIn("evt-policy", "dev-a"), "evt-policy")
	h.smtp.WaitForMessages(t, 1, waitLong)
	h.waitSettled(ack.Sequence)
	h.wantEachOnce("evt-policy")
	h.wantCounter("retries_total{email}", h.retries(causeEmail), 1)
	if dl := h.deadLetters(); len(dl) != 0 {
		t.Errorf("a 5.7.1 was dead-lettered: %+v", dl)
	}
	logs := h.logs.String()
	if !strings.Contains(logs, `level=ERROR msg="event handled" event_id=evt-policy kind=welcome result=retry attempts=1 stream_seq=1 reason="smtp 550 5.7.1 at rcpt to"`) {
		t.Errorf("want an ERROR line for the configuration problem:\n%s", logs)
	}
}
