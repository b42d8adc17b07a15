package deliver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/doorbell/doorbell/services/mail-worker/internal/deadletter"
	"github.com/doorbell/doorbell/services/mail-worker/internal/ledger"
	"github.com/doorbell/doorbell/services/mail-worker/internal/smtpsend"
)

// Bounds of the calls to NATS.
const (
	// opTimeout bounds one read, write or acknowledgement.
	opTimeout = 5 * time.Second
	// maxBookkeeping bounds the retries of what must follow a send (the
	// record, the acknowledgement): NATS may be electing a leader or
	// coming back meanwhile, and the message is kept in progress.
	maxBookkeeping = 15 * time.Minute
)

// settle settles the message after the send: acknowledged once the relay
// accepted the email (the acknowledgement is the record of it: the claim
// of a message JetStream has acknowledged reads as sent, see
// ledger.Acks); dead-lettered when the relay refused it for good
// or the event is past the retry horizon; otherwise the failure is
// recorded and the message handed back, with a delay that grows only with
// the email's own failures.
func (h *Handler) settle(ctx context.Context, d delivery, c claimed, err error) outcome {
	book := context.WithoutCancel(ctx)
	kind := c.email.Kind
	if err == nil {
		h.Gate.Report(ctx, c.email.EventID, nil)
		h.Metrics.emails.WithLabelValues(string(kind), ResultSent).Inc()
		return h.ack(book, d, outcome{kind: kind, result: logSent})
	}
	o := outcome{kind: kind, result: logRetry, reason: failureReason(err), err: err}
	maybeSent := errors.Is(err, smtpsend.ErrMaybeSent)
	if ctx.Err() != nil && !maybeSent {
		// Cut by the shutdown before the end of the data: nothing sent.
		o.result, o.reason, o.err = logShutdown, "worker is stopping; handed back", nil
		return h.release(book, d, c, ledger.NotTried, o, causeShutdown)
	}
	relayFails := h.Gate.Report(ctx, c.email.EventID, err)
	switch {
	case errors.Is(err, smtpsend.ErrPermanent):
		return h.giveUp(book, d, &c, ReasonPermanent, o.reason, err)
	case maybeSent && c.email.Unsure+1 >= ledger.MaxUnsure:
		return h.giveUp(book, d, &c, ReasonUnconfirmed, o.reason+"; the second attempt without an answer after the data", err)
	case h.expired(d):
		return h.giveUp(book, d, &c, ReasonExpired, o.reason+"; older than the retry horizon", err)
	case maybeSent:
		h.Log.WarnContext(ctx, "the relay may have accepted this email before the connection broke or timed out; "+
			"it is sent once more, later (same Message-ID), and may arrive twice",
			"event_id", c.email.EventID, "kind", string(kind), "reason", o.reason)
		return h.release(book, d, c, ledger.Unknown, o, causeEmail)
	case relayFails:
		o.reason += "; the relay fails every email"
		return h.release(book, d, c, ledger.NotTried, o, causeRelay)
	default:
		return h.release(book, d, c, ledger.FailedTry, o, causeEmail)
	}
}

// release records that the attempt ended with res and hands the message
// back, unless the record now says the email is sent or is being sent by
// another delivery that took it over (then that one settles the message).
func (h *Handler) release(ctx context.Context, d delivery, c claimed, res ledger.Result, o outcome, cause string) outcome {
	e, err := h.finish(ctx, d, &c, res)
	switch {
	case err != nil:
		o.reason += "; cannot record it"
		o.err = errors.Join(o.err, err)
	case e.State == ledger.Sending:
		o.result, o.reason = logWaiting, o.reason+"; another delivery took the email over"
		return o
	case e.State == ledger.Sent:
		o.result, o.reason = logDuplicate, o.reason+"; another delivery sent it meanwhile"
		return h.ack(ctx, d, o)
	}
	return h.handBack(d, o, h.delayFor(cause, e), cause)
}

// delayFor is how long a message handed back for cause waits: at once for
// another replica when this one stops, briefly when the relay fails
// everyone (the pulling is paused anyway), and growing with the email's own
// failures otherwise.
func (h *Handler) delayFor(cause string, e ledger.Email) time.Duration {
	switch cause {
	case causeShutdown:
		return 0
	case causeEmail:
		return Backoff(h.Retry.BackoffBase, h.Retry.BackoffMax, uint64(max(1, e.Tries+e.Unsure)), h.jitter())
	default:
		return h.Retry.BackoffBase
	}
}

// finish writes the result of c's attempt into the person's record,
// reading it again when another writer came first, and returns the email
// as stored. NATS failures are retried (see persist).
func (h *Handler) finish(ctx context.Context, d delivery, c *claimed, res ledger.Result) (ledger.Email, error) {
	id := c.email.EventID
	rec, rev := c.rec, c.rev
	err := h.step(ctx, spanWrite, func(ctx context.Context) error {
		return persist(ctx, func(ctx context.Context) error {
			for range maxConflicts {
				next, changed := rec.Finish(id, d.Delivery, res)
				if !changed {
					return nil
				}
				newRev, err := h.People.Put(ctx, c.key, next, rev)
				if err == nil {
					rec, rev = next, newRev
					return nil
				}
				if !errors.Is(err, ledger.ErrConflict) {
					return err
				}
				cur, curRev, err := h.People.Get(ctx, c.key)
				if err != nil {
					return err
				}
				if cur == nil {
					cur = &ledger.Record{}
				}
				rec, rev = *cur, curRev
			}
			return errors.New("the person's record keeps changing")
		})
	})
	c.rec, c.rev = rec, rev
	e, _ := rec.Email(id)
	return e, err
}

// giveUp files the message in MAIL_DEADLETTER, records the email as given
// up (c, when the email is claimed) and terminates the message. When the
// dead letter cannot be stored the message is handed back instead: it is
// never dropped.
func (h *Handler) giveUp(ctx context.Context, d delivery, c *claimed, reason, detail string, err error) outcome {
	var kind ledger.Kind
	if c != nil {
		kind = c.email.Kind
	}
	full := reason + ": " + detail
	duplicate, pubErr := h.publishDeadLetter(ctx, deadletter.Letter{
		Data: d.msg.Data(), Header: d.msg.Headers(), Reason: reason, Detail: detail,
		Attempts: d.Num, Stream: d.stream, StreamSeq: d.Seq, Consumer: d.consumer, Time: h.now(),
	})
	if pubErr != nil {
		o := outcome{kind: kind, result: logRetry, reason: "cannot dead-letter yet (" + full + ")", err: errors.Join(err, pubErr)}
		if c != nil {
			// The email stays given up in all but the record: what made
			// it so is counted, and the next delivery gives it up again
			// without sending (ledger.Claim).
			res := ledger.NotTried
			if reason == ReasonUnconfirmed && c.email.Unsure < ledger.MaxUnsure {
				res = ledger.Unknown
			}
			return h.release(ctx, d, *c, res, o, causeStore)
		}
		return h.retryLater(d, o)
	}
	if c != nil {
		if _, ferr := h.finish(ctx, d, c, ledger.GivenUp); ferr != nil {
			// The letter is stored (once, whatever happens); the next
			// delivery gets here again.
			return h.retryLater(d, outcome{kind: kind, result: logRetry, reason: "dead-lettered; cannot record it (" + full + ")",
				err: errors.Join(err, ferr)})
		}
	}
	if !duplicate {
		h.Metrics.deadletters.WithLabelValues(reason).Inc()
	}
	if kind == ledger.Welcome || kind == ledger.NewDevice {
		h.Metrics.emails.WithLabelValues(string(kind), ResultFailed).Inc()
	}
	return h.term(d, outcome{kind: kind, result: logFailed, reason: full, err: err})
}

// expired reports whether the event was stored longer ago than the retry
// horizon (by this worker's clock against JetStream's: a skew of seconds
// against a horizon of days).
func (h *Handler) expired(d delivery) bool {
	return !d.stored.IsZero() && h.now().Sub(d.stored) >= h.Retry.Horizon
}

// ack acknowledges the message and waits for the server to confirm,
// retrying while NATS recovers (the message is kept in progress). After a
// send the acknowledgement is the record of it: a worker that dies before
// it lands leaves a claim that the message's next delivery takes over and
// sends again (the one window no SMTP client can close; see the README).
func (h *Handler) ack(ctx context.Context, d delivery, o outcome) outcome {
	err := persist(ctx, func(ctx context.Context) error {
		err := d.msg.DoubleAck(ctx)
		if errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
			return nil
		}
		return err
	})
	if err != nil {
		o.reason = strings.TrimPrefix(o.reason+"; ack not confirmed", "; ")
		o.err = errors.Join(o.err, err)
	}
	return o
}

// term terminates the message: it is never delivered again.
func (h *Handler) term(d delivery, o outcome) outcome {
	if err := d.msg.TermWithReason(o.reason); err != nil {
		o.err = errors.Join(o.err, fmt.Errorf("term: %w", err))
	}
	return o
}

// handBack returns the message to JetStream, to be delivered again after
// delay (to any replica).
func (h *Handler) handBack(d delivery, o outcome, delay time.Duration, cause string) outcome {
	if err := d.msg.NakWithDelay(delay); err != nil {
		o.err = errors.Join(o.err, fmt.Errorf("nak: %w", err))
	}
	h.Metrics.retries.WithLabelValues(cause).Inc()
	o.retryIn = delay
	return o
}

// retryLater hands the message back after a failure to read or write
// NATS before anything was sent, with a delay growing with its deliveries.
func (h *Handler) retryLater(d delivery, o outcome) outcome {
	return h.handBack(d, o, Backoff(h.Retry.BackoffBase, h.Retry.BackoffMax, d.Num, h.jitter()), causeStore)
}

// readRecord reads the person's record, in a span.
func (h *Handler) readRecord(ctx context.Context, key string) (rec *ledger.Record, rev uint64, err error) {
	err = h.step(ctx, spanRead, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		rec, rev, err = h.People.Get(ctx, key)
		return err
	})
	return rec, rev, err
}

// writeRecord writes the person's record with compare-and-set, in a span.
func (h *Handler) writeRecord(ctx context.Context, key string, rec ledger.Record, rev uint64) (next uint64, err error) {
	err = h.step(ctx, spanWrite, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		next, err = h.People.Put(ctx, key, rec, rev)
		return err
	})
	return next, err
}

// persist runs op until it succeeds, retrying with backoff (100 ms growing
// to 5 s) for at most maxBookkeeping, each try bounded by opTimeout. It
// gives up at once when the NATS connection is closed (the end of a
// shutdown).
func persist(ctx context.Context, op func(context.Context) error) error {
	try := func() error {
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		return op(octx)
	}
	// The first try needs no backoff: almost every one succeeds.
	err := try()
	if err == nil || errors.Is(err, nats.ErrConnectionClosed) {
		return err
	}
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = 100*time.Millisecond, 5*time.Second
	_, err = backoff.Retry(ctx, func() (struct{}, error) {
		err := try()
		if errors.Is(err, nats.ErrConnectionClosed) {
			return struct{}{}, backoff.Permanent(err)
		}
		return struct{}{}, err
	}, backoff.WithBackOff(b), backoff.WithMaxElapsedTime(maxBookkeeping))
	return err
}

// publishDeadLetter stores l, in a producer span.
func (h *Handler) publishDeadLetter(ctx context.Context, l deadletter.Letter) (bool, error) {
	ctx, span := h.tracer().Start(ctx, spanDeadLetter, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.operation.type", "send"),
			attribute.String("messaging.destination.name", deadletter.Subject),
			attrReason.String(l.Reason),
			attrAttempt.Int64(int64(l.Attempts)),
		))
	defer span.End()
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	duplicate, err := h.DeadLetters.Publish(ctx, l)
	if err != nil {
		span.SetStatus(codes.Error, "cannot store the dead letter")
	}
	span.SetAttributes(attrDuplicate.Bool(duplicate))
	return duplicate, err
}

// failureReason is a short phrase for a send failure: "smtp 451 4.3.0 at
// rcpt to". It never quotes the relay.
func failureReason(err error) string {
	var se *smtpsend.Error
	if errors.As(err, &se) {
		return se.Reason + " at " + string(se.Stage)
	}
	return "smtp failure"
}

// Results logged per message.
const (
	logSent      = "sent"
	logDuplicate = "duplicate"
	logNothing   = "nothing_to_send"
	logRetry     = "retry"
	logWaiting   = "waiting"
	logHeld      = "held"
	logFolded    = "folded"
	logFailed    = "failed"
	logShutdown  = "shutdown"
)

// outcome is what happened to one message, for the log line and the span.
type outcome struct {
	kind    ledger.Kind
	result  string
	reason  string
	err     error
	retryIn time.Duration
	hide    string // the recipient's address, kept out of the log line
}

// logOutcome writes the one line per message. stream_seq lets an operator
// find the message (nats stream get AUTH_EVENTS <seq>), also when it could
// not be decoded.
func (h *Handler) logOutcome(ctx context.Context, eventID string, d delivery, o outcome) {
	level := slog.LevelInfo
	switch {
	case o.result == logFailed, errors.Is(o.err, smtpsend.ErrConfig):
		level = slog.LevelError
	case o.result == logRetry, o.err != nil:
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{
		slog.String("event_id", eventID),
		slog.String("kind", string(o.kind)),
		slog.String("result", o.result),
		slog.Uint64("attempts", d.Num),
		slog.Uint64("stream_seq", d.Seq),
	}
	if o.reason != "" {
		attrs = append(attrs, slog.String("reason", o.reason))
	}
	if o.retryIn > 0 {
		attrs = append(attrs, slog.Duration("retry_in", o.retryIn))
	}
	if h.LogEmails && o.hide != "" {
		attrs = append(attrs, slog.String("email", o.hide))
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsSampled() && trace.SpanFromContext(ctx).IsRecording() {
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()))
	}
	if o.err != nil {
		msg := o.err.Error()
		if o.hide != "" {
			// Errors from the relay quote the recipient; keep it out of logs.
			msg = strings.ReplaceAll(msg, o.hide, "<recipient>")
		}
		attrs = append(attrs, slog.String("error", msg))
	}
	h.Log.LogAttrs(ctx, level, "event handled", attrs...)
}
