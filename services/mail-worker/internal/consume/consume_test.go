package consume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/doorbell/doorbell/platform/natstest"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/logtest"
)

const waitLong = 60 * time.Second

func TestSetupWaitsForTheStream(t *testing.T) {
	js := natstest.JetStream(t)
	logs := &logtest.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()

	type result struct {
		cons jetstream.Consumer
		err  error
	}
	done := make(chan result, 1)
	go func() {
		cons, err := Setup(ctx, js, Config{AckWait: 30 * time.Second, Horizon: 24 * time.Hour}, log)
		done <- result{cons, err}
	}()

	// Setup says once that it waits, and keeps waiting.
	deadline := time.Now().Add(waitLong)
	for !strings.Contains(logs.String(), "waiting for the stream") {
		if time.Now().After(deadline) {
			t.Fatalf("Setup never said it was waiting:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case r := <-done:
		t.Fatalf("Setup returned before the stream existed: %v", r.err)
	default:
	}

	natstest.CreateAuthEvents(t, js, 1)
	r := <-done
	if r.err != nil {
		t.Fatalf("Setup: %v", r.err)
	}
	info, err := r.cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := info.Config
	if c.Durable != eventsv1.ConsumerMailWorker || c.AckPolicy != jetstream.AckExplicitPolicy ||
		c.FilterSubject != eventsv1.SubjectUserAuthenticated || c.DeliverPolicy != jetstream.DeliverAllPolicy ||
		c.AckWait != 30*time.Second || c.MaxDeliver != -1 || c.MaxAckPending != MaxAckPending {
		t.Errorf("consumer config = %+v", c)
	}
	if n := strings.Count(logs.String(), "waiting for the stream"); n != 1 {
		t.Errorf("Setup logged the wait %d times, want once", n)
	}

	// Nobody consumes yet: published events show up as the backlog.
	for i := range 2 {
		if _, err := js.Publish(ctx, eventsv1.SubjectUserAuthenticated, []byte("x"), jetstream.WithMsgID(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	if err := RegisterConsumerStats(reg, r.cons.Info); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP doorbell_mailworker_consumer_ack_pending_messages Messages delivered to the mail-worker consumer and not yet acknowledged (same value on every replica).
# TYPE doorbell_mailworker_consumer_ack_pending_messages gauge
doorbell_mailworker_consumer_ack_pending_messages 0
# HELP doorbell_mailworker_consumer_pending_messages Messages in AUTH_EVENTS that the mail-worker consumer has not delivered yet (same value on every replica).
# TYPE doorbell_mailworker_consumer_pending_messages gauge
doorbell_mailworker_consumer_pending_messages 2
`
	// The server counts a stored message into the consumer's pending a moment
	// after it acknowledges the publish, so read the gauges until they settle.
	deadline = time.Now().Add(waitLong)
	for {
		err := testutil.GatherAndCompare(reg, strings.NewReader(want))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConsumerStatsAreAbsentWithoutAConsumer(t *testing.T) {
	reg := prometheus.NewRegistry()
	if err := RegisterConsumerStats(reg, func(context.Context) (*jetstream.ConsumerInfo, error) {
		return nil, jetstream.ErrConsumerNotFound
	}); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 0 {
		t.Errorf("exposed %d series (%v), want none", n, err)
	}
}

func TestSetupGivesUpWhenCancelled(t *testing.T) {
	js := natstest.JetStream(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Setup(ctx, js, Config{AckWait: time.Minute}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Setup with a cancelled context = %v, want context.Canceled", err)
	}
}
