package deliver

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

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

// A copy of an event comes after its original was sent and has left the
// stream, while JetStream cannot say whether the original was
// acknowledged: the copy is handed back rather than taking the email over.
func TestACopyWaitsWhileJetStreamCannotSayTheOriginalWasAcknowledged(t *testing.T) {
	h := newHarness(t, harnessOptions{noRun: true})
	ev := signIn("evt-copy", "dev-a")
	seq := h.publish(ev, ev.EventId).Sequence
	h.handleNext(h.cons)
	h.smtp.WaitForMessages(t, 1, waitLong)
	h.waitSettled(seq)

	ctx := context.Background()
	stream, err := h.js.Stream(ctx, eventsv1.StreamAuthEvents)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.DeleteMsg(ctx, seq); err != nil {
		t.Fatal(err)
	}
	h.publish(ev, ev.EventId+"-copy") // a re-publish after the duplicate window
	real, err := h.handler.Acks(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	// A figure from before the original was acknowledged; asking again
	// fails (a consumer leader election).
	h.handler.Acks = func(_ context.Context, fresh bool) (ledger.Acks, error) {
		if fresh {
			return ledger.Acks{}, errors.New("consumer info: timeout")
		}
		return ledger.Acks{Consumer: real.Consumer}, nil
	}
	h.handleNext(h.cons)
	if n := h.smtp.CountByMessageID()["<evt-copy@example.com>"]; n != 1 {
		t.Errorf("%d emails for one event, want 1\n%s", n, h.logs.String())
	}
	if !strings.Contains(h.logs.String(), "result=retry") || !strings.Contains(h.logs.String(), "cannot read the consumer's state") {
		t.Errorf("the copy was not handed back to wait:\n%s", h.logs.String())
	}
}
