// Package consume is the mail-worker's JetStream consumer: it sets up the
// durable pull consumer "mail-worker" on the gateway's AUTH_EVENTS stream
// (Setup), feeds user.authenticated messages, several at a time, to
// handlers (Run) as a relay.Gate allows, and exposes the consumer's backlog
// as metrics. What happens to one message is package deliver's.
package consume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// Config shapes the consumer.
type Config struct {
	// AckWait is how long JetStream waits for an acknowledgement (or a
	// progress report) before it delivers a message again.
	AckWait time.Duration
	// Concurrency is how many messages are handled at once. Use a few times
	// the SMTP pool size (the worker uses four): a handler holds a
	// connection only while it sends, and spends the rest of its time on
	// NATS round trips. 1 when zero.
	Concurrency int
	// Horizon is the retry horizon (Retry.Horizon); Setup warns when the
	// stream keeps events for less.
	Horizon time.Duration
	// FetchWait bounds one pull request while no message is waiting; Run
	// notices a shutdown within it. DefaultFetchWait when zero.
	FetchWait time.Duration
	// ShutdownTimeout bounds how long Run lets in-flight messages finish
	// once its context is done.
	ShutdownTimeout time.Duration
}

// DefaultFetchWait is Config.FetchWait when zero.
const DefaultFetchWait = time.Second

// MaxAckPending caps unacknowledged messages across all replicas: room for
// the handlers of sixteen replicas at SMTP_POOL_SIZE 16 (256 each), or four
// at the largest pool, 64.
const MaxAckPending = 4096

// Setup waits until the AUTH_EVENTS stream exists (the auth-gateway creates
// it) and then creates or updates the durable consumer. It logs the first
// time it has to wait and each different problem once, checks again every
// second, and returns only with the consumer or when ctx is done.
func Setup(ctx context.Context, js jetstream.JetStream, cfg Config, log *slog.Logger) (jetstream.Consumer, error) {
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	lastProblem := ""
	for {
		cons, err := ensureConsumer(ctx, js, cfg)
		if err == nil {
			if lastProblem != "" {
				log.InfoContext(ctx, "consumer ready", "stream", eventsv1.StreamAuthEvents, "consumer", eventsv1.ConsumerMailWorker)
			}
			return cons, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("set up consumer: %w", ctx.Err())
		}
		if errors.Is(err, errShortStream) {
			log.WarnContext(ctx, "AUTH_EVENTS drops events before the retry horizon: an event the relay keeps refusing "+
				"vanishes unsent and is never dead-lettered; raise the stream's max age or lower WORKER_RETRY_HORIZON",
				"error", err)
			return cons, nil
		}
		if problem := err.Error(); problem != lastProblem {
			lastProblem = problem
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				log.InfoContext(ctx, "waiting for the stream; the auth-gateway creates it on start",
					"stream", eventsv1.StreamAuthEvents)
			} else {
				log.WarnContext(ctx, "cannot set up the JetStream consumer yet; checking every second", "error", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("set up consumer: %w", ctx.Err())
		case <-ticker.C:
		}
	}
}

func ensureConsumer(ctx context.Context, js jetstream.JetStream, cfg Config) (jetstream.Consumer, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	stream, err := js.Stream(ctx, eventsv1.StreamAuthEvents)
	if err != nil {
		return nil, fmt.Errorf("look up stream %s: %w", eventsv1.StreamAuthEvents, err)
	}
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       eventsv1.ConsumerMailWorker,
		Description:   "Doorbell mail-worker: sends sign-in emails",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		// Unlimited: the worker gives up by age and dead-letters in its
		// handler; a server-side limit would drop messages silently.
		MaxDeliver:    -1,
		MaxAckPending: MaxAckPending,
		FilterSubject: eventsv1.SubjectUserAuthenticated,
	})
	if err != nil {
		return nil, fmt.Errorf("create or update consumer %s: %w", eventsv1.ConsumerMailWorker, err)
	}
	if age := stream.CachedInfo().Config.MaxAge; age > 0 && age <= cfg.Horizon {
		return cons, fmt.Errorf("%w: max age %s, retry horizon %s", errShortStream, age, cfg.Horizon)
	}
	return cons, nil
}

// errShortStream says that AUTH_EVENTS keeps events for less than the
// retry horizon.
var errShortStream = errors.New("the stream keeps events for less than the retry horizon")
