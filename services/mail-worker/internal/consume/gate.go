package consume

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/doorbell/doorbell/services/mail-worker/internal/smtpsend"
)

// Probe checks whether the relay is usable: a session and MAIL FROM,
// nothing sent. (*smtpsend.Sender).Check is one.
type Probe func(ctx context.Context) error

// GateConfig shapes the outage handling.
type GateConfig struct {
	// ProbeBase and ProbeMax bound the wait before each probe of a relay
	// that is down: ProbeBase·2^(n-1) after the n-th failure in a row,
	// capped at ProbeMax. DefaultProbeBase and DefaultProbeMax when zero.
	ProbeBase, ProbeMax time.Duration
	// ProbeTimeout bounds one probe; DefaultProbeTimeout when zero.
	ProbeTimeout time.Duration
	// Suspects is how many different emails must fail in a row, each for
	// itself (a 4xx, a broken transfer) and with no email accepted in
	// between, before the worker takes it that the relay fails everyone.
	// DefaultSuspects when zero.
	Suspects int
}

// Defaults for zero GateConfig fields.
const (
	DefaultProbeBase    = time.Second
	DefaultProbeMax     = 30 * time.Second
	DefaultProbeTimeout = 30 * time.Second
	DefaultSuspects     = 3
)

// gateState is where the Gate stands.
type gateState int

const (
	gateOpen   gateState = iota // the relay works: pull freely
	gatePaused                  // the relay fails everyone: pull nothing, probe
	gateTrial                   // a probe passed: one email may show whether it works
)

// Gate is the worker's view of the SMTP relay, shared by Run and every
// handler. The relay's failure is not the emails': while the relay fails
// everyone the worker pulls nothing, so that pending events stay in
// JetStream (where a replica with a working relay can take them), and no
// email is charged for the outage.
//
// The relay fails everyone when a session cannot be had (refused, reset,
// TLS, AUTH, a refusal of MAIL FROM, 421: smtpsend.ErrRelay), or when
// GateConfig.Suspects different emails in a row fail each for itself with
// no email accepted in between (every recipient deferred: a full queue
// disk, throttling). Then the Gate pauses and probes the relay with a
// growing interval. Once a probe passes it lets one email through as a
// trial: accepted (or refused for good, which is also an answer) opens
// the Gate, any other failure pauses it again. A trial with nothing to
// send opens it too.
//
// All methods are safe for concurrent use.
type Gate struct {
	probe Probe
	cfg   GateConfig
	m     *Metrics
	log   *slog.Logger

	mu        sync.Mutex
	state     gateState
	trialBusy bool // a trial email is out
	failures  int  // relay failures and failed probes since the relay last worked
	suspects  map[string]struct{}
	since     time.Time     // when it paused
	changed   chan struct{} // closed and replaced whenever state changes
	wake      chan struct{} // tells the prober that the Gate paused
}

// NewGate returns an open Gate. probe is run while it is paused, by Run.
func NewGate(probe Probe, cfg GateConfig, m *Metrics, log *slog.Logger) *Gate {
	if cfg.ProbeBase <= 0 {
		cfg.ProbeBase = DefaultProbeBase
	}
	if cfg.ProbeMax <= 0 {
		cfg.ProbeMax = DefaultProbeMax
	}
	cfg.ProbeMax = max(cfg.ProbeMax, cfg.ProbeBase)
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	if cfg.Suspects <= 0 {
		cfg.Suspects = DefaultSuspects
	}
	return &Gate{probe: probe, cfg: cfg, m: m, log: log, suspects: make(map[string]struct{}),
		changed: make(chan struct{}), wake: make(chan struct{}, 1)}
}

// Admit waits until messages may be pulled and says how many: -1 for as
// many as there are idle handlers, 1 for a trial (then Run must call
// TrialOver once the trial message is handled, or when it pulled none). It
// fails only when ctx ends.
func (g *Gate) Admit(ctx context.Context) (int, error) {
	for {
		g.mu.Lock()
		state, busy, changed := g.state, g.trialBusy, g.changed
		if state == gateTrial && !busy {
			g.trialBusy = true
		}
		g.mu.Unlock()
		switch {
		case state == gateOpen:
			return -1, nil
		case state == gateTrial && !busy:
			return 1, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// TrialOver ends a trial that Report did not decide: the message did not
// reach the relay (a duplicate, nothing to send), so another may try; or
// nothing was there to pull (pulled false), so the passed probe stands.
func (g *Gate) TrialOver(ctx context.Context, pulled bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state != gateTrial {
		return
	}
	g.trialBusy = false
	if !pulled {
		g.openLocked(ctx)
	}
}

// Paused reports whether the relay fails everyone, so that an email in hand
// had better wait in JetStream than be tried.
func (g *Gate) Paused() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.state == gatePaused
}

// Report tells the Gate how a send of the email of eventID ended, and says
// whether the failure (if any) is the relay's rather than the email's:
// then the email is charged nothing.
func (g *Gate) Report(ctx context.Context, eventID string, err error) (relayFails bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case err == nil, errors.Is(err, smtpsend.ErrPermanent):
		// The relay answered this transaction.
		g.failures = 0
		clear(g.suspects)
		if g.state != gateOpen {
			g.openLocked(ctx)
		}
		return false
	case errors.Is(err, smtpsend.ErrRelay):
		g.pauseLocked(ctx, err)
		return true
	}
	g.suspects[eventID] = struct{}{}
	if g.state == gateTrial || len(g.suspects) >= g.cfg.Suspects {
		g.pauseLocked(ctx, err)
	}
	return g.state == gatePaused
}

// Down pauses the Gate, for a relay found unusable outside a send (the
// start-up check).
func (g *Gate) Down(ctx context.Context, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pauseLocked(ctx, err)
}

func (g *Gate) pauseLocked(ctx context.Context, err error) {
	g.failures++
	if g.state == gatePaused {
		return
	}
	g.state, g.trialBusy, g.since = gatePaused, false, time.Now()
	g.broadcastLocked()
	g.m.relayPaused.Set(1)
	g.log.Log(ctx, levelOf(err),
		"SMTP relay fails every email; pausing: no messages are pulled until it works (they wait in JetStream)",
		"error", summary(err), "failures", g.failures)
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

func (g *Gate) openLocked(ctx context.Context) {
	wasPaused := !g.since.IsZero()
	g.state, g.trialBusy, g.since = gateOpen, false, time.Time{}
	g.failures = 0
	clear(g.suspects)
	g.broadcastLocked()
	g.m.relayPaused.Set(0)
	if wasPaused {
		g.log.InfoContext(ctx, "SMTP relay works again; resuming")
	}
}

func (g *Gate) broadcastLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// run probes the relay while the Gate is paused, until ctx ends. Run runs
// it.
func (g *Gate) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.wake:
		}
		for g.probeOnce(ctx) {
		}
	}
}

// probeOnce waits for the next probe, runs it and reports whether the
// Gate is still paused.
func (g *Gate) probeOnce(ctx context.Context) bool {
	g.mu.Lock()
	paused, failures := g.state == gatePaused, g.failures
	g.mu.Unlock()
	if !paused {
		return false
	}
	timer := time.NewTimer(Backoff(g.cfg.ProbeBase, g.cfg.ProbeMax, uint64(max(1, failures)), 0))
	select {
	case <-ctx.Done():
		timer.Stop()
		return false
	case <-timer.C:
	}
	pctx, cancel := context.WithTimeout(ctx, g.cfg.ProbeTimeout)
	err := g.probe(pctx)
	cancel()
	if ctx.Err() != nil {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state != gatePaused {
		return false
	}
	if err == nil {
		g.state, g.trialBusy = gateTrial, false
		g.broadcastLocked()
		g.log.InfoContext(ctx, "SMTP relay answers a probe; trying one email")
		return false
	}
	g.failures++
	g.log.Log(ctx, levelOf(err), "SMTP relay still unusable", "error", summary(err),
		"paused_for", time.Since(g.since).Round(time.Millisecond).String(),
		"next_probe_in", Backoff(g.cfg.ProbeBase, g.cfg.ProbeMax, uint64(g.failures), 0).String())
	return true
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
	if errors.As(err, &se) {
		return se.Summary()
	}
	if err == nil {
		return ""
	}
	return err.Error()
}
