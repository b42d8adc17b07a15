package publish

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

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

// autoReplicas is what Config.Replicas zero (auto) asks for: enough for
// the stream to survive the loss of one server. The server's answer lowers
// it to what it can place (see replicas).
const autoReplicas = 3

// Error codes of the JetStream API that say the servers cannot hold as
// many replicas as asked for.
const (
	// errCodeSingleServer: "replicas > 1 not supported in non-clustered
	// mode".
	errCodeSingleServer jetstream.ErrorCode = 10074
	// errCodeNoPeers: "no suitable peers for placement", as a cluster with
	// fewer JetStream servers than replicas answers.
	errCodeNoPeers jetstream.ErrorCode = 10005
)

// EnsureStream makes sure the AUTH_EVENTS stream exists, creating it when
// missing with the configured replicas (with auto, as many as the servers
// can place, up to three). A stream the gateway made with fewer replicas
// (an older version's default, one) is raised to that count; one an
// operator made is left as it is, with a warning when it does not capture
// user.authenticated. The count chosen is logged. Once the stream is known
// this returns at once without I/O; when a publish got no answer it looks
// again, but only at the stream's subjects.
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
		err = p.createStream(ctx)
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
		return err
	}
	p.streamKnown.Store(true)
	return nil
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
			"stream", cfg.Name, "replicas", cfg.Replicas, "want", n, "replicas_setting", p.replicasSetting(), "err", err)
	case n > cfg.Replicas:
		p.log.Info("stream replicas raised", "stream", cfg.Name, "from", cfg.Replicas, "replicas", n,
			"replicas_setting", p.replicasSetting())
	default:
		p.log.Info("stream found", "stream", cfg.Name, "replicas", cfg.Replicas, "replicas_setting", p.replicasSetting())
	}
}

// replicas calls apply with the configured replica count and returns it
// with apply's error. With auto it asks for autoReplicas first and, each
// time the servers answer that they cannot place that many, for fewer:
// one on a single server, one less in a cluster of fewer servers.
func (p *Publisher) replicas(apply func(n int) error) (int, error) {
	if p.cfg.Replicas > 0 {
		return p.cfg.Replicas, apply(p.cfg.Replicas)
	}
	n := autoReplicas
	for {
		err := apply(n)
		var apiErr *jetstream.APIError
		if err == nil || n == 1 || !errors.As(err, &apiErr) {
			return n, err
		}
		switch apiErr.ErrorCode {
		case errCodeSingleServer:
			n = 1
		case errCodeNoPeers:
			n--
		default:
			return n, err
		}
		p.log.Debug("fewer stream replicas: the NATS servers cannot place more", "replicas", n, "reason", apiErr.Description)
	}
}

// replicasSetting is the replica setting as NATS_STREAM_REPLICAS names it.
func (p *Publisher) replicasSetting() string {
	if p.cfg.Replicas == 0 {
		return "auto"
	}
	return strconv.Itoa(p.cfg.Replicas)
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
