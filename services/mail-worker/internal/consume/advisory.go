package consume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/deadletter"
)

// MaxDeliveriesSubject is where JetStream announces that a message of
// AUTH_EVENTS reached the mail-worker consumer's MaxDeliver.
const MaxDeliveriesSubject = eventsv1.SubjectMaxDeliveries

// maxDeliveriesAdvisory is the part of io.nats.jetstream.advisory.v1.max_deliver
// the worker reads.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// Settings of the MAIL_MAX_DELIVERIES stream and of the consumer the
// replicas share on it.
const (
	// maxDeliveriesDescription marks the stream as the worker's own, so
	// that it is kept up to date; one an operator made is used as it is.
	maxDeliveriesDescription = "Doorbell mail-worker: MAX_DELIVERIES advisories of AUTH_EVENTS/mail-worker, kept until the message is dead-lettered"
	// maxDeliveriesMaxAge matches AUTH_EVENTS: after that the message an
	// advisory names is gone anyway.
	maxDeliveriesMaxAge = 7 * 24 * time.Hour
	// advisoryTimeout bounds the handling of one advisory.
	advisoryTimeout = 30 * time.Second
	// advisoryAckWait is well above advisoryTimeout, and advisories are
	// pulled one at a time: one comes back only when the replica that took
	// it died or lost NATS.
	advisoryAckWait = 2 * advisoryTimeout
	// advisoryRetryBase and advisoryRetryMax space the retries of an
	// advisory whose message could not be read or dead-lettered.
	advisoryRetryBase = time.Second
	advisoryRetryMax  = 5 * time.Minute
)

// SetupMaxDeliveries makes sure the advisories that a message ran out of
// deliveries are stored until a worker has acted on them: the
// MAIL_MAX_DELIVERIES work-queue stream on MaxDeliveriesSubject, and the
// durable consumer "mail-worker" every replica shares on it. The server
// sends the advisory when the last delivery's AckWait runs out, which is
// often while no worker runs (they all crashed on that message); a plain
// subscription would miss it and leave the message in AUTH_EVENTS.
//
// Like the other objects the worker owns, it creates or updates the stream
// and uses one an operator made (with another description) as it is.
//
// replicas (at least 1) is the replica count it creates the stream with;
// a higher one an operator set is kept.
func SetupMaxDeliveries(ctx context.Context, js jetstream.JetStream, replicas int, log *slog.Logger) (jetstream.Consumer, error) {
	name := eventsv1.StreamMaxDeliveries
	cfg := jetstream.StreamConfig{
		Name:        name,
		Description: maxDeliveriesDescription,
		Subjects:    []string{MaxDeliveriesSubject},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      maxDeliveriesMaxAge,
		// The server publishes advisories without a reply subject.
		NoAck:    true,
		Replicas: max(1, replicas),
	}
	stream, err := js.Stream(ctx, name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		stream, err = js.CreateStream(ctx, cfg)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			stream, err = js.Stream(ctx, name) // another replica was faster
		} else if err == nil {
			log.InfoContext(ctx, "advisory stream created", "stream", name, "subject", MaxDeliveriesSubject)
		}
	case err == nil && stream.CachedInfo().Config.Description == maxDeliveriesDescription:
		cfg.Replicas = max(cfg.Replicas, stream.CachedInfo().Config.Replicas)
		stream, err = js.UpdateStream(ctx, cfg)
	case err == nil:
		log.InfoContext(ctx, "using the advisory stream an operator made, as it is", "stream", name)
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       eventsv1.ConsumerMailWorker,
		Description:   "Doorbell mail-worker: dead-letters the messages these advisories name",
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       advisoryAckWait,
		MaxAckPending: 64,
	})
	if err != nil {
		return nil, fmt.Errorf("consumer %s on stream %s: %w", eventsv1.ConsumerMailWorker, name, err)
	}
	return cons, nil
}

// WatchMaxDeliveries dead-letters messages that ran out of deliveries
// without a handler deciding their fate: a worker that crashed or hung on
// every delivery, or a dead letter that could not be stored on the last
// one. It takes the stored MAX_DELIVERIES advisories from cons (made by
// SetupMaxDeliveries; nil when that failed at start), reads each message
// from AUTH_EVENTS by sequence and files it with reason "exhausted", then
// acknowledges the advisory; when that fails it tries the advisory again
// later, with backoff.
//
// It keeps going until ctx is done: when the stream or consumer cannot be
// made, or is deleted under it, it logs why and sets them up again with
// backoff. When another stream already captures the advisories (an
// operator's audit stream on $JS.EVENT.>), it cannot have its own, says
// so, and listens with a plain subscription instead, which misses
// advisories sent while no worker listens.
//
// Replicas share cons, so each advisory is handled by one of them; the
// dead letter's Nats-Msg-Id still makes a second filing disappear. The
// dead-letter publish is a span of tracer (none when nil) in the trace
// whose context the message carries.
func WatchMaxDeliveries(ctx context.Context, cons jetstream.Consumer, nc *nats.Conn, js jetstream.JetStream, replicas int,
	dlq DeadLetters, m *Metrics, tracer trace.Tracer, log *slog.Logger,
) {
	if tracer == nil {
		tracer = noop.NewTracerProvider().Tracer(TracerName)
	}
	file := func(actx context.Context, data []byte) bool {
		return deadLetterExhausted(actx, js, dlq, m, tracer, log, data)
	}
	for attempt := uint64(1); ctx.Err() == nil; attempt++ {
		var err error
		if cons == nil {
			cons, err = SetupMaxDeliveries(ctx, js, replicas, log)
		}
		switch {
		case isSubjectOverlap(err):
			err = watchUnstored(ctx, nc, file, log, err)
		case err == nil:
			err = consumeAdvisories(ctx, cons, file)
			cons = nil
			attempt = 1
		}
		if ctx.Err() != nil {
			return
		}
		wait := Backoff(advisoryRetryBase, advisoryRetryMax, attempt, 0)
		log.ErrorContext(ctx, "cannot take MAX_DELIVERIES advisories; setting up again", "stream", eventsv1.StreamMaxDeliveries,
			"error", err, "retry_in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// isSubjectOverlap reports whether err is JetStream refusing a stream
// whose subjects another stream captures (err_code 10065).
func isSubjectOverlap(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == 10065
}

// consumeAdvisories files the advisories cons holds, one at a time, until
// ctx is done (nil) or the consumer is unusable (its error).
func consumeAdvisories(ctx context.Context, cons jetstream.Consumer, file func(context.Context, []byte) bool) error {
	it, err := cons.Messages(jetstream.PullMaxMessages(1))
	if err != nil {
		return fmt.Errorf("consume %s: %w", eventsv1.StreamMaxDeliveries, err)
	}
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
		case <-stopped:
		}
		it.Stop()
	}()
	for {
		msg, err := it.Next()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			// The iterator rides out reconnects and missed heartbeats by
			// itself; what reaches here (the consumer or stream deleted)
			// has already stopped it.
			return err
		}
		actx, cancel := context.WithTimeout(ctx, advisoryTimeout)
		done := file(actx, msg.Data())
		cancel()
		if done {
			_ = msg.DoubleAck(ctx) // if it fails, the advisory comes back and is filed once
			continue
		}
		delivered := uint64(1)
		if md, err := msg.Metadata(); err == nil {
			delivered = md.NumDelivered
		}
		_ = msg.NakWithDelay(Backoff(advisoryRetryBase, advisoryRetryMax, delivered, 0))
	}
}

// watchUnstored files advisories from a plain subscription until ctx is
// done (nil), or returns why it cannot subscribe; why is the reason the
// worker cannot store them.
func watchUnstored(ctx context.Context, nc *nats.Conn, file func(context.Context, []byte) bool, log *slog.Logger, why error) error {
	ch := make(chan *nats.Msg, 256)
	sub, err := nc.ChanSubscribe(MaxDeliveriesSubject, ch)
	if err != nil {
		return fmt.Errorf("subscribe to %s: %w", MaxDeliveriesSubject, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.FlushTimeout(advisoryTimeout); err != nil { // the server has the subscription
		return fmt.Errorf("subscribe to %s: %w", MaxDeliveriesSubject, err)
	}
	log.WarnContext(ctx, "another stream already captures the MAX_DELIVERIES advisories, so "+
		eventsv1.StreamMaxDeliveries+" cannot: listening without storing them. Exclude "+
		MaxDeliveriesSubject+" from that stream, or make it the one the worker uses by naming it "+
		eventsv1.StreamMaxDeliveries, "error", why)
	for {
		select {
		case <-ctx.Done():
			return nil
		case msg := <-ch:
			actx, cancel := context.WithTimeout(ctx, advisoryTimeout)
			file(actx, msg.Data)
			cancel()
		}
	}
}

// deadLetterExhausted files the message one advisory names. It reports
// whether the advisory is dealt with (filed, already filed, the message is
// gone, or the advisory is unreadable); false means try again later.
func deadLetterExhausted(ctx context.Context, js jetstream.JetStream, dlq DeadLetters, m *Metrics,
	tracer trace.Tracer, log *slog.Logger, data []byte,
) bool {
	var adv maxDeliveriesAdvisory
	if err := json.Unmarshal(data, &adv); err != nil || adv.StreamSeq == 0 || adv.Stream == "" {
		log.WarnContext(ctx, "unreadable MAX_DELIVERIES advisory, dropped", "error", err)
		return true
	}
	if adv.Stream != eventsv1.StreamAuthEvents || adv.Consumer != eventsv1.ConsumerMailWorker {
		// An operator's stream under the worker's name may capture more.
		log.WarnContext(ctx, "MAX_DELIVERIES advisory of another consumer, dropped", "stream", adv.Stream, "consumer", adv.Consumer)
		return true
	}
	stream, err := js.Stream(ctx, adv.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		log.WarnContext(ctx, "message ran out of deliveries, but its stream is gone", "stream", adv.Stream, "stream_seq", adv.StreamSeq)
		return true
	}
	if err != nil {
		log.ErrorContext(ctx, "message ran out of deliveries, but its stream cannot be read; trying again later",
			"stream", adv.Stream, "stream_seq", adv.StreamSeq, "error", err)
		return false
	}
	raw, err := stream.GetMsg(ctx, adv.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		log.InfoContext(ctx, "message ran out of deliveries and is gone already", "stream_seq", adv.StreamSeq)
		return true
	}
	if err != nil {
		log.ErrorContext(ctx, "message ran out of deliveries, but cannot be read; trying again later",
			"stream", adv.Stream, "stream_seq", adv.StreamSeq, "error", err)
		return false
	}
	detail := "delivered " + strconv.FormatUint(adv.Deliveries, 10) +
		" times without an outcome (the worker crashed, hung or could not store a dead letter each time)"
	traced := propagation.TraceContext{}.Extract(ctx, headerCarrier(raw.Header))
	duplicate, err := publishDeadLetter(traced, tracer, dlq, deadletter.Letter{
		Data: raw.Data, Header: raw.Header, Reason: deadletter.ReasonExhausted, Detail: detail,
		Attempts: adv.Deliveries, Stream: adv.Stream, StreamSeq: adv.StreamSeq, Consumer: adv.Consumer, Time: time.Now(),
	})
	if err != nil {
		log.ErrorContext(ctx, "message ran out of deliveries and cannot be dead-lettered yet; trying again later",
			"stream", adv.Stream, "stream_seq", adv.StreamSeq, "error", err)
		return false
	}
	if !duplicate {
		m.deadletters.WithLabelValues(deadletter.ReasonExhausted).Inc()
		log.ErrorContext(ctx, "event handled", "event_id", raw.Header.Get(jetstream.MsgIDHeader), "result", logFailed,
			"attempts", adv.Deliveries, "stream_seq", adv.StreamSeq, "reason", deadletter.ReasonExhausted+": "+detail)
	}
	return true
}
