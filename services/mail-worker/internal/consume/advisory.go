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
const MaxDeliveriesSubject = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." +
	eventsv1.StreamAuthEvents + "." + eventsv1.ConsumerMailWorker

// maxDeliveriesAdvisory is the part of io.nats.jetstream.advisory.v1.max_deliver
// the worker reads.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// advisoryTimeout bounds the handling of one advisory.
const advisoryTimeout = 30 * time.Second

// WatchMaxDeliveries dead-letters messages that ran out of deliveries
// without a handler deciding their fate: a worker that crashed or hung on
// every delivery, or a dead letter that could not be stored on the last
// one. It listens for the MAX_DELIVERIES advisory, reads the message from
// AUTH_EVENTS by sequence and files it with reason "exhausted".
//
// Every replica listens; the dead letter's Nats-Msg-Id makes the extra
// copies disappear, and only the replica whose copy was stored counts it.
// Advisories are not stored: one sent while no worker runs is missed, and
// the message then stays in AUTH_EVENTS (see the README). It returns when
// ctx is done, or at once when it cannot subscribe.
//
// The dead-letter publish is a span of tracer (none when nil) in the trace
// whose context the message carries.
func WatchMaxDeliveries(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, dlq DeadLetters, m *Metrics,
	tracer trace.Tracer, log *slog.Logger,
) error {
	if tracer == nil {
		tracer = noop.NewTracerProvider().Tracer(TracerName)
	}
	ch := make(chan *nats.Msg, 256)
	sub, err := nc.ChanSubscribe(MaxDeliveriesSubject, ch)
	if err != nil {
		return fmt.Errorf("subscribe to %s: %w", MaxDeliveriesSubject, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case msg := <-ch:
			actx, cancel := context.WithTimeout(ctx, advisoryTimeout)
			deadLetterExhausted(actx, js, dlq, m, tracer, log, msg.Data)
			cancel()
		}
	}
}

func deadLetterExhausted(ctx context.Context, js jetstream.JetStream, dlq DeadLetters, m *Metrics,
	tracer trace.Tracer, log *slog.Logger, data []byte,
) {
	var adv maxDeliveriesAdvisory
	if err := json.Unmarshal(data, &adv); err != nil || adv.StreamSeq == 0 {
		log.WarnContext(ctx, "unreadable MAX_DELIVERIES advisory", "error", err)
		return
	}
	stream, err := js.Stream(ctx, adv.Stream)
	if err != nil {
		log.ErrorContext(ctx, "message ran out of deliveries, but its stream cannot be read; it stays there",
			"stream", adv.Stream, "stream_seq", adv.StreamSeq, "error", err)
		return
	}
	raw, err := stream.GetMsg(ctx, adv.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		log.InfoContext(ctx, "message ran out of deliveries and is gone already", "stream_seq", adv.StreamSeq)
		return
	}
	if err != nil {
		log.ErrorContext(ctx, "message ran out of deliveries, but cannot be read; it stays in the stream",
			"stream", adv.Stream, "stream_seq", adv.StreamSeq, "error", err)
		return
	}
	detail := "delivered " + strconv.FormatUint(adv.Deliveries, 10) +
		" times without an outcome (the worker crashed, hung or could not store a dead letter each time)"
	traced := propagation.TraceContext{}.Extract(ctx, headerCarrier(raw.Header))
	duplicate, err := publishDeadLetter(traced, tracer, dlq, deadletter.Letter{
		Data: raw.Data, Header: raw.Header, Reason: deadletter.ReasonExhausted, Detail: detail,
		Attempts: adv.Deliveries, Stream: adv.Stream, StreamSeq: adv.StreamSeq, Consumer: adv.Consumer, Time: time.Now(),
	})
	if err != nil {
		log.ErrorContext(ctx, "message ran out of deliveries and cannot be dead-lettered; it stays in the stream",
			"stream", adv.Stream, "stream_seq", adv.StreamSeq, "error", err)
		return
	}
	if !duplicate {
		m.deadletters.WithLabelValues(deadletter.ReasonExhausted).Inc()
		log.ErrorContext(ctx, "event handled", "event_id", raw.Header.Get(jetstream.MsgIDHeader), "result", logFailed,
			"attempts", adv.Deliveries, "stream_seq", adv.StreamSeq, "reason", deadletter.ReasonExhausted+": "+detail)
	}
}
