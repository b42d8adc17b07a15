// Package relay is the mail-worker's view of its SMTP relay as a whole: a
// Gate that stops the pulling of messages while the relay fails everyone,
// probes it, and lets one email through as a trial before everyone
// resumes. The relay's failure is not the emails': while it lasts, pending
// events stay in JetStream (where a replica with a working relay can take
// them) and no email is charged for it.
package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/doorbell/doorbell/services/mail-worker/internal/smtpsend"
)

// Probe checks whether the relay is usable: a session and MAIL FROM,
// nothing sent. (*smtpsend.Sender).Check is one.
type Probe func(ctx context.Context) error

// Config shapes the outage handling. Zero fields take the defaults below.
type Config struct {
	// ProbeBase and ProbeMax bound the wait before each probe of a relay
	// that fails: from ProbeBase, growing to ProbeMax.
	ProbeBase, ProbeMax time.Duration
	// ProbeTimeout bounds one probe.
	ProbeTimeout time.Duration
	// Suspects is how many different emails must fail in a row, each for
	// itself (a 4xx, a broken transfer) with none accepted in between,
	// before the relay counts as failing everyone.
	Suspects int
}

// Defaults for zero Config fields.
const (
	DefaultProbeBase    = time.Second
	DefaultProbeMax     = 30 * time.Second
	DefaultProbeTimeout = 30 * time.Second
	DefaultSuspects     = 3
)

type state int

const (
	open   state = iota // the relay works: pull freely
	paused              // the relay fails everyone: pull nothing, probe
	trial               // a probe passed: one email may show whether it works
)

// Gate says when the worker may pull messages. The relay fails everyone
// when a session cannot be had (smtpsend.ErrRelay: refused, reset, TLS,
// AUTH, a refusal of MAIL FROM, 421), or when Config.Suspects different
// emails in a row failed each for itself (every recipient deferred: a
// full queue disk, throttling). Then the Gate pauses and Watch probes the
// relay with a growing interval. Once a probe passes one email goes
// through as a trial: accepted, or refused for good (also an answer),
// opens the Gate; any other failure pauses it again. A trial message with
// nothing to send lets the next message be the trial (TrialOver); nothing
// to pull at all opens the Gate.
//
// All methods are safe for concurrent use.
type Gate struct {
	probe  Probe
	cfg    Config
	paused prometheus.Gauge
	log    *slog.Logger

	mu        sync.Mutex
	state     state
	trialBusy bool
	suspects  map[string]struct{}
	since     time.Time     // when it paused
	worked    bool          // it opened since Watch last looked
	changed   chan struct{} // closed and replaced on every change of state or trial
	wake      chan struct{} // tells Watch that the Gate paused
}

// New returns an open Gate and registers its gauge
// doorbell_mailworker_relay_paused on reg.
func New(probe Probe, cfg Config, reg prometheus.Registerer, log *slog.Logger) (*Gate, error) {
	cfg.ProbeBase = cmp.Or(cfg.ProbeBase, DefaultProbeBase)
	cfg.ProbeMax = max(cmp.Or(cfg.ProbeMax, DefaultProbeMax), cfg.ProbeBase)
	cfg.ProbeTimeout = cmp.Or(cfg.ProbeTimeout, DefaultProbeTimeout)
	cfg.Suspects = cmp.Or(cfg.Suspects, DefaultSuspects)
	g := &Gate{probe: probe, cfg: cfg, log: log, suspects: make(map[string]struct{}),
		changed: make(chan struct{}), wake: make(chan struct{}, 1),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "doorbell", Subsystem: "mailworker", Name: "relay_paused",
			Help: "1 while the SMTP relay fails every email and the worker pulls no messages (they wait in JetStream), else 0.",
		})}
	if err := reg.Register(g.paused); err != nil {
		return nil, fmt.Errorf("register relay metrics: %w", err)
	}
	return g, nil
}

// Admit waits until messages may be pulled and says how many: -1 for as
// many as there are idle handlers, 1 for a trial (then the caller must call
// TrialOver once the trial message is handled, or when it pulled none). It
// fails only when ctx ends.
func (g *Gate) Admit(ctx context.Context) (int, error) {
	for {
		g.mu.Lock()
		st, busy, changed := g.state, g.trialBusy, g.changed
		if st == trial && !busy {
			g.trialBusy = true
		}
		g.mu.Unlock()
		switch {
		case st == open:
			return -1, nil
		case st == trial && !busy:
			return 1, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// TrialOver ends a trial that Report did not decide. With another true,
// its message did not reach the relay (a duplicate, nothing to send) or
// the pull failed, so the next pull is the trial; with another false,
// nothing was there to pull, so the passed probe stands and the Gate opens.
func (g *Gate) TrialOver(ctx context.Context, another bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state != trial {
		return
	}
	g.trialBusy = false
	if !another {
		g.setLocked(ctx, open, nil)
		return
	}
	g.notifyLocked() // a pull waits in Admit for the next trial
}

// Paused reports whether the relay fails everyone, so that an email in hand
// had better wait in JetStream than be tried.
func (g *Gate) Paused() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.state == paused
}

// Report tells the Gate how an attempt at the email of eventID ended (err
// nil: accepted) and says whether a failure is the relay's rather than the
// email's: then the email is charged nothing. A relay failure found
// outside a send (the start-up check) is reported with an empty eventID.
func (g *Gate) Report(ctx context.Context, eventID string, err error) (relayFails bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case err == nil, errors.Is(err, smtpsend.ErrPermanent):
		// The relay answered this transaction.
		clear(g.suspects)
		g.setLocked(ctx, open, nil)
		return false
	case errors.Is(err, smtpsend.ErrRelay):
		g.setLocked(ctx, paused, err)
		return true
	}
	g.suspects[eventID] = struct{}{}
	if g.state == trial || len(g.suspects) >= g.cfg.Suspects {
		g.setLocked(ctx, paused, err)
	}
	return g.state == paused
}

// setLocked moves the Gate to st; cause is why it pauses.
func (g *Gate) setLocked(ctx context.Context, st state, cause error) {
	if g.state == st {
		return
	}
	from := g.state
	g.state, g.trialBusy = st, false
	g.notifyLocked()
	switch st {
	case paused:
		g.since = time.Now()
		g.paused.Set(1)
		g.log.Log(ctx, levelOf(cause),
			"SMTP relay fails every email; pausing: no messages are pulled until it works (they wait in JetStream)",
			"error", summary(cause))
		select {
		case g.wake <- struct{}{}:
		default:
		}
	case trial:
		g.log.InfoContext(ctx, "SMTP relay answers a probe; trying one email")
	case open:
		clear(g.suspects)
		g.worked = true
		g.paused.Set(0)
		if from != open {
			g.log.InfoContext(ctx, "SMTP relay works again; resuming",
				"paused_for", time.Since(g.since).Round(time.Millisecond).String())
		}
	}
}

// notifyLocked wakes every Admit waiting for a change.
func (g *Gate) notifyLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// Watch probes the relay whenever the Gate is paused, until ctx ends; the
// wait between probes grows until the relay works again (a failed trial
// does not reset it). The consumer runs it.
func (g *Gate) Watch(ctx context.Context) {
	wait := backoff.NewExponentialBackOff()
	wait.InitialInterval, wait.MaxInterval, wait.RandomizationFactor = g.cfg.ProbeBase, g.cfg.ProbeMax, 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.wake:
		}
		g.mu.Lock()
		if g.worked {
			g.worked = false
			wait.Reset()
		}
		g.mu.Unlock()
		for g.Paused() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait.NextBackOff()):
			}
			pctx, cancel := context.WithTimeout(ctx, g.cfg.ProbeTimeout)
			err := g.probe(pctx)
			cancel()
			if ctx.Err() != nil {
				return
			}
			g.mu.Lock()
			if g.state == paused && err == nil {
				g.setLocked(ctx, trial, nil)
			} else if g.state == paused {
				g.log.Log(ctx, levelOf(err), "SMTP relay still unusable", "error", summary(err),
					"paused_for", time.Since(g.since).Round(time.Millisecond).String())
			}
			g.mu.Unlock()
		}
	}
}

// levelOf is ERROR for configuration problems, which need an operator, and
// WARN for the rest.
func levelOf(err error) slog.Level {
	if errors.Is(err, smtpsend.ErrConfig) {
		return slog.LevelError
	}
	return slog.LevelWarn
}

// summary is err's text without the server's words, which may quote an
// address.
func summary(err error) string {
	var se *smtpsend.Error
	switch {
	case errors.As(err, &se):
		return se.Summary()
	case err == nil:
		return ""
	}
	return err.Error()
}
