package publish

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrRefused wraps the error of an event JetStream will never store as it
// is: larger than the NATS server or the stream allows, on a subject no
// stream captures, or on one this connection may not publish to. Publish
// does not spool such an event, and Run sets a spooled one aside in bad/
// instead of retrying it before every later event.
var ErrRefused = errors.New("publish: refused for good by JetStream")

// refused wraps err in ErrRefused with the reason when err says that
// JetStream will never store a message on subject, and returns it as it is
// otherwise. A permission the server denied counts once it has reported
// it; until a publish on the subject succeeds again.
func (p *Publisher) refused(err error, subject string) error {
	var apiErr *jetstream.APIError
	why := ""
	switch {
	case errors.Is(err, nats.ErrMaxPayload):
		why = "message larger than the NATS server's max_payload"
	case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum:
		why = "message size exceeds maximum the stream allows (max_msg_size)"
	case p.isDenied(subject):
		why = "the NATS server denies this connection permission to publish on " + subject
	default:
		return err
	}
	return fmt.Errorf("%w: %s: %w", ErrRefused, why, err)
}

// refusedForNoStream returns err wrapped in ErrRefused when the publish got
// no answer and no stream captures subject, even after the gateway made
// its stream again: such an event would wait forever. It asks JetStream,
// within ctx; any doubt leaves err as it is.
func (p *Publisher) refusedForNoStream(ctx context.Context, err error, subject string) error {
	if errors.Is(err, ErrRefused) || errors.Is(err, ErrNotConnected) ||
		!(errors.Is(err, context.DeadlineExceeded) || errors.Is(err, jetstream.ErrNoStreamResponse)) {
		return err
	}
	if _, lookup := p.js.StreamNameBySubject(ctx, subject); !errors.Is(lookup, jetstream.ErrStreamNotFound) {
		return err
	}
	// The stream may only be gone (a server that lost its store, a
	// rebuilt cluster): made again, it captures the subject and takes the
	// event at the next try. One that was there does not capture it.
	p.streamKnown.Store(false)
	if made, ensure := p.ensureStream(ctx); ensure == nil && made {
		return err
	}
	return fmt.Errorf("%w: no stream captures %s: %w", ErrRefused, subject, err)
}

// publishDenied finds the subject in the server's report of a publish
// permission violation.
var publishDenied = regexp.MustCompile(`(?i)publish to "([^"]+)"`)

// noteAsyncError handles what the server reports outside any request: it
// logs it, and remembers subjects it may not publish to (a publish there
// gets no answer, only this report).
func (p *Publisher) noteAsyncError(err error) {
	if m := publishDenied.FindStringSubmatch(err.Error()); m != nil && errors.Is(err, nats.ErrPermissionViolation) {
		p.denied.Store(m[1], struct{}{})
	}
	p.log.Warn("nats reported an error", "error", err)
}

func (p *Publisher) isDenied(subject string) bool {
	_, ok := p.denied.Load(subject)
	return ok
}
