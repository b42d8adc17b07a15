package consume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// fetchErrorPause is how long Run waits after a failed pull request before
// the next one (NATS reconnecting, a leader election).
const fetchErrorPause = time.Second

// Run handles messages from cons until ctx is done, up to
// Config.Concurrency at a time, each in a goroutine that Run owns.
//
// Run pulls exactly as many messages as it has free handlers (a Fetch per
// round, never a client-side buffer), so that every message delivered to
// this replica is being handled: none waits unreported past AckWait
// (nats.go#1929), and during a relay outage none is pulled at all. Run
// runs relay's prober; a Relay serves one Run.
//
// When ctx is done Run stops pulling, wakes handlers waiting for the relay
// (they hand their messages back), lets the others finish their sends and
// acknowledge (within ShutdownTimeout from then; after that their context
// is cancelled and JetStream delivers their messages again after AckWait)
// and returns nil. It returns an error only when the consumer disappears.
//
// handle gets a context that outlives ctx, so that a message in flight at
// shutdown is finished rather than cut off.
func Run(ctx context.Context, cons jetstream.Consumer, handle func(context.Context, jetstream.Msg), relay *Relay, cfg Config, log *slog.Logger) error {
	work, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	// ShutdownTimeout counts from the moment ctx is done.
	var stoppedAt atomic.Int64
	defer context.AfterFunc(ctx, func() { stoppedAt.Store(time.Now().UnixNano()) })()
	n := max(1, cfg.Concurrency)
	wait := cfg.FetchWait
	if wait <= 0 {
		wait = DefaultFetchWait
	}

	// The prober stops with Run; handlers waiting for the relay then hand
	// their messages back.
	relayCtx, stopRelay := context.WithCancel(ctx)
	var relayDone sync.WaitGroup
	relayDone.Go(func() { relay.run(relayCtx) })
	defer relayDone.Wait()
	defer stopRelay()

	slots := make(chan struct{}, n) // one token per busy handler
	var handlers sync.WaitGroup
	log.InfoContext(ctx, "consuming", "stream", eventsv1.StreamAuthEvents, "consumer", eventsv1.ConsumerMailWorker,
		"subject", eventsv1.SubjectUserAuthenticated, "concurrency", n)

	runErr := func() error {
		lastProblem := ""
		for {
			free := takeSlots(ctx, slots, n)
			if free == 0 {
				return nil // ctx done
			}
			if ctx.Err() != nil { // a slot and ctx.Done were both ready
				giveSlots(slots, free)
				return nil
			}
			if err := relay.Wait(ctx, nil); err != nil {
				giveSlots(slots, free)
				return nil
			}
			batch, err := cons.Fetch(free, jetstream.FetchMaxWait(wait))
			got := 0
			if err == nil {
				for msg := range batch.Messages() {
					got++
					handlers.Go(func() {
						defer func() { <-slots }()
						handle(work, msg)
					})
				}
				err = batch.Error()
			}
			giveSlots(slots, free-got)
			switch {
			case err == nil:
				lastProblem = ""
			case errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrConsumerNotFound):
				return fmt.Errorf("consuming stopped: consumer %s is gone: %w", eventsv1.ConsumerMailWorker, err)
			default:
				if problem := err.Error(); problem != lastProblem {
					lastProblem = problem
					log.WarnContext(ctx, "cannot pull messages; trying again every second", "error", err)
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(fetchErrorPause):
				}
			}
		}
	}()

	stopRelay()
	done := make(chan struct{})
	go func() {
		handlers.Wait()
		close(done)
	}()
	left := cfg.ShutdownTimeout
	if at := stoppedAt.Load(); at != 0 {
		left -= time.Since(time.Unix(0, at))
	}
	// However late the pulls ended, finished handlers get a moment to say so.
	timer := time.NewTimer(max(250*time.Millisecond, left))
	defer timer.Stop()
	// A run of late pulls can use up the time before the handlers are
	// checked: finished handlers win over an expired timer.
	select {
	case <-done:
	default:
		select {
		case <-done:
		case <-timer.C:
			stopWork()
			log.Warn("shutdown timeout: messages still in flight come back after AckWait", "timeout", cfg.ShutdownTimeout)
			return runErr
		}
	}
	log.Info("consumer drained")
	return runErr
}

// takeSlots waits for one free slot, then takes every other free one, up
// to n. It returns 0 when ctx ends first.
func takeSlots(ctx context.Context, slots chan struct{}, n int) int {
	select {
	case slots <- struct{}{}:
	case <-ctx.Done():
		return 0
	}
	free := 1
	for free < n {
		select {
		case slots <- struct{}{}:
			free++
		default:
			return free
		}
	}
	return free
}

func giveSlots(slots chan struct{}, n int) {
	for range n {
		<-slots
	}
}
