// Package deliver takes one user.authenticated message from JetStream to
// the relay and back, along one path: decode → claim the email in the
// person's record (deciding what the sign-in deserves, at first sight) →
// render → send → acknowledge (which records a sent email), or record the
// failure and hand back or dead-letter. handle.go has the path up to the
// send, settle.go what follows it. The semantics are stated in the
// mail-worker's README ("Delivery semantics").
package deliver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"github.com/doorbell/doorbell/platform/telemetry"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/deadletter"
	"github.com/doorbell/doorbell/services/mail-worker/internal/ledger"
	"github.com/doorbell/doorbell/services/mail-worker/internal/relay"
	"github.com/doorbell/doorbell/services/mail-worker/internal/render"
	"github.com/doorbell/doorbell/services/mail-worker/internal/smtpsend"
)

// Sender delivers one email and returns once the relay accepted it. Its
// errors are classified as smtpsend.Classify says. When ctx ends it stops,
// unless the end of the data is already sent. *smtpsend.Sender is one.
type Sender interface {
	Send(ctx context.Context, m smtpsend.Message) (smtpsend.Receipt, error)
}

// Renderer turns a sign-in into an email of a kind. *render.Renderer is one.
type Renderer interface {
	Render(kind string, d render.Data) (render.Email, error)
}

// People reads and writes the records of people, with compare-and-set.
// Recent guesses a record without a read (as the People last saw it;
// nil and 0 when they know of none). *ledger.Store is one.
type People interface {
	Get(ctx context.Context, key string) (*ledger.Record, uint64, error)
	Recent(key string) (*ledger.Record, uint64)
	Put(ctx context.Context, key string, r ledger.Record, rev uint64) (uint64, error)
}

// DeadLetters stores messages given up, and reports whether the letter was
// already stored. *deadletter.Publisher is one.
type DeadLetters interface {
	Publish(ctx context.Context, l deadletter.Letter) (duplicate bool, err error)
}

// InStream reports whether the message at a sequence is still in
// AUTH_EVENTS. StreamHas makes one.
type InStream func(ctx context.Context, seq uint64) (bool, error)

// Acks reports what JetStream says of the consumer's messages: the
// consumer's creation time and ack floor (see ledger.Acks). fresh asks
// JetStream now; otherwise a figure a few seconds old will do.
// ConsumerAcks makes one.
type Acks func(ctx context.Context, fresh bool) (ledger.Acks, error)

// Retry is the policy for failed attempts.
type Retry struct {
	// BackoffBase and BackoffMax space the attempts at one email (see
	// Backoff); an outage of the relay does not make them grow.
	BackoffBase, BackoffMax time.Duration
	// Horizon is how long an event is tried: after a failed attempt at an
	// event stored longer ago than this, it is given up as expired.
	Horizon time.Duration
}

// Handler handles user.authenticated messages, one delivery per Handle
// call, along one path: decode → claim the email in the person's record
// (decide, at first sight) → render → send → acknowledge (which records a
// sent email), or record the failure and hand back or dead-letter. Every
// message ends acknowledged, handed back with a delay, or dead-lettered and
// terminated, and produces one log line at info level or above.
//
// All fields but Now, Jitter, Tracer, Propagator and LogEmails are
// required. A Handler is safe for concurrent use if its parts are.
type Handler struct {
	Sender      Sender
	Renderer    Renderer
	People      People
	InStream    InStream
	Acks        Acks
	DeadLetters DeadLetters
	Gate        *relay.Gate
	Metrics     *Metrics
	Log         *slog.Logger
	Retry       Retry
	// Policy shapes the decisions (the alert window).
	Policy ledger.Policy
	// AckWait is the consumer's: a message that another delivery holds is
	// handed back for this long. The message is reported in progress every
	// third of it while it is handled.
	AckWait time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Jitter returns a factor in [-1, 1] for Backoff; uniform random when nil.
	Jitter func() float64
	// Tracer makes a consumer span per delivery, continuing the trace of
	// the sign-in whose context the message carries, with child spans for
	// the record's reads and writes, render, smtp send and the dead-letter
	// publish. No spans when nil.
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

// delivery is one delivery of a message.
type delivery struct {
	msg jetstream.Msg
	ledger.Delivery
	stored   time.Time // when JetStream stored the message (its clock)
	stream   string
	consumer string
}

// claimed is an email this delivery holds in the person's record, at rev.
type claimed struct {
	key    string
	rev    uint64
	rec    ledger.Record
	email  ledger.Email
	folded []ledger.Email // the held sign-ins this alert tells of too
}

// Handle handles one delivery of msg. ctx ends when the worker stops: a
// message not yet sent is then handed back at once, one whose data the
// relay has is finished and recorded (on a context of its own).
func (h *Handler) Handle(ctx context.Context, msg jetstream.Msg) {
	h.Metrics.received.Inc()
	d := newDelivery(msg)
	ctx, span := h.startConsume(ctx, msg, d)
	defer span.End()
	stopLease := keepInProgress(msg, h.AckWait/3)

	eventID := "" // only from a valid event
	ev, err := decode(msg.Data())
	var o outcome
	if err != nil {
		o = h.giveUp(ctx, d, nil, ReasonUndecodable, err.Error(), err)
	} else {
		eventID = ev.GetEventId()
		span.SetAttributes(attrEventID.String(eventID))
		o = h.deliver(ctx, d, ev)
		o.hide = ev.GetEmail()
	}
	stopLease()
	endConsume(span, eventID, o)
	h.logOutcome(ctx, eventID, d, o)
	if eventID != "" {
		h.Log.DebugContext(ctx, "event details", "event_id", eventID, "email", ev.GetEmail(),
			"provider", ev.GetProvider(), "device_id", ev.GetClient().GetDeviceId())
	}
}

// deliver takes a valid event from the claim to its settlement. Once the
// email is claimed, every path records how the attempt ended, so that the
// claim never outlives this delivery unless the worker dies.
func (h *Handler) deliver(ctx context.Context, d delivery, ev *eventsv1.UserAuthenticated) outcome {
	if o, cause, stop := h.mustWait(ctx); stop {
		return h.handBack(d, o, h.delayFor(cause, ledger.Email{}), cause)
	}
	// Bookkeeping outlives a shutdown: what the relay accepted is recorded.
	book := context.WithoutCancel(ctx)
	c, o, ok := h.claim(book, d, ev)
	if !ok {
		return o
	}
	email, err := h.render(ctx, c, ev)
	if err != nil {
		return h.giveUp(book, d, &c, ReasonPermanent, "cannot render", err)
	}
	err = h.send(ctx, d, c.email, ev, email)
	return h.settle(ctx, d, c, err)
}

// mustWait says whether the message must go back to JetStream before it
// is claimed, and why: the worker is stopping, or the relay fails
// everyone. (A claimed email that meets either is handed back by settle.)
func (h *Handler) mustWait(ctx context.Context) (outcome, string, bool) {
	switch {
	case ctx.Err() != nil:
		return outcome{result: logShutdown, reason: "worker is stopping; handed back"}, causeShutdown, true
	case h.Gate.Paused():
		return outcome{result: logRetry, reason: "the relay fails every email; handed back"}, causeRelay, true
	}
	return outcome{}, "", false
}

// claim reads the person's record and, as ledger.Claim decides, claims the
// email (ok) or settles the message: a duplicate, nothing to send, held
// elsewhere, given up before. A record changed by another writer in
// between is read again.
//
// The first round decides on the record as this worker last saw it
// (People.Recent), without a read: a decision that stores a record is
// checked by its compare-and-set; any other is made again on a record
// read now.
func (h *Handler) claim(ctx context.Context, d delivery, ev *eventsv1.UserAuthenticated) (claimed, outcome, bool) {
	key := ledger.Key(ev.GetIssuer(), ev.GetSubject())
	s := ledger.SignIn{EventID: ev.GetEventId(), At: signInTime(ev, d), DeviceID: ev.GetClient().GetDeviceId(),
		IP: ev.GetClient().GetIp(), UserAgent: ev.GetClient().GetUserAgent()}
	d.Now = h.now()
	acks, err := h.Acks(ctx, false)
	if err != nil {
		return claimed{}, h.retryLater(d, outcome{result: logRetry, reason: "cannot read the consumer's state", err: err}), false
	}
	d.Acks = acks
	guess := true
	for range maxConflicts {
		rec, rev, err := h.record(ctx, key, guess)
		if err != nil {
			return claimed{}, h.retryLater(d, outcome{result: logRetry, reason: "cannot read the person's record", err: err}), false
		}
		plan := ledger.Claim(rec, s, d.Delivery, h.Policy)
		if guess && !plan.Stores() {
			guess = false
			continue
		}
		if plan.Step == ledger.Elsewhere && h.otherGone(ctx, plan.Email.Seq) {
			plan = ledger.Gone(rec, plan.Email, d.Delivery, h.Retry.Horizon)
		}
		var (
			c        claimed
			o        outcome
			ok, lost bool
		)
		if plan.Step == ledger.Send || plan.Step == ledger.Poison || plan.Step == ledger.Unconfirmed {
			c, o, ok, lost = h.claimEmail(ctx, d, key, rev, plan)
		} else {
			o, lost = h.settleWithoutSending(ctx, d, key, rev, plan)
		}
		if !lost {
			return c, o, ok
		}
		guess = false
	}
	return claimed{}, h.retryLater(d, outcome{result: logRetry, reason: "the person's record keeps changing"}), false
}

// record is the person's record: the guess of People.Recent, or read.
func (h *Handler) record(ctx context.Context, key string, guess bool) (*ledger.Record, uint64, error) {
	if guess {
		rec, rev := h.People.Recent(key)
		return rec, rev, nil
	}
	return h.readRecord(ctx, key)
}

// settleWithoutSending settles a message whose plan sends nothing now,
// storing the plan's record first when it changed. lost reports that
// another writer changed the record since rev: read it again.
func (h *Handler) settleWithoutSending(ctx context.Context, d delivery, key string, rev uint64, plan ledger.Plan) (o outcome, lost bool) {
	o = outcome{kind: plan.Kind}
	switch plan.Step {
	case ledger.Duplicate, ledger.Elsewhere:
		h.Metrics.emails.WithLabelValues(string(plan.Kind), ResultDuplicate).Inc()
		trace.SpanFromContext(ctx).SetAttributes(attrDuplicate.Bool(true))
		o.result = logDuplicate
		if plan.Step == ledger.Elsewhere {
			o.reason = "another message with this event holds the email and finishes it"
		}
		return h.ack(ctx, d, o), false
	case ledger.Terminate:
		o.result, o.reason = logFailed, "given up before; terminating again"
		return h.term(d, o), false
	case ledger.Wait:
		o.result, o.reason = logWaiting, "another delivery of this message may still be sending it"
		return h.handBack(d, o, h.AckWait, causeBusy), false
	case ledger.Told:
		o.result, o.reason = logFolded, "told of in the alert of "+plan.Email.FoldedInto
		return h.ack(ctx, d, o), false
	}
	// Hold, Counted or Nothing.
	if plan.Changed {
		if _, err := h.writeRecord(ctx, key, plan.Record, rev); errors.Is(err, ledger.ErrConflict) {
			return o, true
		} else if err != nil {
			o.result, o.reason, o.err = logRetry, "cannot update the person's record", err
			return h.retryLater(d, o), false
		}
	}
	h.countDecision(plan)
	switch plan.Step {
	case ledger.Hold:
		o.result, o.reason = logHeld, "inside the alert window of the last alert; told of in the next"
		return h.handBack(d, o, max(time.Second, plan.Until.Sub(d.Now)), causeWindow), false
	case ledger.Counted:
		o.result, o.reason = logHeld, fmt.Sprintf("inside the alert window, with %d sign-ins held already; counted, and told of by number in the next alert", ledger.MaxHeld)
		return h.ack(ctx, d, o), false
	}
	o.result = logNothing
	return h.ack(ctx, d, o), false
}

// claimEmail writes the plan's record, which claims the email (Send) or
// marks it poison (Poison, then given up). lost reports that another
// writer changed the record since rev: read it again.
func (h *Handler) claimEmail(ctx context.Context, d delivery, key string, rev uint64, plan ledger.Plan) (c claimed, o outcome, ok, lost bool) {
	next, err := h.writeRecord(ctx, key, plan.Record, rev)
	if errors.Is(err, ledger.ErrConflict) {
		return claimed{}, outcome{}, false, true
	}
	if err != nil {
		// The write may have landed: then the next delivery finds this
		// one's claim, waits one AckWait and takes over.
		o = outcome{kind: plan.Kind, result: logRetry, reason: "cannot claim the email in the person's record", err: err}
		return claimed{}, h.retryLater(d, o), false, false
	}
	h.countDecision(plan)
	h.Metrics.emails.WithLabelValues(string(ledger.NewDevice), ResultFolded).Add(float64(plan.NewlyFolded))
	c = claimed{key: key, rev: next, rec: plan.Record, email: plan.Email, folded: plan.Folded}
	switch plan.Step {
	case ledger.Poison:
		return claimed{}, h.giveUp(ctx, d, &c, ReasonPoison, "the worker died or hung while sending it, time after time", nil), false, false
	case ledger.Unconfirmed:
		return claimed{}, h.giveUp(ctx, d, &c, ReasonUnconfirmed, "no answer after the data, twice", nil), false, false
	}
	return c, outcome{}, true, false
}

// countDecision counts what was decided for a sign-in, once it is stored.
func (h *Handler) countDecision(p ledger.Plan) {
	if p.Decided {
		h.Metrics.decisions.WithLabelValues(string(p.Kind)).Inc()
	}
}

// maxConflicts bounds the read-decide-write rounds of one claim. Every
// round one writer wins, so N handlers at one person need at most N.
const maxConflicts = 32

// render builds the email, in the render span: this sign-in and the held
// ones it tells of too, newest first, and how many more it tells of by
// number.
func (h *Handler) render(ctx context.Context, c claimed, ev *eventsv1.UserAuthenticated) (render.Email, error) {
	_, span := h.tracer().Start(ctx, spanRender, trace.WithAttributes(attrKind.String(string(c.email.Kind))))
	defer span.End()
	signIns := []render.SignIn{{When: authenticatedAt(ev), IP: ev.GetClient().GetIp(), UserAgent: ev.GetClient().GetUserAgent()}}
	for _, f := range c.folded {
		signIns = append(signIns, render.SignIn{When: f.At, IP: f.IP, UserAgent: f.UserAgent})
	}
	slices.SortStableFunc(signIns, func(a, b render.SignIn) int { return b.When.Compare(a.When) })
	email, err := h.Renderer.Render(string(c.email.Kind), render.Data{
		Name:           ev.GetName(),
		Email:          ev.GetEmail(),
		Provider:       ev.GetProvider(),
		Locale:         ev.GetLocale(),
		AcceptLanguage: ev.GetClient().GetAcceptLanguage(),
		SignIns:        signIns,
		More:           c.email.More,
	})
	if err != nil {
		span.SetStatus(codes.Error, "cannot render")
	}
	return email, err
}

// send hands the email to the relay, in the smtp send span.
func (h *Handler) send(ctx context.Context, d delivery, e ledger.Email, ev *eventsv1.UserAuthenticated, email render.Email) error {
	ctx, span := h.tracer().Start(ctx, spanSend, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attrKind.String(string(e.Kind)), attrAttempt.Int64(int64(d.Num))))
	defer span.End()
	receipt, err := h.Sender.Send(ctx, smtpsend.Message{
		EventID: e.EventID,
		ToName:  ev.GetName(),
		ToAddr:  ev.GetEmail(),
		Subject: email.Subject,
		Text:    email.Text,
		HTML:    email.HTML,
		Lang:    email.Lang,
	})
	span.SetAttributes(attrSMTPOutcome.String(smtpsend.OutcomeOf(err)))
	if err != nil {
		span.SetStatus(codes.Error, failureReason(err))
		return err
	}
	if at := authenticatedAt(ev); !at.IsZero() {
		telemetry.Observe(ctx, h.Metrics.loginToMail, receipt.AcceptedAt.Sub(at).Seconds())
	}
	return nil
}

// decode reads a user.authenticated payload and checks it; its errors say
// why, for the dead letter.
func decode(data []byte) (*eventsv1.UserAuthenticated, error) {
	ev := &eventsv1.UserAuthenticated{}
	if err := proto.Unmarshal(data, ev); err != nil {
		return nil, fmt.Errorf("payload is not a UserAuthenticated protobuf: %w", err)
	}
	if err := ev.Validate(); err != nil {
		return nil, fmt.Errorf("invalid event: %w", err)
	}
	return ev, nil
}

// newDelivery reads msg's metadata.
func newDelivery(msg jetstream.Msg) delivery {
	d := delivery{msg: msg, Delivery: ledger.Delivery{Num: 1}, stream: eventsv1.StreamAuthEvents, consumer: eventsv1.ConsumerMailWorker}
	if md, err := msg.Metadata(); err == nil {
		d.Seq, d.Num, d.stored, d.stream, d.consumer = md.Sequence.Stream, md.NumDelivered, md.Timestamp, md.Stream, md.Consumer
	}
	d.Redrive = msg.Headers().Get(deadletter.HeaderRedrivenFrom) != ""
	return d
}

// keepInProgress reports msg in progress every interval until the returned
// function is called, so that JetStream gives a message in hand to no one
// else, however long its send (the final reply may take minutes) or its
// bookkeeping (NATS coming back) takes.
func keepInProgress(msg jetstream.Msg, every time.Duration) (stop func()) {
	every = max(every, 100*time.Millisecond)
	// A timer rather than a goroutine: most messages are done long before
	// the first report is due.
	var (
		mu      sync.Mutex
		stopped bool
		t       *time.Timer
	)
	mu.Lock()
	defer mu.Unlock()
	t = time.AfterFunc(every, func() {
		_ = msg.InProgress()
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			t.Reset(every)
		}
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		t.Stop()
	}
}

// otherGone reports whether the message at seq has left the stream, so
// that its claim can be taken over; when unsure, it is not.
func (h *Handler) otherGone(ctx context.Context, seq uint64) bool {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	there, err := h.InStream(ctx, seq)
	return err == nil && !there
}

// StreamHas returns an InStream over stream.
func StreamHas(stream jetstream.Stream) InStream {
	return func(ctx context.Context, seq uint64) (bool, error) {
		_, err := stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return false, nil
		}
		return err == nil, err
	}
}

// ConsumerAcks returns the Acks of cons. A figure that need not be fresh
// is at most acksMaxAge old: one caller at a time asks JetStream again,
// the others take the figure in hand meanwhile, and keep it while
// JetStream does not answer (each ask bounded by opTimeout). Only the
// first ask, and a fresh one, can fail.
func ConsumerAcks(cons jetstream.Consumer) Acks {
	var (
		mu      sync.Mutex
		known   ledger.Acks
		asked   time.Time
		refresh atomic.Bool
	)
	return func(ctx context.Context, fresh bool) (ledger.Acks, error) {
		mu.Lock()
		a, at := known, asked
		mu.Unlock()
		stale := !fresh && !at.IsZero()
		if stale {
			if time.Since(at) < acksMaxAge || !refresh.CompareAndSwap(false, true) {
				return a, nil
			}
			defer refresh.Store(false)
		}
		ictx, cancel := context.WithTimeout(ctx, opTimeout)
		info, err := cons.Info(ictx)
		cancel()
		if err != nil {
			if stale {
				return a, nil
			}
			return ledger.Acks{}, fmt.Errorf("consumer info: %w", err)
		}
		mu.Lock()
		defer mu.Unlock()
		if !info.Created.Equal(known.Consumer) {
			known = ledger.Acks{Consumer: info.Created} // made anew: its floor starts over
		}
		known.Floor, asked = max(known.Floor, info.AckFloor.Stream), time.Now()
		return known, nil
	}
}

// acksMaxAge is how old Acks that need not be fresh may be: they only let
// a record forget sent emails sooner.
const acksMaxAge = 5 * time.Second

// signInTime is the event's authenticated_at, or when JetStream stored it
// for an event without one.
func signInTime(ev *eventsv1.UserAuthenticated, d delivery) time.Time {
	if at := authenticatedAt(ev); !at.IsZero() {
		return at
	}
	return d.stored
}

func authenticatedAt(ev *eventsv1.UserAuthenticated) time.Time {
	if at := ev.GetAuthenticatedAt(); at != nil && at.IsValid() {
		return at.AsTime()
	}
	return time.Time{}
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
