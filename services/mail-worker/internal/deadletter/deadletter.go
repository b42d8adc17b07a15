// Package deadletter keeps the user.authenticated messages the mail-worker
// gave up on, in the MAIL_DEADLETTER stream: the original bytes and headers
// plus Doorbell-Dlq-* headers saying why, after how many attempts, and
// where the original was. Publisher files letters; Queue lets an operator
// list, show, redrive and purge them (the "mail-worker dlq" command).
//
// A letter's Nats-Msg-Id is "dlq-<stream>-<sequence>" of the original, so
// publishing the same letter again (a retry, another delivery of the same
// message) stores it once within the stream's duplicate window.
package deadletter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/doorbell/doorbell/platform/replicas"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// Stream settings; part of the operational contract.
const (
	Stream  = eventsv1.StreamDeadLetter  // MAIL_DEADLETTER
	Subject = eventsv1.SubjectDeadLetter // mail.deadletter
	MaxAge  = 30 * 24 * time.Hour
	// Description marks the stream as the worker's own; a stream an
	// operator made without it is used as it is.
	Description = "Doorbell mail-worker: sign-in emails given up (original bytes and headers, Doorbell-Dlq-* say why)"
)

// Headers of a dead letter, besides the original ones.
const (
	HeaderReason    = "Doorbell-Dlq-Reason"     // permanent | expired | poison | unconfirmed | undecodable (exhausted: earlier versions)
	HeaderDetail    = "Doorbell-Dlq-Detail"     // a short phrase, never an address
	HeaderAttempts  = "Doorbell-Dlq-Attempts"   // deliveries of the original
	HeaderStreamSeq = "Doorbell-Dlq-Stream-Seq" // the original's sequence in HeaderStream
	HeaderStream    = "Doorbell-Dlq-Stream"     // AUTH_EVENTS
	HeaderConsumer  = "Doorbell-Dlq-Consumer"   // mail-worker
	HeaderTime      = "Doorbell-Dlq-Time"       // RFC 3339, when the worker gave up
	// HeaderOriginalMsgID keeps the original's Nats-Msg-Id (the event id
	// for the gateway's events); the letter has a Nats-Msg-Id of its own.
	HeaderOriginalMsgID = "Doorbell-Dlq-Original-Msg-Id"
	// HeaderRedrivenFrom marks a message that "dlq redrive" re-published:
	// "MAIL_DEADLETTER/<sequence>".
	HeaderRedrivenFrom = "Doorbell-Redriven-From"
)

// Reasons, the values of HeaderReason.
const (
	ReasonPermanent   = "permanent"   // the relay refused the email for good (5xx), or it cannot be built
	ReasonExpired     = "expired"     // still failing after the retry horizon (WORKER_RETRY_HORIZON)
	ReasonPoison      = "poison"      // the worker died or hung while sending it, time after time
	ReasonUnconfirmed = "unconfirmed" // twice the relay did not say whether it took it: it may have arrived
	ReasonUndecodable = "undecodable" // not a UserAuthenticated event, or one the worker cannot use
)

// maxDetail bounds HeaderDetail, in runes.
const maxDetail = 200

// Letter is one message given up.
type Letter struct {
	Data      []byte
	Header    nats.Header // the original's; not modified
	Reason    string      // a Reason* constant
	Detail    string      // why, in a few words; addresses are removed
	Attempts  uint64
	Stream    string // where the original is
	StreamSeq uint64
	Consumer  string
	Time      time.Time
}

// MsgID is the Nats-Msg-Id of the letter for the message at seq in stream.
func MsgID(stream string, seq uint64) string {
	return "dlq-" + stream + "-" + strconv.FormatUint(seq, 10)
}

// StreamConfig is the worker's MAIL_DEADLETTER.
func StreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        Stream,
		Description: Description,
		Subjects:    []string{Subject},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      MaxAge,
		// Above the longest retry delay of a dead-letter publish (the
		// worker's backoff tops out at 5 minutes by default), so a publish
		// that timed out but was stored, then retried, is still stored
		// once.
		Duplicates: 15 * time.Minute,
	}
}

// Ensure makes MAIL_DEADLETTER usable: it creates the stream with want
// replicas (replicas.Auto: as many as the servers can place, up to three)
// when it is missing and updates it when the worker made it (keeping a
// higher replica count an operator set). A stream an operator
// made (another description) is used as it is, as long as it takes Subject.
func Ensure(ctx context.Context, js jetstream.JetStream, want int, log *slog.Logger) error {
	cfg := StreamConfig()
	s, err := js.Stream(ctx, Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		n, err := replicas.Fit(want, func(n int) error {
			cfg.Replicas = n
			_, err := js.CreateStream(ctx, cfg)
			return err
		})
		if err == nil {
			log.InfoContext(ctx, "dead-letter stream created", "stream", Stream, "subject", Subject, "max_age", MaxAge.String(),
				"replicas", n, "replicas_setting", replicas.Setting(want))
			return nil
		}
		if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return fmt.Errorf("create stream %s: %w", Stream, err)
		}
		s, err = js.Stream(ctx, Stream) // another replica was faster
		if err != nil {
			return fmt.Errorf("look up stream %s: %w", Stream, err)
		}
	} else if err != nil {
		return fmt.Errorf("look up stream %s: %w", Stream, err)
	}
	have := s.CachedInfo().Config
	if have.Description != Description {
		if !takes(have.Subjects, Subject) {
			return fmt.Errorf("stream %s exists but does not take subject %s (subjects %v)", Stream, Subject, have.Subjects)
		}
		log.InfoContext(ctx, "using the dead-letter stream an operator made, as it is", "stream", Stream)
		return nil
	}
	n, err := replicas.Fit(want, func(n int) error {
		cfg.Replicas = max(n, have.Replicas) // never lowered
		_, err := js.UpdateStream(ctx, cfg)
		return err
	})
	if err != nil {
		return fmt.Errorf("update stream %s: %w", Stream, err)
	}
	log.DebugContext(ctx, "dead-letter stream ready", "stream", Stream, "replicas", max(n, have.Replicas),
		"replicas_setting", replicas.Setting(want))
	return nil
}

// takes reports whether a stream with subjects stores messages on subject.
func takes(subjects []string, subject string) bool {
	return slices.ContainsFunc(subjects, func(filter string) bool { return matches(filter, subject) })
}

// matches reports whether a NATS subject filter matches subject.
func matches(filter, subject string) bool {
	f, s := strings.Split(filter, "."), strings.Split(subject, ".")
	for i, tok := range f {
		switch {
		case tok == ">":
			return len(s) > i
		case i >= len(s):
			return false
		case tok != "*" && tok != s[i]:
			return false
		}
	}
	return len(f) == len(s)
}

// Publisher files dead letters. It is safe for concurrent use.
type Publisher struct {
	js       jetstream.JetStream
	replicas int
	log      *slog.Logger
}

// NewPublisher returns a Publisher on js. Call Ensure first; replicas is
// what Ensure got, for making the stream again when it is deleted.
func NewPublisher(js jetstream.JetStream, replicas int, log *slog.Logger) *Publisher {
	return &Publisher{js: js, replicas: replicas, log: log}
}

// Publish stores l in MAIL_DEADLETTER and returns once JetStream confirmed
// it. duplicate is true when the letter was already there (see MsgID).
// When the stream has gone missing it is made again once.
func (p *Publisher) Publish(ctx context.Context, l Letter) (duplicate bool, err error) {
	msg := nats.NewMsg(Subject)
	msg.Data = l.Data
	for k, vs := range l.Header {
		if strings.HasPrefix(k, "Nats-") || strings.HasPrefix(k, "Doorbell-Dlq-") {
			continue
		}
		msg.Header[k] = slices.Clone(vs)
	}
	if id := l.Header.Get(jetstream.MsgIDHeader); id != "" {
		msg.Header.Set(HeaderOriginalMsgID, id)
	}
	msg.Header.Set(HeaderReason, l.Reason)
	msg.Header.Set(HeaderDetail, Scrub(l.Detail))
	msg.Header.Set(HeaderAttempts, strconv.FormatUint(l.Attempts, 10))
	msg.Header.Set(HeaderStream, l.Stream)
	msg.Header.Set(HeaderStreamSeq, strconv.FormatUint(l.StreamSeq, 10))
	msg.Header.Set(HeaderConsumer, l.Consumer)
	msg.Header.Set(HeaderTime, l.Time.UTC().Format(time.RFC3339Nano))

	opts := []jetstream.PublishOpt{jetstream.WithMsgID(MsgID(l.Stream, l.StreamSeq)), jetstream.WithExpectStream(Stream)}
	ack, err := p.js.PublishMsg(ctx, msg, opts...)
	if errors.Is(err, jetstream.ErrNoStreamResponse) {
		p.log.WarnContext(ctx, "dead-letter stream is missing; making it again", "stream", Stream)
		if err := Ensure(ctx, p.js, p.replicas, p.log); err != nil {
			return false, fmt.Errorf("publish dead letter: %w", err)
		}
		ack, err = p.js.PublishMsg(ctx, msg, opts...)
	}
	if err != nil {
		return false, fmt.Errorf("publish dead letter: %w", err)
	}
	return ack.Duplicate, nil
}

// addressRE matches things that look like email addresses.
var addressRE = regexp.MustCompile(`[^\s<>@",;:()\[\]]+@[^\s<>@"',;:()\[\]]+`)

// Scrub makes s fit for a dead-letter header: one line, no email
// addresses, at most maxDetail runes.
func Scrub(s string) string {
	s = addressRE.ReplaceAllString(s, "<address>")
	s = strings.Join(strings.Fields(strings.ToValidUTF8(s, "?")), " ")
	if utf8.RuneCountInString(s) > maxDetail {
		s = string([]rune(s)[:maxDetail-1]) + "…"
	}
	return s
}
