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
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/decide"
	"github.com/doorbell/doorbell/services/mail-worker/internal/history"
	"github.com/doorbell/doorbell/services/mail-worker/internal/render"
	"github.com/doorbell/doorbell/services/mail-worker/internal/smtpsend"
)

// Sender delivers one email and returns once the relay accepted it. Its
// errors match smtpsend.ErrTransient or smtpsend.ErrPermanent. *smtpsend.Sender
// is one.
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

// Retry is the policy for transient failures: the message goes back to
// JetStream with a growing delay until it has been delivered MaxDeliver
// times, then it is given up as exhausted.
type Retry struct {
	MaxDeliver  int
	BackoffBase time.Duration
	BackoffMax  time.Duration
}

// Handler handles one user.authenticated message at a time: decode, skip if
// already sent, decide, render, send, remember, acknowledge. Every message
// ends acknowledged, handed back with a delay, or terminated, and produces
// exactly one log line at info level or above.
//
// All fields but Now and Jitter are required. A Handler is safe for
// concurrent use if its parts are.
type Handler struct {
	Sender   Sender
	Renderer Renderer
	Sent     SentLog
	Users    Users
	Metrics  *Metrics
	Log      *slog.Logger
	SiteName string
	Retry    Retry
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Jitter returns a factor in [-1, 1] for Backoff; uniform random when nil.
	Jitter func() float64
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
}

// Handle processes msg. ctx bounds the work; when it is already done (the
// worker is shutting down) the message is handed back at once for another
// replica.
func (h *Handler) Handle(ctx context.Context, msg jetstream.Msg) {
	h.Metrics.received.Inc()
	attempts, seq := uint64(1), uint64(0)
	if md, err := msg.Metadata(); err == nil {
		attempts, seq = md.NumDelivered, md.Sequence.Stream
	}

	ev := &eventsv1.UserAuthenticated{}
	if err := proto.Unmarshal(msg.Data(), ev); err != nil {
		o := h.giveUp(msg, "", ReasonUndecodable, "payload is not a UserAuthenticated protobuf", err)
		h.logOutcome(ctx, "", seq, attempts, o)
		return
	}
	if err := validate(ev); err != nil {
		o := h.giveUp(msg, "", ReasonUndecodable, "invalid event", err)
		h.logOutcome(ctx, "", seq, attempts, o)
		return
	}
	o := h.process(ctx, msg, ev, attempts)
	if o.err != nil && ev.GetEmail() != "" {
		// Errors from the relay quote the recipient; keep it out of logs.
		o.err = errors.New(strings.ReplaceAll(o.err.Error(), ev.GetEmail(), "<recipient>"))
	}
	h.logOutcome(ctx, ev.GetEventId(), seq, attempts, o)
	h.Log.DebugContext(ctx, "event details", "event_id", ev.GetEventId(), "email", ev.GetEmail(),
		"provider", ev.GetProvider(), "device_id", ev.GetClient().GetDeviceId())
}

func (h *Handler) process(ctx context.Context, msg jetstream.Msg, ev *eventsv1.UserAuthenticated, attempts uint64) outcome {
	if ctx.Err() != nil {
		_ = msg.Nak()
		return outcome{result: logShutdown, reason: "worker is stopping; handed back"}
	}
	id, issuer, subject := ev.GetEventId(), ev.GetIssuer(), ev.GetSubject()
	device := ev.GetClient().GetDeviceId()

	marker, done, err := h.Sent.Sent(ctx, id)
	if err != nil {
		return h.retry(msg, attempts, "", "cannot read sent-markers", err)
	}
	if done {
		kind := decide.Kind(marker.Kind)
		if kind == decide.Welcome || kind == decide.NewDevice {
			h.Metrics.emails.WithLabelValues(string(kind), ResultDuplicate).Inc()
		}
		// The email went out before; make sure the person's record says
		// so too (a crash may have come between the two writes).
		if err := h.Users.RememberSignIn(ctx, issuer, subject, device, h.now()); err != nil {
			return h.retryRecord(ctx, msg, attempts, outcome{kind: kind, result: logDuplicate}, err)
		}
		return h.ack(ctx, msg, outcome{kind: kind, result: logDuplicate})
	}

	user, err := h.Users.User(ctx, issuer, subject)
	if err != nil {
		return h.retry(msg, attempts, "", "cannot read user record", err)
	}
	kind := decide.Decide(user, device)
	h.Metrics.decisions.WithLabelValues(string(kind)).Inc()
	if kind == decide.None {
		if err := h.Users.RememberSignIn(ctx, issuer, subject, device, h.now()); err != nil {
			return h.retry(msg, attempts, kind, "cannot update user record", err)
		}
		return h.ack(ctx, msg, outcome{kind: kind, result: logNothing})
	}

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
		return h.giveUp(msg, kind, ReasonPermanent, "cannot render", err)
	}

	// Tell JetStream the message is being worked on, so a slow SMTP
	// exchange does not run past AckWait and reach another replica.
	_ = msg.InProgress()
	receipt, err := h.Sender.Send(ctx, smtpsend.Message{
		EventID: id,
		ToName:  ev.GetName(),
		ToAddr:  ev.GetEmail(),
		Subject: email.Subject,
		Text:    email.Text,
		HTML:    email.HTML,
	})
	if err != nil {
		reason := "smtp failure"
		var se *smtpsend.Error
		if errors.As(err, &se) {
			reason = se.Reason
		}
		if errors.Is(err, smtpsend.ErrPermanent) {
			return h.giveUp(msg, kind, ReasonPermanent, reason, err)
		}
		return h.retry(msg, attempts, kind, reason, err)
	}

	h.Metrics.emails.WithLabelValues(string(kind), ResultSent).Inc()
	if at := ev.GetAuthenticatedAt(); at != nil && at.IsValid() {
		h.Metrics.loginToMail.Observe(receipt.AcceptedAt.Sub(at.AsTime()).Seconds())
	}
	markErr := h.Sent.MarkSent(ctx, id, history.Sent{MessageID: receipt.MessageID, SentAt: receipt.AcceptedAt, Kind: string(kind)})
	userErr := h.Users.RememberSignIn(ctx, issuer, subject, device, h.now())
	switch {
	case userErr != nil && markErr == nil:
		// The redelivery finds the sent-marker, sends nothing and updates
		// the record then.
		return h.retryRecord(ctx, msg, attempts, outcome{kind: kind, result: logSent}, userErr)
	case markErr != nil:
		// Without a marker a redelivery would send the email again, so
		// acknowledge in any case and say what is missing.
		return h.ack(ctx, msg, outcome{kind: kind, result: logSent,
			reason: "sent; cannot write sent-marker", err: errors.Join(markErr, userErr)})
	default:
		return h.ack(ctx, msg, outcome{kind: kind, result: logSent})
	}
}

// ack acknowledges msg and waits for the server to confirm.
func (h *Handler) ack(ctx context.Context, msg jetstream.Msg, o outcome) outcome {
	if err := msg.DoubleAck(ctx); err != nil {
		// The message comes back after AckWait; the sent-marker keeps the
		// email from going out twice.
		o.reason = strings.TrimPrefix(o.reason+"; ack not confirmed", "; ")
		o.err = errors.Join(o.err, err)
	}
	return o
}

// retry hands msg back with a backoff delay, or gives it up as exhausted
// when it has had all its deliveries.
func (h *Handler) retry(msg jetstream.Msg, attempts uint64, kind decide.Kind, reason string, err error) outcome {
	if attempts >= uint64(h.Retry.MaxDeliver) {
		return h.giveUp(msg, kind, ReasonExhausted, reason, err)
	}
	delay := Backoff(h.Retry.BackoffBase, h.Retry.BackoffMax, attempts, h.jitter())
	if nakErr := msg.NakWithDelay(delay); nakErr != nil {
		err = errors.Join(err, fmt.Errorf("nak: %w", nakErr))
	}
	h.Metrics.retries.Inc()
	return outcome{kind: kind, result: logRetry, reason: reason, err: err, retryIn: delay}
}

// retryRecord handles a message whose email is settled (sent now or
// before) but whose user record could not be written: it comes back later,
// finds its sent-marker and writes the record then. Out of attempts, it is
// acknowledged: the email went out, only the record is stale.
func (h *Handler) retryRecord(ctx context.Context, msg jetstream.Msg, attempts uint64, o outcome, err error) outcome {
	o.reason, o.err = "cannot update user record", err
	if attempts >= uint64(h.Retry.MaxDeliver) {
		return h.ack(ctx, msg, o)
	}
	o.retryIn = Backoff(h.Retry.BackoffBase, h.Retry.BackoffMax, attempts, h.jitter())
	if nakErr := msg.NakWithDelay(o.retryIn); nakErr != nil {
		o.err = errors.Join(o.err, fmt.Errorf("nak: %w", nakErr))
	}
	h.Metrics.retries.Inc()
	return o
}

// giveUp terminates msg so that JetStream never delivers it again.
//
// This is the dead-letter seam: a later change publishes the original bytes
// with the reason to the MAIL_DEADLETTER stream (eventsv1.SubjectDeadLetter)
// here, before the Term.
func (h *Handler) giveUp(msg jetstream.Msg, kind decide.Kind, deadReason, reason string, err error) outcome {
	if termErr := msg.TermWithReason(deadReason + ": " + reason); termErr != nil {
		err = errors.Join(err, fmt.Errorf("term: %w", termErr))
	}
	h.Metrics.deadletters.WithLabelValues(deadReason).Inc()
	if kind == decide.Welcome || kind == decide.NewDevice {
		h.Metrics.emails.WithLabelValues(string(kind), ResultFailed).Inc()
	}
	return outcome{kind: kind, result: logFailed, reason: deadReason + ": " + reason, err: err}
}

// logOutcome writes the one line per message. stream_seq lets an operator
// find the message (nats stream get AUTH_EVENTS <seq>), also when it could
// not be decoded.
func (h *Handler) logOutcome(ctx context.Context, eventID string, seq, attempts uint64, o outcome) {
	level := slog.LevelInfo
	switch {
	case o.result == logRetry:
		level = slog.LevelWarn
	case o.result == logFailed:
		level = slog.LevelError
	case o.err != nil:
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{
		slog.String("event_id", eventID),
		slog.String("kind", string(o.kind)),
		slog.String("result", o.result),
		slog.Uint64("attempts", attempts),
		slog.Uint64("stream_seq", seq),
	}
	if o.reason != "" {
		attrs = append(attrs, slog.String("reason", o.reason))
	}
	if o.retryIn > 0 {
		attrs = append(attrs, slog.Duration("retry_in", o.retryIn))
	}
	if o.err != nil {
		attrs = append(attrs, slog.String("error", o.err.Error()))
	}
	h.Log.LogAttrs(ctx, level, "event handled", attrs...)
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
