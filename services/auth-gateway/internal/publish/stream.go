package publish

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// StreamConfig is the AUTH_EVENTS stream the gateway creates when it is
// missing. Messages are kept for 7 days whether or not they were consumed;
// the file store does not fsync every message (the server's default), which
// trades the last few hundred milliseconds of events on a host crash for
// publish throughput; production runs 3 replicas to cover that.
func StreamConfig(replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        eventsv1.StreamAuthEvents,
		Description: "Doorbell authentication events (owned by auth-gateway)",
		Subjects:    []string{eventsv1.StreamAuthEventsSubjects},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      7 * 24 * time.Hour,
		Duplicates:  2 * time.Minute,
		Replicas:    replicas,
	}
}

// EnsureStream makes sure the AUTH_EVENTS stream exists, creating it when
// missing. An existing stream is left as it is, since an operator may own
// it, but a warning is logged when it does not capture user.authenticated.
// Once the stream is known this returns at once without I/O.
func (p *Publisher) EnsureStream(ctx context.Context) error {
	if p.streamKnown.Load() {
		return nil
	}
	select {
	case p.ensureSem <- struct{}{}:
		defer func() { <-p.ensureSem }()
	case <-ctx.Done():
		return fmt.Errorf("publish: ensure stream: %w", ctx.Err())
	}
	if p.streamKnown.Load() {
		return nil
	}

	s, err := p.js.Stream(ctx, eventsv1.StreamAuthEvents)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		cfg := StreamConfig(p.cfg.Replicas)
		_, err = p.js.CreateStream(ctx, cfg)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			// Another replica created it between our look-up and create.
			err = nil
		}
		if err != nil {
			return fmt.Errorf("publish: create stream %s: %w", cfg.Name, err)
		}
		p.log.Info("stream created", "stream", cfg.Name, "subjects", cfg.Subjects, "replicas", cfg.Replicas)
	case err != nil:
		return fmt.Errorf("publish: look up stream %s: %w", eventsv1.StreamAuthEvents, err)
	default:
		subjects := s.CachedInfo().Config.Subjects
		if !captures(subjects, eventsv1.SubjectUserAuthenticated) {
			p.log.Warn("existing stream does not capture the subject events are published on; publishes will fail",
				"stream", eventsv1.StreamAuthEvents, "stream_subjects", subjects,
				"subject", eventsv1.SubjectUserAuthenticated)
		}
	}
	p.streamKnown.Store(true)
	return nil
}

// captures reports whether any of the subject filters matches subject, with
// NATS wildcards: "*" matches one token, ">" one or more trailing tokens.
func captures(filters []string, subject string) bool {
	for _, f := range filters {
		if subjectMatches(f, subject) {
			return true
		}
	}
	return false
}

func subjectMatches(filter, subject string) bool {
	ft := strings.Split(filter, ".")
	st := strings.Split(subject, ".")
	for i, f := range ft {
		if f == ">" {
			return len(st) > i
		}
		if i >= len(st) || (f != "*" && f != st[i]) {
			return false
		}
	}
	return len(ft) == len(st)
}
