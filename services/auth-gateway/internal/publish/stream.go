package publish

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/doorbell/doorbell/platform/replicas"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// StreamConfig is the AUTH_EVENTS stream the gateway creates when it is
// missing. Messages are kept for 7 days whether or not they were consumed;
// the file store does not fsync every message (the server's default), which
// trades the last few hundred milliseconds of events on a host crash for
// publish throughput; replicas on three servers cover that.
func StreamConfig(replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        eventsv1.StreamAuthEvents,
		Description: streamDescription,
		Subjects:    []string{eventsv1.StreamAuthEventsSubjects},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      7 * 24 * time.Hour,
		Duplicates:  2 * time.Minute,
		Replicas:    replicas,
	}
}

// streamDescription marks the stream as the gateway's: one with another
// description was made by an operator, and the gateway leaves it as it is.
const streamDescription = "Doorbell authentication events (owned by auth-gateway)"

// EnsureStream makes sure the AUTH_EVENTS stream exists, creating it when
// missing with the configured replicas (with auto, as many as the servers
// can place, up to three). A stream the gateway made with fewer replicas
// (an older version's default, one) is raised to that count; one an
// operator made is left as it is, with a warning when it does not capture
// user.authenticated. The count chosen is logged. Once the stream is known
// this returns at once without I/O; when a publish got no answer it looks
// again, but only at the stream's subjects.
func (p *Publisher) EnsureStream(ctx context.Context) error {
	_, err := p.ensureStream(ctx)
	return err
}

// ensureStream is EnsureStream, and says whether it found no stream and
// made it (or another replica did meanwhile).
func (p *Publisher) ensureStream(ctx context.Context) (made bool, err error) {
	if p.streamKnown.Load() {
		return false, nil
	}
	select {
	case p.ensureSem <- struct{}{}:
		defer func() { <-p.ensureSem }()
	case <-ctx.Done():
		return false, fmt.Errorf("publish: ensure stream: %w", ctx.Err())
	}
	if p.streamKnown.Load() {
		return false, nil
	}

	s, err := p.js.Stream(ctx, eventsv1.StreamAuthEvents)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		made, err = true, p.createStream(ctx)
	case err != nil:
		err = fmt.Errorf("publish: look up stream %s: %w", eventsv1.StreamAuthEvents, err)
	default:
		cfg := s.CachedInfo().Config
		p.checkSubjects(cfg)
		if !p.adopted.Swap(true) {
			p.adoptStream(ctx, cfg)
		}
	}
	if err != nil {
		return false, err
	}
	p.streamKnown.Store(true)
	return made, nil
}

func (p *Publisher) createStream(ctx context.Context) error {
	cfg := StreamConfig(0)
	n, err := p.replicas(func(n int) error {
		cfg.Replicas = n
		_, err := p.js.CreateStream(ctx, cfg)
		return err
	})
	switch {
	case errors.Is(err, jetstream.ErrStreamNameAlreadyInUse):
		// Another replica created it between our look-up and create.
		return nil
	case err != nil:
		return fmt.Errorf("publish: create stream %s: %w", cfg.Name, err)
	}
	p.log.Info("stream created", "stream", cfg.Name, "subjects", cfg.Subjects,
		"replicas", n, "replicas_setting", p.replicasSetting())
	return nil
}

// checkSubjects warns when the existing stream cfg does not capture the
// subject events are published on.
func (p *Publisher) checkSubjects(cfg jetstream.StreamConfig) {
	if !captures(cfg.Subjects, eventsv1.SubjectUserAuthenticated) {
		p.log.Warn("existing stream does not capture the subject events are published on; publishes will fail",
			"stream", cfg.Name, "stream_subjects", cfg.Subjects, "subject", eventsv1.SubjectUserAuthenticated)
	}
}

// adoptStream raises the replicas of an existing stream the gateway made
// to the configured count, and logs what it found. It does not stop
// publishing, so it returns nothing.
func (p *Publisher) adoptStream(ctx context.Context, cfg jetstream.StreamConfig) {
	if cfg.Description != streamDescription {
		p.log.Info("stream found, made by an operator: left as it is", "stream", cfg.Name, "replicas", cfg.Replicas)
		return
	}
	n, err := p.replicas(func(n int) error {
		if n <= cfg.Replicas {
			return nil // never lowered
		}
		raised := cfg
		raised.Replicas = n
		_, err := p.js.UpdateStream(ctx, raised)
		return err
	})
	switch {
	case err != nil:
		p.log.Warn("could not raise the stream's replicas; it works as it is, but may not survive the loss of a NATS server",
			"stream", cfg.Name, "replicas", cfg.Replicas, "want", n, "replicas_setting", p.replicasSetting(), "error", err)
	case n > cfg.Replicas:
		p.log.Info("stream replicas raised", "stream", cfg.Name, "from", cfg.Replicas, "replicas", n,
			"replicas_setting", p.replicasSetting())
	default:
		p.log.Info("stream found", "stream", cfg.Name, "replicas", cfg.Replicas, "replicas_setting", p.replicasSetting())
	}
}

// replicas fits the stream's replica count to the NATS servers (see
// replicas.Fit), logging each step down.
func (p *Publisher) replicas(apply func(n int) error) (int, error) {
	var last error
	return replicas.Fit(p.cfg.Replicas, func(n int) error {
		var apiErr *jetstream.APIError
		if errors.As(last, &apiErr) {
			p.log.Debug("fewer stream replicas: the NATS servers cannot place more", "replicas", n, "reason", apiErr.Description)
		}
		last = apply(n)
		return last
	})
}

// replicasSetting is the replica setting as NATS_STREAM_REPLICAS names it.
func (p *Publisher) replicasSetting() string { return replicas.Setting(p.cfg.Replicas) }

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
