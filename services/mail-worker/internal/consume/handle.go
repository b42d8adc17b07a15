package consume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/mail"
	"strings"
	"time"
	"unicode"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/deadletter"
	"github.com/doorbell/doorbell/services/mail-worker/internal/decide"
	"github.com/doorbell/doorbell/services/mail-worker/internal/history"
	"github.com/doorbell/doorbell/services/mail-worker/internal/render"
	"github.com/doorbell/doorbell/services/mail-worker/internal/smtpsend"
	"github.com/doorbell/doorbell/services/mail-worker/internal/telemetry"
)

// Sender delivers one email and returns once the relay accepted it. Its
// errors match smtpsend.ErrTransient or smtpsend.ErrPermanent, and also
// smtpsend.ErrRelay when the relay rather than the email is the problem.
// *smtpsend.Sender is one.
type Sender interface {
	Send(ctx context.Context, m smtpsend.Message) (smtpsend.Receipt, error)
}

// Renderer turns a sign-in into an email of a kind. *render.Renderer is one.
type Renderer interface {
	Render(kind string, d render.Data) (render.Email, error)
}

// SentLog remembers which events got their email. *history.Store is one.
type SentLog interface {
	Sent(ctx context.Context, eventID string) (history.Sent, bool, error)
	MarkSent(ctx context.Context, eventID string, m history.Sent) error
}

// Users remembers people and their devices. *history.Store is one.
type Users interface {
	User(ctx context.Context, issuer, subject string) (*decide.User, error)
	RememberSignIn(ctx context.Context, issuer, subject, deviceID string, now time.Time) error
}

// Claims makes sure one handler at a time handles a person's sign-ins
// (key: history.UserKey). Claim fails with a *history.ClaimedError while
// another handler holds the key. *history.Store is one.
type Claims interface {
	Claim(ctx context.Context, eventID string) (history.Claim, error)
	Release(ctx context.Context, c history.Claim) error
}

// DeadLetters stores messages given up, and reports whether the letter was
// already stored. *deadletter.Publisher is one.
type DeadLetters interface {
	Publish(ctx context.Context, l deadletter.Letter) (duplicate bool, err error)
}

// Retry is the policy for transient failures: the message goes back to
// JetStream with a growing delay until it has been delivered MaxDeliver
// times, then it is given up as exhausted.
type Retry struct {
	MaxDeliver  int
	BackoffBase time.Duration
	BackoffMax  time.Duration
}

// Handler handles one user.authenticated message: decode, claim, skip if
// already sent, decide, render, send, remember, acknowledge. Every message
// ends acknowledged, handed back with a delay, or dead-lettered and
// terminated, and produces exactly one log line at info level or above.
//
// All fields but AttemptTimeout, Now, Jitter, Tracer, Propagator and
// LogEmails are required. A Handler is
// safe for concurrent use if its parts are.
type Handler struct {
	Sender      Sender
	Renderer    Renderer
	Sent        SentLog
	Users       Users
	Claims      Claims
	DeadLetters DeadLetters
	Relay       *Relay
	Metrics     *Metrics
	Log         *slog.Logger
	SiteName    string
	Retry       Retry
	// AttemptTimeout bounds one attempt at a message (the bucket reads
	// and writes and the send); use the consumer's AckWait. One minute
	// when zero.
	AttemptTimeout time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Jitter returns a factor in [-1, 1] for Backoff; uniform random when nil.
	Jitter func() float64
	// Tracer makes a consumer span per delivery, continuing the trace of
	// the sign-in whose context the message carries, with child spans for
	// the bucket reads and writes, decide, render, smtp send and the
	// dead-letter publish. No spans when nil.
	Tracer trace.Tracer
	// Propagator reads the trace context from the message headers; nil
	// means W3C Trace Context (traceparent, tracestate), as the contract
	// says.
	Propagator propagation.TextMapPropagator
	// LogEmails adds the recipient's address to the info-level line each
	// message logs. Off by default: the address then appears at debug
	// level only.
	LogEmails bool
}

// Results logged per message.
const (
	logSent      = "sent"
	logDuplicate = "duplicate"
	logNothing   = "nothing_to_send"
	logRetry     = "retry"
	logFailed    = "failed"
	logShutdown  = "shutdown"
)

// outcome is what happened to one message, for the log line.
type outcome struct {
	kind    decide.Kind
	result  string
	reason  string
	err     error
	retryIn time.Duration
	hide    string // the recipient's address, kept out of the log line
}

// delivery is one delivery of a message.
type delivery struct {
	msg      jetstream.Msg
	attempts uint64 // this delivery's number, from 1
	seq      uint64 // in the stream
	stream   string
	consumer string
}

// Handle processes msg. It waits while the relay is down (see Relay),
// reporting msg in progress meanwhile. When ctx is already done (the
// worker is shutting down) the message is handed back at once for another
// replica.
func (h *Handler) Handle(ctx context.Context, msg jetstream.Msg) {
	h.Metrics.received.Inc()
	d := delivery{msg: msg, attempts: 1, stream: eventsv1.StreamAuthEvents, consumer: eventsv1.ConsumerMailWorker}
	if md, err := msg.Metadata(); err == nil {
		d.attempts, d.seq, d.stream, d.consumer = md.NumDelivered, md.Sequence.Stream, md.Stream, md.Consumer
	}
	ctx, span := h.startConsume(ctx, msg, d)
	defer span.End()

	ev := &eventsv1.UserAuthenticated{}
	var o outcome
	eventID := "" // only from a valid event
	if err := proto.Unmarshal(msg.Data(), ev); err != nil {
		o = h.giveUp(ctx, d, "", ReasonUndecodable, "payload is not a UserAuthenticated protobuf", err)
	} else if err := validate(ev); err != nil {
		o = h.giveUp(ctx, d, "", ReasonUndecodable, "invalid event: "+err.Error(), err)
	} else {
		eventID = ev.GetEventId()
		span.SetAttributes(attrEventID.String(eventID))
		o = h.process(ctx, d, ev)
		o.hide = ev.GetEmail()
	}
	endConsume(span, eventID, o)
	h.logOutcome(ctx, eventID, d, o)
	if eventID != "" {
		h.Log.DebugContext(ctx, "event details", "event_id", eventID, "email", ev.GetEmail(),
			"provider", ev.GetProvider(), "device_id", ev.GetClient().GetDeviceId())
	}
}

// process attempts the message until it is settled. An attempt that fails
// because of the relay costs the message nothing: it waits for the relay
// and tries again, unless other emails got through in between, or the
// relay answered probes but failed this email maxRelayFailures times in
// a row, either of which makes the message itself suspect; then it is
// handed back like any transient failure.
//
// On its last delivery a message whose person is claimed by another
// handler waits here for the claim to end rather than being given up: a
// claim left by a crashed worker must not exhaust the message.
func (h *Handler) process(ctx context.Context, d delivery, ev *eventsv1.UserAuthenticated) outcome {
	var lastEpoch uint64
	relayFailures, claimWaits := 0, 0
	keepAlive := func() { _ = d.msg.InProgress() }
	for {
		if ctx.Err() != nil {
			_ = d.msg.Nak()
			return outcome{result: logShutdown, reason: "worker is stopping; handed back"}
		}
		o, n := h.attempt(ctx, d, ev, claimWaits < maxClaimWaits)
		switch {
		case n.claimLeft > 0:
			claimWaits++
			if err := h.Relay.Hold(ctx, n.claimLeft, keepAlive); err != nil {
				_ = d.msg.Nak()
				return outcome{result: logShutdown, reason: "waiting for another handler; worker stopping; handed back"}
			}
		case n.relayErr != nil:
			switch {
			case relayFailures > 0 && h.Relay.Epoch() != lastEpoch:
				return h.retry(ctx, d, o.kind, o.reason+"; the relay works for other emails", n.relayErr)
			case relayFailures >= maxRelayFailures:
				return h.retry(ctx, d, o.kind, o.reason+"; the relay answers probes but not this email", n.relayErr)
			}
			relayFailures++
			lastEpoch = h.Relay.Epoch()
			h.Relay.Down(ctx, n.relayErr)
			if err := h.Relay.Wait(ctx, keepAlive); err != nil {
				_ = d.msg.Nak()
				return outcome{kind: o.kind, result: logShutdown,
					reason: "relay unusable (" + o.reason + ") and worker stopping; handed back", err: n.relayErr}
			}
		default:
			return o
		}
	}
}

// maxClaimWaits bounds how often one delivery waits for a claim.
const maxClaimWaits = 3

// maxRelayFailures is how often one delivery waits for the relay; when it
// fails because of the relay once more after that, with probes finding the
// relay working every time, the failure counts against the message.
const maxRelayFailures = 3

// next tells process what to do when attempt left the message alone.
type next struct {
	relayErr  error         // the send failed because of the relay: wait for it
	claimLeft time.Duration // another handler holds the person: wait this long
}

// attempt makes one attempt at the message. It leaves the message alone
// and says so in next when the send failed because of the relay, or when
// the person is claimed, this is the message's last delivery and mayWait;
// otherwise the message is settled or handed back in the outcome.
//
// Duplicates: the person is claimed (history.Store.Claim) before the
// sent-marker and the record are read, so that two copies of one event,
// or two sign-ins of one person, handled at once here or in another
// replica, cannot both pass the checks; the marker is written right after
// the relay accepted the email, then the record, then the claim is
// released. What remains is a crash between the acceptance and the marker
// write (see the README).
func (h *Handler) attempt(ctx context.Context, d delivery, ev *eventsv1.UserAuthenticated, mayWait bool) (outcome, next) {
	ctx, cancel := context.WithTimeout(ctx, h.attemptTimeout())
	defer cancel()
	id, issuer, subject := ev.GetEventId(), ev.GetIssuer(), ev.GetSubject()
	device := ev.GetClient().GetDeviceId()

	var claim history.Claim
	err := h.step(ctx, "kv claim", func(ctx context.Context) (err error) {
		claim, err = h.Claims.Claim(ctx, history.UserKey(issuer, subject))
		return err
	})
	var held *history.ClaimedError
	if errors.As(err, &held) {
		wait := held.Left + h.Retry.BackoffBase // the claim has surely ended then
		if d.attempts >= uint64(h.Retry.MaxDeliver) && mayWait {
			return outcome{}, next{claimLeft: wait}
		}
		// Usually the holder is done within moments; at the latest the
		// claim ends after its TTL.
		delay := min(Backoff(h.Retry.BackoffBase, h.Retry.BackoffMax, d.attempts, h.jitter()), wait)
		return h.retryIn(ctx, d, "", "another handler is busy with this person", err, delay), next{}
	}
	if err != nil {
		return h.retry(ctx, d, "", "cannot claim the person", err), next{}
	}
	keepClaim := false
	defer func() {
		if keepClaim {
			return
		}
		if err := h.Claims.Release(ctx, claim); err != nil {
			// It ends by itself after the claim TTL.
			h.Log.DebugContext(ctx, "cannot release claim", "event_id", id, "error", err)
		}
	}()

	var marker history.Sent
	var done bool
	err = h.step(ctx, "kv read sent-marker", func(ctx context.Context) (err error) {
		marker, done, err = h.Sent.Sent(ctx, id)
		return err
	})
	if err != nil {
		return h.retry(ctx, d, "", "cannot read sent-markers", err), next{}
	}
	if done {
		kind := decide.Kind(marker.Kind)
		if kind == decide.Welcome || kind == decide.NewDevice {
			h.Metrics.emails.WithLabelValues(string(kind), ResultDuplicate).Inc()
		}
		// The email went out before; make sure the person's record says
		// so too (a crash may have come between the two writes).
		trace.SpanFromContext(ctx).SetAttributes(attrDuplicate.Bool(true))
		if err := h.remember(ctx, issuer, subject, device); err != nil {
			return h.retryRecord(ctx, d, outcome{kind: kind, result: logDuplicate}, err), next{}
		}
		return h.ack(ctx, d, outcome{kind: kind, result: logDuplicate}), next{}
	}

	kind, err := h.decide(ctx, issuer, subject, device)
	if err != nil {
		return h.retry(ctx, d, "", "cannot read user record", err), next{}
	}
	h.Metrics.decisions.WithLabelValues(string(kind)).Inc()
	if kind == decide.None {
		if err := h.remember(ctx, issuer, subject, device); err != nil {
			return h.retry(ctx, d, kind, "cannot update user record", err), next{}
		}
		return h.ack(ctx, d, outcome{kind: kind, result: logNothing}), next{}
	}

	_, renderSpan := h.tracer().Start(ctx, spanRender, trace.WithAttributes(attrKind.String(string(kind))))
	email, err := h.Renderer.Render(string(kind), render.Data{
		SiteName:  h.SiteName,
		Name:      ev.GetName(),
		Email:     ev.GetEmail(),
		When:      authenticatedAt(ev),
		IP:        ev.GetClient().GetIp(),
		UserAgent: ev.GetClient().GetUserAgent(),
		Locale:    ev.GetLocale(),
		Provider:  ev.GetProvider(),
	})
	if err != nil {
		renderSpan.SetStatus(codes.Error, "cannot render")
	}
	renderSpan.End()
	if err != nil {
		return h.giveUp(ctx, d, kind, ReasonPermanent, "cannot render", err), next{}
	}

	// Tell JetStream the message is being worked on, so a slow SMTP
	// exchange does not run past AckWait and reach another replica.
	_ = d.msg.InProgress()
	sendCtx, sendSpan := h.tracer().Start(ctx, spanSend, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attrKind.String(string(kind)), attrAttempt.Int64(int64(d.attempts))))
	receipt, err := h.Sender.Send(sendCtx, smtpsend.Message{
		EventID: id,
		ToName:  ev.GetName(),
		ToAddr:  ev.GetEmail(),
		Subject: email.Subject,
		Text:    email.Text,
		HTML:    email.HTML,
	})
	sendSpan.SetAttributes(attrSMTPOutcome.String(smtpsend.OutcomeOf(err)))
	if err != nil {
		reason := "smtp failure"
		var se *smtpsend.Error
		if errors.As(err, &se) {
			reason = se.Reason + " at " + string(se.Stage)
		}
		sendSpan.SetStatus(codes.Error, reason)
		sendSpan.End()
		switch {
		case errors.Is(err, smtpsend.ErrRelay):
			if errors.Is(err, smtpsend.ErrMaybeSent) {
				h.Log.WarnContext(ctx, "the relay may have accepted this email before the connection broke; "+
					"it is sent again (same Message-ID) and may arrive twice",
					"event_id", id, "kind", string(kind), "reason", reason)
			}
			return outcome{kind: kind, result: logRetry, reason: reason, err: err}, next{relayErr: err}
		case errors.Is(err, smtpsend.ErrPermanent):
			return h.giveUp(ctx, d, kind, ReasonPermanent, reason, err), next{}
		default:
			return h.retry(ctx, d, kind, reason, err), next{}
		}
	}

	h.Relay.Delivered()
	h.Metrics.emails.WithLabelValues(string(kind), ResultSent).Inc()
	if at := ev.GetAuthenticatedAt(); at != nil && at.IsValid() {
		telemetry.Observe(sendCtx, h.Metrics.loginToMail, receipt.AcceptedAt.Sub(at.AsTime()).Seconds())
	}
	sendSpan.End()
	markErr := h.step(ctx, "kv write sent-marker", func(ctx context.Context) error {
		return h.Sent.MarkSent(ctx, id, history.Sent{MessageID: receipt.MessageID, SentAt: receipt.AcceptedAt, Kind: string(kind)})
	})
	if markErr != nil {
		// The claim stands in for the marker until it ends.
		keepClaim = true
	}
	userErr := h.remember(ctx, issuer, subject, device)
	switch {
	case userErr != nil && markErr == nil:
		// The redelivery finds the sent-marker, sends nothing and updates
		// the record then.
		return h.retryRecord(ctx, d, outcome{kind: kind, result: logSent}, userErr), next{}
	case markErr != nil:
		// Without a marker a redelivery would send the email again, so
		// acknowledge in any case and say what is missing.
		return h.ack(ctx, d, outcome{kind: kind, result: logSent,
			reason: "sent; cannot write sent-marker", err: errors.Join(markErr, userErr)}), next{}
	default:
		return h.ack(ctx, d, outcome{kind: kind, result: logSent}), next{}
	}
}

// ack acknowledges the message and waits for the server to confirm.
func (h *Handler) ack(ctx context.Context, d delivery, o outcome) outcome {
	if err := d.msg.DoubleAck(ctx); err != nil {
		// The message comes back after AckWait; the sent-marker keeps the
		// email from going out twice.
		o.reason = strings.TrimPrefix(o.reason+"; ack not confirmed", "; ")
		o.err = errors.Join(o.err, err)
	}
	return o
}

// retry hands the message back with a backoff delay, or gives it up as
// exhausted when it has had all its deliveries.
func (h *Handler) retry(ctx context.Context, d delivery, kind decide.Kind, reason string, err error) outcome {
	return h.retryIn(ctx, d, kind, reason, err, Backoff(h.Retry.BackoffBase, h.Retry.BackoffMax, d.attempts, h.jitter()))
}

// retryIn is retry with a given delay.
func (h *Handler) retryIn(ctx context.Context, d delivery, kind decide.Kind, reason string, err error, delay time.Duration) outcome {
	if d.attempts >= uint64(h.Retry.MaxDeliver) {
		return h.giveUp(ctx, d, kind, ReasonExhausted, reason, err)
	}
	if nakErr := d.msg.NakWithDelay(delay); nakErr != nil {
		err = errors.Join(err, fmt.Errorf("nak: %w", nakErr))
	}
	h.Metrics.retries.Inc()
	return outcome{kind: kind, result: logRetry, reason: reason, err: err, retryIn: delay}
}

// retryRecord handles a message whose email is settled (sent now or
// before) but whose user record could not be written: it comes back later,
// finds its sent-marker and writes the record then. Out of attempts, it is
// acknowledged: the email went out, only the record is stale.
func (h *Handler) retryRecord(ctx context.Context, d delivery, o outcome, err error) outcome {
	o.reason, o.err = "cannot update user record", err
	if d.attempts >= uint64(h.Retry.MaxDeliver) {
		return h.ack(ctx, d, o)
	}
	o.retryIn = Backoff(h.Retry.BackoffBase, h.Retry.BackoffMax, d.attempts, h.jitter())
	if nakErr := d.msg.NakWithDelay(o.retryIn); nakErr != nil {
		o.err = errors.Join(o.err, fmt.Errorf("nak: %w", nakErr))
	}
	h.Metrics.retries.Inc()
	return o
}

// giveUp files the message in MAIL_DEADLETTER and, once JetStream has
// confirmed that, terminates it so that it is never delivered again. When
// the dead letter cannot be stored the message is handed back with a
// delay instead: it is never dropped. (On its last delivery JetStream then
// reports it with a MAX_DELIVERIES advisory; WatchMaxDeliveries files it.)
func (h *Handler) giveUp(ctx context.Context, d delivery, kind decide.Kind, deadReason, reason string, err error) outcome {
	full := deadReason + ": " + reason
	duplicate, pubErr := publishDeadLetter(ctx, h.tracer(), h.DeadLetters, deadletter.Letter{
		Data: d.msg.Data(), Header: d.msg.Headers(), Reason: deadReason, Detail: reason,
		Attempts: d.attempts, Stream: d.stream, StreamSeq: d.seq, Consumer: d.consumer, Time: h.now(),
	})
	if pubErr != nil {
		delay := Backoff(h.Retry.BackoffBase, h.Retry.BackoffMax, d.attempts, h.jitter())
		if nakErr := d.msg.NakWithDelay(delay); nakErr != nil {
			pubErr = errors.Join(pubErr, fmt.Errorf("nak: %w", nakErr))
		}
		h.Metrics.retries.Inc()
		return outcome{kind: kind, result: logRetry, reason: "cannot dead-letter yet (" + full + ")",
			err: errors.Join(err, pubErr), retryIn: delay}
	}
	if termErr := d.msg.TermWithReason(full); termErr != nil {
		err = errors.Join(err, fmt.Errorf("term: %w", termErr))
	}
	if !duplicate {
		h.Metrics.deadletters.WithLabelValues(deadReason).Inc()
	}
	if kind == decide.Welcome || kind == decide.NewDevice {
		h.Metrics.emails.WithLabelValues(string(kind), ResultFailed).Inc()
	}
	return outcome{kind: kind, result: logFailed, reason: full, err: err}
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
		slog.Uint64("attempts", d.attempts),
		slog.Uint64("stream_seq", d.seq),
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

// decide reads the person's record and decides what to send, in the
// decide span.
func (h *Handler) decide(ctx context.Context, issuer, subject, device string) (decide.Kind, error) {
	ctx, span := h.tracer().Start(ctx, spanDecide)
	defer span.End()
	var user *decide.User
	err := h.step(ctx, "kv read user", func(ctx context.Context) (err error) {
		user, err = h.Users.User(ctx, issuer, subject)
		return err
	})
	if err != nil {
		span.SetStatus(codes.Error, "cannot read user record")
		return "", err
	}
	kind := decide.Decide(user, device)
	span.SetAttributes(attrKind.String(string(kind)))
	return kind, nil
}

// remember writes the sign-in into the person's record.
func (h *Handler) remember(ctx context.Context, issuer, subject, device string) error {
	return h.step(ctx, "kv write user", func(ctx context.Context) error {
		return h.Users.RememberSignIn(ctx, issuer, subject, device, h.now())
	})
}

// publishDeadLetter stores l in a producer span of ctx's trace.
func publishDeadLetter(ctx context.Context, tracer trace.Tracer, dlq DeadLetters, l deadletter.Letter) (bool, error) {
	ctx, span := tracer.Start(ctx, spanDeadLetter, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.operation.type", "send"),
			attribute.String("messaging.destination.name", deadletter.Subject),
			attrReason.String(l.Reason),
			attrAttempt.Int64(int64(l.Attempts)),
		))
	defer span.End()
	duplicate, err := dlq.Publish(ctx, l)
	if err != nil {
		span.SetStatus(codes.Error, "cannot store the dead letter")
	}
	span.SetAttributes(attrDuplicate.Bool(duplicate))
	return duplicate, err
}

func (h *Handler) attemptTimeout() time.Duration {
	if h.AttemptTimeout > 0 {
		return h.AttemptTimeout
	}
	return time.Minute
}

func (h *Handler) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

func (h *Handler) jitter() float64 {
	if h.Jitter != nil {
		return h.Jitter()
	}
	return rand.Float64()*2 - 1
}

func authenticatedAt(ev *eventsv1.UserAuthenticated) time.Time {
	if at := ev.GetAuthenticatedAt(); at != nil && at.IsValid() {
		return at.AsTime()
	}
	return time.Time{}
}

// validate checks what the worker relies on: an event id usable as a key and
// in a Message-ID, a user key, and a deliverable address.
func validate(ev *eventsv1.UserAuthenticated) error {
	if !validEventID(ev.GetEventId()) {
		return errors.New("event_id missing or not an id (letters, digits, '-', '_', '.')")
	}
	if ev.GetIssuer() == "" || ev.GetSubject() == "" {
		return errors.New("issuer or subject missing")
	}
	addr, err := mail.ParseAddress(ev.GetEmail())
	if err != nil || addr.Address != ev.GetEmail() {
		return errors.New("email missing or not a bare address")
	}
	return nil
}

func validEventID(id string) bool {
	if id == "" || len(id) > 128 || id[0] == '.' || id[len(id)-1] == '.' || strings.Contains(id, "..") {
		return false
	}
	for _, r := range id {
		if r > unicode.MaxASCII || !(unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}
