// Package floor measures what the mail-worker's promise costs in JetStream
// alone. For each event it makes the worker's round trips, and nothing
// else: take the event from the consumer, claim the email in the person's
// record (create: the worker's first guess for a person it has not met
// needs no read), acknowledge and wait for the server to confirm (the
// acknowledgement records the send). No decoding, rendering or SMTP.
//
// Its rate is the most a worker with these guarantees can deliver on the
// same machine: the bench prints it next to plain net/smtp so that the
// worker's ratio can be read against its ceiling.
package floor

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// recordSize is about the size of one person's record in the worker's
// bucket after a first sign-in.
const recordSize = 320

// Run makes the round trips for n events already in AUTH_EVENTS on the
// server at url, with handlers goroutines (as many as the worker handles
// messages at once), and returns the events handled per second.
func Run(ctx context.Context, url string, handlers, n int) (float64, error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, err
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "bench_floor", History: 1, Storage: jetstream.FileStorage})
	if err != nil {
		return 0, fmt.Errorf("floor: bucket: %w", err)
	}
	cons, err := js.CreateConsumer(ctx, eventsv1.StreamAuthEvents, jetstream.ConsumerConfig{
		Durable: "bench_floor", AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: -1,
	})
	if err != nil {
		return 0, fmt.Errorf("floor: consumer: %w", err)
	}
	msgs, err := cons.Messages(jetstream.PullMaxMessages(2 * handlers))
	if err != nil {
		return 0, err
	}
	defer msgs.Stop()

	record := make([]byte, recordSize)
	work := make(chan int, n)
	for i := range n {
		work <- i
	}
	close(work)
	errs := make(chan error, handlers)
	start := time.Now()
	var wg sync.WaitGroup
	for range handlers {
		wg.Go(func() {
			for range work {
				if err := handle(ctx, msgs, kv, record); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(n) / elapsed.Seconds(), nil
}

// handle makes one event's round trips.
func handle(ctx context.Context, msgs jetstream.MessagesContext, kv jetstream.KeyValue, record []byte) error {
	msg, err := msgs.Next()
	if err != nil {
		return fmt.Errorf("floor: next event: %w", err)
	}
	meta, err := msg.Metadata()
	if err != nil {
		return err
	}
	key := "person-" + strconv.FormatUint(meta.Sequence.Stream, 10)
	if _, err := kv.Create(ctx, key, record); err != nil {
		return fmt.Errorf("floor: claim %s: %w", key, err)
	}
	return msg.DoubleAck(ctx)
}
