package deliver

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/consume"
	"github.com/doorbell/doorbell/services/mail-worker/internal/ledger"
)

// A sent email is recorded by its message's acknowledgement (ledger.Acks).
// These tests take what JetStream knows of acknowledgements away, and
// check that no email goes out twice.

// handleNext fetches one message from cons and handles it.
func (h *harness) handleNext(cons jetstream.Consumer) {
	h.t.Helper()
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(waitLong))
	if err != nil {
		h.t.Fatal(err)
	}
	n := 0
	for m := range batch.Messages() {
		h.handler.Handle(context.Background(), m)
		n++
	}
	if n != 1 {
		h.t.Fatalf("fetched %d messages, want 1", n)
	}
}

// The durable consumer is deleted and made again (the worker does so when
// it finds none): the new one starts with an ack floor of 0 and delivers
// every message again, counting from 1. Its claims are the old consumer's,
// so the email is sent, not claimed again.
func TestAConsumerMadeAnewSendsNothingAgain(t *testing.T) {
	h := newHarness(t, harnessOptions{noRun: true})
	ev := signIn("evt-anew", "dev-a")
	h.publish(ev, ev.EventId)
	h.handleNext(h.cons)
	h.smtp.WaitForMessages(t, 1, waitLong)

	ctx := context.Background()
	stream, err := h.js.Stream(ctx, eventsv1.StreamAuthEvents)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.DeleteConsumer(ctx, eventsv1.ConsumerMailWorker); err != nil {
		t.Fatal(err)
	}
	cons, err := consume.Setup(ctx, h.js, consume.Config{AckWait: 30 * time.Second, Concurrency: 4, Horizon: 24 * time.Hour,
		ShutdownTimeout: 10 * time.Second, FetchWait: fetchWait}, h.handler.Log)
	if err != nil {
		t.Fatal(err)
	}
	h.handler.Acks = ConsumerAcks(cons) // as the worker does after Setup
	h.handleNext(cons)
	if n := h.smtp.CountByMessageID()["<evt-anew@example.com>"]; n != 1 {
		t.Errorf("%d emails for one event, want 1\n%s", n, h.logs.String())
	}
	h.wantCounter(`emails_total{welcome,duplicate}`, h.metrics.emails.WithLabelValues("welcome", ResultDuplicate), 1)
}

// The message holding an email is deleted from the stream before it was
// acknowledged (an operator's purge), which moves the ack floor past it:
// a copy of its event takes the email over rather than read the claim as
// sent, and the email goes out once.
func TestACopyTakesOverFromAMessageDeletedBeforeItWasAcknowledged(t *testing.T) {
	h := newHarness(t, harnessOptions{noRun: true})
	ctx := context.Background()
	ev := signIn("evt-gone", "dev-a")
	seq := h.publish(ev, ev.EventId).Sequence
	held, err := h.cons.Fetch(1, jetstream.FetchMaxWait(waitLong)) // delivered, never acknowledged
	if err != nil {
		t.Fatal(err)
	}
	for range held.Messages() {
	}
	acks, err := h.handler.Acks(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	key := ledger.Key(ev.GetIssuer(), ev.GetSubject())
	plan := ledger.Claim(nil, ledger.SignIn{EventID: ev.EventId, At: ev.GetAuthenticatedAt().AsTime(), DeviceID: "dev-a"},
		ledger.Delivery{Seq: seq, Num: 1, Now: time.Now(), Acks: acks}, ledger.Policy{})
	if _, err := h.handler.People.Put(ctx, key, plan.Record, 0); err != nil {
		t.Fatal(err)
	}
	stream, err := h.js.Stream(ctx, eventsv1.StreamAuthEvents)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.DeleteMsg(ctx, seq); err != nil {
		t.Fatal(err)
	}
	// The server moves the consumer's ack floor past a deleted message in
	// its own time.
	h.eventually("the ack floor past the deleted message", func() (bool, string) {
		acks, err := h.handler.Acks(ctx, true)
		return err == nil && acks.Floor >= seq, fmt.Sprintf("ack floor %+v, %v; deleted message %d", acks, err, seq)
	})

	h.publish(ev, ev.EventId+"-copy") // a re-publish after the duplicate window
	h.handleNext(h.cons)
	if n := h.smtp.CountByMessageID()["<evt-gone@example.com>"]; n != 1 {
		t.Errorf("%d emails for the event, want 1\n%s", n, h.logs.String())
	}
}

// A copy of an event comes after its sent original left the stream by age
// (older than the retry horizon, as max_age removes it): the claim was
// acknowledged, so the email is sent, and nothing goes out again.
func TestACopyAfterItsSentOriginalAgedOutSendsNothing(t *testing.T) {
	h := newHarness(t, harnessOptions{noRun: true}) // retry horizon 24 h
	ctx := context.Background()
	ev := signIn("evt-aged", "dev-a")
	ev.AuthenticatedAt = timestamppb.New(time.Now().Add(-48 * time.Hour))
	seq := h.publish(ev, ev.EventId).Sequence
	h.handleNext(h.cons)
	h.smtp.WaitForMessages(t, 1, waitLong)
	h.waitSettled(seq)
	stream, err := h.js.Stream(ctx, eventsv1.StreamAuthEvents)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.DeleteMsg(ctx, seq); err != nil { // as max_age would
		t.Fatal(err)
	}
	h.publish(ev, ev.EventId+"-copy")
	h.handleNext(h.cons)
	if n := h.smtp.CountByMessageID()["<evt-aged@example.com>"]; n != 1 {
		t.Errorf("%d emails for the event, want 1\n%s", n, h.logs.String())
	}
	h.wantCounter(`emails_total{welcome,duplicate}`, h.metrics.emails.WithLabelValues("welcome", ResultDuplicate), 1)
}
