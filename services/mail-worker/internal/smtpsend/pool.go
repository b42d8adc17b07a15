package smtpsend

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/wneessen/go-mail/smtp"
)

// pool bounds the connections in use and keeps idle ones for reuse.
//
// A caller takes a slot (take), uses an idle connection or opens one, puts
// the connection back (put) and gives the slot back (give). Idle
// connections are closed after idleTimeout by a timer; Close closes the
// idle ones at once and the busy ones when they are put back.
type pool struct {
	slots       chan struct{} // one token per connection in use
	idleTimeout time.Duration
	metrics     *Metrics
	log         *slog.Logger

	mu     sync.Mutex
	idle   []*conn // least recently used first
	timer  *time.Timer
	closed bool
}

// conn is one open session.
type conn struct {
	sc *smtp.Client
	// raw is the TCP connection under sc (and under its TLS), whose
	// deadlines bound each step and cut the session at once when needed:
	// sc's own methods wait for the command in progress.
	raw      net.Conn
	lastUsed time.Time
}

func newPool(size int, idleTimeout time.Duration, m *Metrics, log *slog.Logger) *pool {
	return &pool{slots: make(chan struct{}, size), idleTimeout: idleTimeout, metrics: m, log: log}
}

// take waits for a slot. It fails with ErrClosed after close and with
// ctx's error when ctx ends first.
func (p *pool) take(ctx context.Context) error {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		<-p.slots
		return ErrClosed
	}
	return nil
}

// give returns a slot taken with take.
func (p *pool) give() { <-p.slots }

// idleConn returns the most recently used idle connection, or nil.
func (p *pool) idleConn() *conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		return c
	}
	return nil
}

// opened counts a new session.
func (p *pool) opened(c *conn) *conn {
	p.metrics.connections.Inc()
	return c
}

// put keeps c for reuse when healthy, else closes it without a goodbye (a
// broken connection would only make QUIT wait).
func (p *pool) put(c *conn, healthy bool) {
	p.mu.Lock()
	if healthy && !p.closed {
		c.lastUsed = time.Now()
		p.idle = append(p.idle, c)
		if p.timer == nil {
			p.timer = time.AfterFunc(p.idleTimeout, p.reap)
		}
		p.mu.Unlock()
		return
	}
	closed := p.closed
	p.mu.Unlock()
	if healthy && closed {
		quit(c.sc)
	} else {
		_ = c.sc.Close()
	}
	p.metrics.connections.Dec()
}

// reap closes connections idle for idleTimeout and re-arms the timer for
// the next one.
func (p *pool) reap() {
	p.mu.Lock()
	var stale []*conn
	now := time.Now()
	for len(p.idle) > 0 && now.Sub(p.idle[0].lastUsed) >= p.idleTimeout {
		stale = append(stale, p.idle[0])
		p.idle = p.idle[1:]
	}
	if len(p.idle) > 0 && !p.closed {
		p.timer = time.AfterFunc(p.idleTimeout-now.Sub(p.idle[0].lastUsed), p.reap)
	} else {
		p.timer = nil
	}
	p.mu.Unlock()
	for _, c := range stale {
		p.log.Debug("closing idle smtp connection", "idle_for", now.Sub(c.lastUsed).Round(time.Millisecond).String())
		quit(c.sc)
		p.metrics.connections.Dec()
	}
}

// close says QUIT on every idle connection, at the same time, and makes
// take fail from now on.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = nil
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range idle {
		wg.Go(func() {
			quit(c.sc)
			p.metrics.connections.Dec()
		})
	}
	wg.Wait()
}
