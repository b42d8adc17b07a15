// Package consume runs the mail-worker's JetStream consumer: it sets up the
// durable pull consumer "mail-worker" on the gateway's AUTH_EVENTS stream and
// feeds each user.authenticated message to a Handler, which decides, renders,
// sends and acknowledges.
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
	// AckWait is how long JetStream waits for an acknowledgement before it
	// delivers a message again; it also bounds the handling of one message.
	AckWait time.Duration
	// MaxDeliver is how often a message is delivered at most.
	MaxDeliver int
	// PullMaxMessages is how many messages the client buffers; keep it
	// small, or buffered messages pass AckWait while they wait (nats.go#1929).
	// DefaultPullMaxMessages when zero.
	PullMaxMessages int
	// ShutdownTimeout bounds how long Run lets in-flight messages finish
	// once its context is done.
	ShutdownTimeout time.Duration
}

// DefaultPullMaxMessages is the client-side buffer when Config leaves it zero.
const DefaultPullMaxMessages = 8

// MaxAckPending caps unacknowledged messages across all replicas.
const MaxAckPending = 256

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
		MaxDeliver:    cfg.MaxDeliver,
		MaxAckPending: MaxAckPending,
		FilterSubject: eventsv1.SubjectUserAuthenticated,
	})
	if err != nil {
		return nil, fmt.Errorf("create or update consumer %s: %w", eventsv1.ConsumerMailWorker, err)
	}
	return cons, nil
}

// Run feeds messages from cons to handle, one at a time, until ctx is done.
// Then it stops pulling, lets the messages already received finish (within
// ShutdownTimeout; after that their contexts are cancelled and JetStream
// delivers them again later) and returns nil.
//
// handle gets a context that outlives ctx, bounded by AckWait, so that a
// message in flight at shutdown is finished rather than cut off.
func Run(ctx context.Context, cons jetstream.Consumer, handle func(context.Context, jetstream.Msg), cfg Config, log *slog.Logger) error {
	work, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	pull := cfg.PullMaxMessages
	if pull <= 0 {
		pull = DefaultPullMaxMessages
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		mctx, cancel := context.WithTimeout(work, cfg.AckWait)
		defer cancel()
		handle(mctx, msg)
	},
		jetstream.PullMaxMessages(pull),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			log.WarnContext(ctx, "consumer trouble; nats.go keeps trying", "error", err)
		}),
	)
	if err != nil {
		return fmt.Errorf("start consuming: %w", err)
	}
	log.InfoContext(ctx, "consuming", "stream", eventsv1.StreamAuthEvents, "consumer", eventsv1.ConsumerMailWorker,
		"subject", eventsv1.SubjectUserAuthenticated)

	select {
	case <-ctx.Done():
	case <-cc.Closed():
		return errors.New("consuming stopped unexpectedly (consumer deleted?)")
	}

	cc.Drain()
	timer := time.NewTimer(cfg.ShutdownTimeout)
	defer timer.Stop()
	select {
	case <-cc.Closed():
		log.Info("consumer drained")
	case <-timer.C:
		stopWork()
		cc.Stop()
		log.Warn("shutdown timeout: messages still in flight come back after AckWait", "timeout", cfg.ShutdownTimeout)
	}
	return nil
}
