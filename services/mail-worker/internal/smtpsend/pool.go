package smtpsend

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wneessen/go-mail/smtp"
)

// pool runs one goroutine per connection it may open (a connection
// worker), each owning at most one session, and hands them jobs: emails,
// which a worker sends with the pool's send function, and other work on a
// session (Check).
//
// A caller gives a job to the most recently freed worker (do), so that as
// few sessions as the load needs stay open and the rest time out, or
// queues it when every worker is busy, and waits for it. A worker that
// finishes a job takes the first queued one at once, on its own goroutine:
// its connection does not stand idle until the goroutine of the next
// caller is scheduled (on a busy processor that wait was a third of a
// connection's time). While it sends an email, a worker may also take the
// first queued email to pipeline behind it (follow). A worker dials when
// it has work and no session, and says QUIT after idleTimeout without
// work; close stops the workers.
type pool struct {
	// send sends email job j on session c, and the emails it takes to
	// follow j; it returns the session to keep and the last job it ran,
	// whose caller the worker has not told yet (send tells the others).
	send        func(c *conn, j *job) (*conn, *job)
	idleTimeout time.Duration
	metrics     *Metrics
	log         *slog.Logger
	workers     []*worker

	stopped chan struct{} // closed by close

	mu     sync.Mutex
	free   []*worker // the next to be given a job last
	queue  []*job    // waiting for a worker, oldest first
	closed bool
}

// conn is one open session.
type conn struct {
	sc *smtp.Client
	// raw is the TCP connection under sc (and under its TLS), whose
	// deadlines bound each step and cut the session at once when needed:
	// sc's own methods wait for the command in progress.
	raw net.Conn
}

// job is work for a connection worker: an email, or f, which gets the
// worker's session (nil when it has none) and returns the one to keep (nil
// when there is none left: f closed it, or never had one).
type job struct {
	f func(c *conn) *conn // nil for an email

	// An email: its caller's context, its content and recipient, when it
	// was queued, and once done, its failure (nil: accepted).
	ctx    context.Context
	data   []byte
	to     string
	queued time.Time
	err    *Error
	// state says whether the email's content has started (jobWriting), or
	// its caller stopped waiting first (jobAbandoned), which then leaves
	// the job to its worker: no content goes out for it.
	state atomic.Int32

	taken chan struct{} // closed when a worker takes the job from the queue
	done  chan struct{} // closed when the job has run
}

// Email job states.
const (
	jobWaiting = iota
	jobAbandoned
	jobWriting
)

// abandon lets the caller of an email go before the job is done: true
// unless its content has started.
func (j *job) abandon() bool { return j.state.CompareAndSwap(jobWaiting, jobAbandoned) }

// write is called before an email's content goes out: false when its
// caller has gone.
func (j *job) write() bool {
	return j.state.CompareAndSwap(jobWaiting, jobWriting) || j.state.Load() == jobWriting
}

// worker is one connection worker.
type worker struct {
	jobs   chan *job // a job given to this worker while it was free
	stop   chan struct{}
	exited chan struct{}
}

func newPool(size int, send func(*conn, *job) (*conn, *job), idleTimeout time.Duration, m *Metrics, log *slog.Logger) *pool {
	p := &pool{send: send, idleTimeout: idleTimeout, metrics: m, log: log, stopped: make(chan struct{})}
	for range size {
		w := &worker{jobs: make(chan *job, 1), stop: make(chan struct{}), exited: make(chan struct{})}
		p.workers = append(p.workers, w)
		p.free = append(p.free, w)
		go p.work(w)
	}
	return p
}

// do runs f on a connection worker and returns once f has; see run.
func (p *pool) do(ctx context.Context, f func(c *conn) *conn) error {
	return p.run(ctx, &job{f: f})
}

// run runs j on a connection worker and returns once it has. It fails with
// ctx's error when ctx ends while the job waits for a worker, and with
// ErrClosed after close; j has not run then. An email's caller also goes
// with ctx's error when ctx ends before the email's content has started
// (it may wait behind another email's reply); its worker then sends no
// content for it.
func (p *pool) run(ctx context.Context, j *job) error {
	j.taken, j.done = make(chan struct{}), make(chan struct{})
	p.mu.Lock()
	switch {
	case p.closed:
		p.mu.Unlock()
		return ErrClosed
	case len(p.free) > 0:
		w := p.free[len(p.free)-1]
		p.free = p.free[:len(p.free)-1]
		w.jobs <- j // under mu, before any close: the worker runs it
		p.mu.Unlock()
	default:
		p.queue = append(p.queue, j)
		p.mu.Unlock()
		select {
		case <-j.taken:
		case <-ctx.Done():
			if p.withdraw(j) {
				return ctx.Err()
			}
		case <-p.stopped:
			if p.withdraw(j) {
				return ErrClosed
			}
		}
	}
	if j.f != nil {
		<-j.done
		return nil
	}
	select {
	case <-j.done:
	case <-ctx.Done():
		if j.abandon() {
			return ctx.Err()
		}
		<-j.done
	}
	return nil
}

// withdraw takes j out of the queue, unless a worker took it first.
func (p *pool) withdraw(j *job) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-j.taken:
		return false
	default:
	}
	p.queue = slices.DeleteFunc(p.queue, func(q *job) bool { return q == j })
	return true
}

// next is the job a worker that just finished one runs now: the first
// queued, or none, and then the worker is free: the next to be given a job
// if it holds a session, else the last (a free worker with a session is
// always used before one that would have to dial). After close there is
// none.
func (p *pool) next(w *worker, session bool) *job {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		return nil
	case len(p.queue) > 0:
		j := p.queue[0]
		p.queue = p.queue[1:]
		close(j.taken)
		return j
	}
	if session {
		p.free = append(p.free, w)
	} else {
		p.free = slices.Insert(p.free, 0, w)
	}
	return nil
}

// follow is the job a worker sending an email takes to pipeline behind
// it: the first queued, when it is an email whose caller still waits; nil
// otherwise (also after close). The worker stays busy.
func (p *pool) follow() *job {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.queue) == 0 {
		return nil
	}
	j := p.queue[0]
	if j.f != nil || j.ctx.Err() != nil {
		return nil
	}
	p.queue = p.queue[1:]
	close(j.taken)
	return j
}

// work is worker w's loop.
func (p *pool) work(w *worker) {
	defer close(w.exited)
	var c *conn
	idle := time.NewTimer(p.idleTimeout)
	idle.Stop()
	defer idle.Stop()
	run := func(j *job) {
		for j != nil {
			if j.f != nil {
				c = j.f(c)
			} else {
				c, j = p.send(c, j)
			}
			// Free (or on to the next job) before the caller hears that
			// this one is done: its next send finds this worker first.
			next := p.next(w, c != nil)
			close(j.done)
			j = next
		}
		if c != nil {
			idle.Reset(p.idleTimeout)
		}
	}
	for {
		select {
		case j := <-w.jobs:
			idle.Stop()
			run(j)
		case <-idle.C:
			if c != nil {
				p.log.Debug("closing idle smtp connection", "idle_for", p.idleTimeout.String())
				p.quit(c)
				c = nil
			}
		case <-w.stop:
			select {
			case j := <-w.jobs: // given before close
				run(j)
			default:
			}
			p.quit(c)
			return
		}
	}
}

// opened counts a new session.
func (p *pool) opened(c *conn) *conn {
	p.metrics.connections.Inc()
	return c
}

// drop closes c without a goodbye (a broken connection would only make QUIT
// wait).
func (p *pool) drop(c *conn) {
	_ = c.sc.Close()
	p.metrics.connections.Dec()
}

// quit says QUIT on c, if any, and closes it.
func (p *pool) quit(c *conn) {
	if c == nil {
		return
	}
	quit(c.sc)
	p.metrics.connections.Dec()
}

// close stops the workers: a free one says QUIT at once, and close waits a
// moment for those; a busy one closes its session when its send ends.
// Later calls to do fail with ErrClosed, and so do the jobs still queued.
func (p *pool) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.free = nil
	p.mu.Unlock()
	close(p.stopped)
	for _, w := range p.workers {
		close(w.stop)
	}
	deadline := time.NewTimer(quitTimeout + time.Second)
	defer deadline.Stop()
	for _, w := range p.workers {
		select {
		case <-w.exited:
		case <-deadline.C:
			return
		}
	}
}
