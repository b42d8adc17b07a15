package deadletter

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// Errors an operator's command branches on.
var (
	// ErrNoQueue: MAIL_DEADLETTER does not exist (no worker has started).
	ErrNoQueue = errors.New("stream " + Stream + " does not exist (no mail-worker has started against this NATS yet)")
	// ErrNotFound: no dead letter at that sequence.
	ErrNotFound = errors.New("no such dead letter")
	// ErrNotRedrivable: the letter holds no usable event; redriving it
	// would only dead-letter it again.
	ErrNotRedrivable = errors.New("cannot redrive: the payload is not a usable UserAuthenticated event (inspect it with show, then purge it)")
)

// Queue is the operator's view of MAIL_DEADLETTER.
type Queue struct {
	js     jetstream.JetStream
	stream jetstream.Stream
}

// Open finds MAIL_DEADLETTER; ErrNoQueue when it is missing.
func Open(ctx context.Context, js jetstream.JetStream) (*Queue, error) {
	s, err := js.Stream(ctx, Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, ErrNoQueue
	}
	if err != nil {
		return nil, fmt.Errorf("look up stream %s: %w", Stream, err)
	}
	return &Queue{js: js, stream: s}, nil
}

// Entry is one stored dead letter.
type Entry struct {
	Seq    uint64    // in MAIL_DEADLETTER
	Stored time.Time // when it was stored
	Header nats.Header
	Data   []byte

	// Parsed from the headers; zero when missing.
	Reason      string
	Detail      string
	Attempts    uint64
	Stream      string
	StreamSeq   uint64
	Consumer    string
	FailedAt    time.Time
	OriginalMsg string // the original's Nats-Msg-Id

	// Event is the decoded payload, nil when it is not a UserAuthenticated
	// protobuf; DecodeErr says why.
	Event     *eventsv1.UserAuthenticated
	DecodeErr error
}

// EventID is the event's id, or "" when the payload cannot be decoded.
func (e Entry) EventID() string { return e.Event.GetEventId() }

func entry(m *jetstream.RawStreamMsg) Entry {
	e := Entry{Seq: m.Sequence, Stored: m.Time, Header: m.Header, Data: m.Data}
	h := m.Header
	e.Reason = h.Get(HeaderReason)
	e.Detail = h.Get(HeaderDetail)
	e.Attempts, _ = strconv.ParseUint(h.Get(HeaderAttempts), 10, 64)
	e.Stream = h.Get(HeaderStream)
	e.StreamSeq, _ = strconv.ParseUint(h.Get(HeaderStreamSeq), 10, 64)
	e.Consumer = h.Get(HeaderConsumer)
	e.FailedAt, _ = time.Parse(time.RFC3339Nano, h.Get(HeaderTime))
	e.OriginalMsg = h.Get(HeaderOriginalMsgID)
	ev := &eventsv1.UserAuthenticated{}
	if err := proto.Unmarshal(m.Data, ev); err != nil {
		e.DecodeErr = err
	} else if ev.GetEventId() == "" {
		e.DecodeErr = errors.New("no event id")
	} else {
		e.Event = ev
	}
	return e
}

// List returns every dead letter, oldest first.
func (q *Queue) List(ctx context.Context) ([]Entry, error) {
	var out []Entry
	err := q.Each(ctx, func(e Entry) error {
		out = append(out, e)
		return nil
	})
	return out, err
}

// Each calls fn with every dead letter stored when it starts, oldest
// first, as it reads them: one round trip each (bounded by ctx, or by
// JetStream's default timeout when ctx has no deadline), however many
// there are. Letters stored meanwhile are left for the next call, so that
// fn may redrive what it is given. Each stops at fn's first error.
func (q *Queue) Each(ctx context.Context, fn func(Entry) error) error {
	info, err := q.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("read %s: %w", Stream, err)
	}
	last := info.State.LastSeq
	for seq := max(1, info.State.FirstSeq); seq <= last; {
		m, err := q.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(Subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s at %d: %w", Stream, seq, err)
		}
		if m.Sequence > last {
			return nil
		}
		if err := fn(entry(m)); err != nil {
			return err
		}
		seq = m.Sequence + 1
	}
	return nil
}

// Get returns the dead letter at seq; ErrNotFound when there is none.
func (q *Queue) Get(ctx context.Context, seq uint64) (Entry, error) {
	m, err := q.stream.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) || (err == nil && m.Subject != Subject) {
		return Entry{}, fmt.Errorf("%w at sequence %d", ErrNotFound, seq)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("read %s at %d: %w", Stream, seq, err)
	}
	return entry(m), nil
}

// Redriven describes a re-published dead letter.
type Redriven struct {
	EventID string
	Seq     uint64 // the new message's sequence in AUTH_EVENTS
}

// Redrive publishes the letter at seq again to user.authenticated (original
// bytes and headers, Nats-Msg-Id "redrive-<event id>-<seq>" because the
// original id may still be in AUTH_EVENTS' duplicate window) and then
// deletes it. The person's record (see package ledger) keeps an email that
// did go out from going out twice. Letters without a usable event fail with
// ErrNotRedrivable.
func (q *Queue) Redrive(ctx context.Context, seq uint64) (Redriven, error) {
	e, err := q.Get(ctx, seq)
	if err != nil {
		return Redriven{}, err
	}
	if e.Event == nil || e.Reason == ReasonUndecodable {
		return Redriven{}, ErrNotRedrivable
	}
	msg := nats.NewMsg(eventsv1.SubjectUserAuthenticated)
	msg.Data = e.Data
	for k, vs := range e.Header {
		if strings.HasPrefix(k, "Nats-") || strings.HasPrefix(k, "Doorbell-Dlq-") || k == HeaderRedrivenFrom {
			continue
		}
		msg.Header[k] = vs
	}
	msg.Header.Set(HeaderRedrivenFrom, Stream+"/"+strconv.FormatUint(seq, 10))
	ack, err := q.js.PublishMsg(ctx, msg,
		jetstream.WithMsgID("redrive-"+e.EventID()+"-"+strconv.FormatUint(seq, 10)),
		jetstream.WithExpectStream(eventsv1.StreamAuthEvents))
	if err != nil {
		return Redriven{}, fmt.Errorf("re-publish event %s: %w", e.EventID(), err)
	}
	if err := q.Delete(ctx, seq); err != nil {
		return Redriven{}, fmt.Errorf("event %s re-published as %s %d, but: %w", e.EventID(), eventsv1.StreamAuthEvents, ack.Sequence, err)
	}
	return Redriven{EventID: e.EventID(), Seq: ack.Sequence}, nil
}

// Delete removes the letter at seq; ErrNotFound when there is none.
func (q *Queue) Delete(ctx context.Context, seq uint64) error {
	if _, err := q.Get(ctx, seq); err != nil {
		return err
	}
	if err := q.stream.DeleteMsg(ctx, seq); err != nil {
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("%w at sequence %d", ErrNotFound, seq)
		}
		return fmt.Errorf("delete dead letter %d: %w", seq, err)
	}
	return nil
}

// Purge removes every letter and says how many there were.
func (q *Queue) Purge(ctx context.Context) (uint64, error) {
	before, err := q.count(ctx)
	if err != nil {
		return 0, err
	}
	if err := q.stream.Purge(ctx, jetstream.WithPurgeSubject(Subject)); err != nil {
		return 0, fmt.Errorf("purge %s: %w", Stream, err)
	}
	after, err := q.count(ctx)
	if err != nil {
		return 0, err
	}
	return before - min(before, after), nil
}

func (q *Queue) count(ctx context.Context) (uint64, error) {
	info, err := q.stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", Stream, err)
	}
	return info.State.Msgs, nil
}
