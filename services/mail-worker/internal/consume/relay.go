package consume

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/doorbell/doorbell/services/mail-worker/internal/smtpsend"
)

// ErrStopping is returned by Relay.Wait when the worker shuts down while
// the relay is down.
var ErrStopping = errors.New("worker is stopping")

// Probe checks whether the relay is usable again. (*smtpsend.Sender).Check
// is one.
type Probe func(ctx context.Context) error

// RelayConfig shapes the outage handling.
type RelayConfig struct {
	// ProbeBase and ProbeMax bound the wait between probes of a relay that
	// is down: ProbeBase·2^(n-1) after the n-th consecutive failure, capped
	// at ProbeMax. DefaultProbeBase and DefaultProbeMax when zero.
	ProbeBase, ProbeMax time.Duration
	// KeepAlive is how often a message held during an outage is reported
	// in progress to JetStream; a third of AckWait. DefaultKeepAlive when
	// zero.
	KeepAlive time.Duration
	// ProbeTimeout bounds one probe; DefaultProbeTimeout when zero.
	ProbeTimeout time.Duration
}

// Defaults for zero RelayConfig fields.
const (
	DefaultProbeBase    = time.Second
	DefaultProbeMax     = 30 * time.Second
	DefaultKeepAlive    = 20 * time.Second
	DefaultProbeTimeout = 30 * time.Second
)

// Relay is the worker's view of the SMTP relay's health, shared by every
// handler.
//
// When a send fails because of the relay rather than the email (refused,
// reset, timeout, TLS, AUTH, 421: smtpsend.ErrRelay) the handler calls
// Down. From then on Run pulls no new messages, the handlers hold their
// messages (Wait, reporting them in progress so that JetStream neither
// redelivers them nor counts a delivery), and Run's prober checks the
// relay with a growing interval until it answers; then everyone resumes.
// An outage of any length therefore costs no message an attempt, and
// no message is dead-lettered because of it.
//
// All methods are safe for concurrent use.
type Relay struct {
	probe Probe
	cfg   RelayConfig
	m     *Metrics
	log   *slog.Logger

	mu        sync.Mutex
	down      bool
	since     time.Time
	cause     error
	failures  int           // failed sends and probes since the last accepted email
	delivered uint64        // emails accepted so far
	up        chan struct{} // closed when the relay is back; replaced when it goes down
	stopping  chan struct{} // closed when Run stops
	wake      chan struct{} // tells the prober that the relay went down
}

// NewRelay returns a Relay that is up. probe is run while it is down.
func NewRelay(probe Probe, cfg RelayConfig, m *Metrics, log *slog.Logger) *Relay {
	if cfg.ProbeBase <= 0 {
		cfg.ProbeBase = DefaultProbeBase
	}
	if cfg.ProbeMax <= 0 {
		cfg.ProbeMax = DefaultProbeMax
	}
	cfg.ProbeMax = max(cfg.ProbeMax, cfg.ProbeBase)
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = DefaultKeepAlive
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	up := make(chan struct{})
	close(up)
	return &Relay{probe: probe, cfg: cfg, m: m, log: log, up: up,
		stopping: make(chan struct{}), wake: make(chan struct{}, 1)}
}

// Down records that a send failed because of the relay, and pauses the
// worker until a probe succeeds. ctx only carries log values.
func (r *Relay) Down(ctx context.Context, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cause = err
	if r.down {
		return
	}
	r.down, r.since = true, time.Now()
	r.failures++
	r.up = make(chan struct{})
	r.m.relayPaused.Set(1)
	level := slog.LevelWarn
	if errors.Is(err, smtpsend.ErrConfig) {
		level = slog.LevelError
	}
	r.log.Log(ctx, level,
		"SMTP relay unusable; pausing: no new messages are pulled and messages in flight are held until it answers",
		"error", summary(err))
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Delivered records that the relay accepted an email.
func (r *Relay) Delivered() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.delivered++
	r.failures = 0
}

// Epoch counts the emails accepted so far. A handler compares it across
// two relay failures of the same message: when other emails got through
// in between, the relay works and the message itself is the likely cause.
func (r *Relay) Epoch() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.delivered
}

// Wait returns nil once the relay is up. While it is down, keepAlive (when
// not nil) is called every RelayConfig.KeepAlive. It returns ErrStopping
// when Run stops meanwhile, or ctx's error when ctx ends.
func (r *Relay) Wait(ctx context.Context, keepAlive func()) error {
	ticker := time.NewTicker(r.cfg.KeepAlive)
	defer ticker.Stop()
	for {
		r.mu.Lock()
		down, up := r.down, r.up
		r.mu.Unlock()
		if !down {
			return nil
		}
		select {
		case <-up:
		case <-r.stopping:
			return ErrStopping
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
			if keepAlive != nil {
				keepAlive()
			}
		}
	}
}

// Hold waits for d, calling keepAlive (when not nil) every
// RelayConfig.KeepAlive meanwhile. It returns ErrStopping when Run stops
// first, or ctx's error when ctx ends.
func (r *Relay) Hold(ctx context.Context, d time.Duration, keepAlive func()) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	ticker := time.NewTicker(r.cfg.KeepAlive)
	defer ticker.Stop()
	for {
		select {
		case <-timer.C:
			return nil
		case <-r.stopping:
			return ErrStopping
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
			if keepAlive != nil {
				keepAlive()
			}
		}
	}
}

// run probes the relay while it is down, until ctx ends. Run runs it.
func (r *Relay) run(ctx context.Context) {
	defer close(r.stopping)
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		}
		for {
			r.mu.Lock()
			down, failures := r.down, r.failures
			r.mu.Unlock()
			if !down {
				break
			}
			timer := time.NewTimer(Backoff(r.cfg.ProbeBase, r.cfg.ProbeMax, uint64(max(1, failures)), 0))
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			}
			pctx, cancel := context.WithTimeout(ctx, r.cfg.ProbeTimeout)
			err := r.probe(pctx)
			cancel()
			if ctx.Err() != nil {
				return
			}
			r.mu.Lock()
			if err == nil {
				pausedFor := time.Since(r.since)
				r.down = false
				close(r.up)
				r.m.relayPaused.Set(0)
				r.mu.Unlock()
				r.log.InfoContext(ctx, "SMTP relay answers again; resuming", "paused_for", pausedFor.Round(time.Millisecond).String())
				break
			}
			r.failures++
			r.cause = err
			failures = r.failures
			r.mu.Unlock()
			level := slog.LevelWarn
			if errors.Is(err, smtpsend.ErrConfig) {
				level = slog.LevelError
			}
			r.log.Log(ctx, level, "SMTP relay still unusable",
				"error", summary(err), "probes_failed", failures-1,
				"next_probe_in", Backoff(r.cfg.ProbeBase, r.cfg.ProbeMax, uint64(failures), 0).String())
		}
	}
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
