package smtpsink

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/doorbell/doorbell/bench/internal/proc"
)

// Run is the main of a sink process: it serves on a free loopback port,
// writes "listening ADDR" and then one Receipt line per message to out,
// until ctx is done.
func Run(ctx context.Context, out io.Writer, delay time.Duration) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("smtpsink: listen: %w", err)
	}
	w := bufio.NewWriterSize(out, 64<<10)
	proc.Announce(w, ln.Addr().String())
	if err := w.Flush(); err != nil {
		ln.Close()
		return err
	}
	// One writer: sessions hand receipts over and never wait on the pipe
	// for long; lines are flushed whenever no more are queued.
	lines := make(chan Receipt, 4096)
	written := make(chan struct{})
	go func() {
		defer close(written)
		for r := range lines {
			w.WriteString(r.String())
			w.WriteByte('\n')
			if len(lines) == 0 {
				w.Flush()
			}
		}
		w.Flush()
	}()
	srv := &Server{Delay: delay, Report: func(r Receipt) { lines <- r }}
	err = srv.Serve(ctx, ln)
	close(lines)
	<-written
	return err
}

// Remote is a sink running in another process (see Run), so that its CPU is
// never counted as the measured program's and its scheduling is the
// kernel's, as a real relay's would be.
type Remote struct {
	// Addr is where the sink listens, host:port.
	Addr string
	p    *proc.Process

	mu       sync.Mutex
	receipts []Receipt
	readErr  error
	notify   chan struct{} // receives after each batch of receipts
}

// StartRemote starts a sink process from s (whose Stdout it sets) and
// returns once the sink listens.
func StartRemote(ctx context.Context, s proc.Spec) (*Remote, error) {
	p, addr, lines, err := proc.StartAnnounced(ctx, s)
	if err != nil {
		return nil, err
	}
	r := &Remote{Addr: addr, p: p, notify: make(chan struct{}, 1)}
	go r.read(lines)
	return r, nil
}

// read collects receipt lines until the process closes its output.
func (r *Remote) read(lines *bufio.Scanner) {
	for lines.Scan() {
		rec, err := ParseReceipt(lines.Text())
		r.mu.Lock()
		if err != nil && r.readErr == nil {
			r.readErr = err
		}
		if err == nil {
			r.receipts = append(r.receipts, rec)
		}
		r.mu.Unlock()
		select {
		case r.notify <- struct{}{}:
		default:
		}
	}
}

// Receipts is a copy of the receipts so far, in the order they arrived.
func (r *Remote) Receipts() []Receipt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Receipt(nil), r.receipts...)
}

// WaitFor waits until the sink has reported at least n messages. It fails
// when ctx is done first (with how many arrived), or when the sink exits.
func (r *Remote) WaitFor(ctx context.Context, n int) error {
	for {
		r.mu.Lock()
		got, readErr := len(r.receipts), r.readErr
		r.mu.Unlock()
		if readErr != nil {
			return readErr
		}
		if got >= n {
			return nil
		}
		select {
		case <-r.notify:
		case <-r.p.Exited():
			return fmt.Errorf("%s exited after %d of %d messages", r.p.Name, got, n)
		case <-ctx.Done():
			return fmt.Errorf("%d of %d messages arrived: %w", got, n, ctx.Err())
		}
	}
}

// Process is the sink's process, for its CPU time.
func (r *Remote) Process() *proc.Process { return r.p }

// Watch calls fn with every receipt, in the order they arrived, from the
// first one the sink reported, until fn returns true. It fails when ctx is
// done first or the sink exits.
func (r *Remote) Watch(ctx context.Context, fn func(Receipt) bool) error {
	next := 0
	for {
		r.mu.Lock()
		batch, readErr := r.receipts[next:len(r.receipts):len(r.receipts)], r.readErr
		r.mu.Unlock()
		if readErr != nil {
			return readErr
		}
		for _, rec := range batch {
			if fn(rec) {
				return nil
			}
		}
		next += len(batch)
		select {
		case <-r.notify:
		case <-r.p.Exited():
			return fmt.Errorf("%s exited after %d messages", r.p.Name, next)
		case <-ctx.Done():
			return fmt.Errorf("after %d messages: %w", next, ctx.Err())
		}
	}
}

// Stop ends the sink process.
func (r *Remote) Stop() error {
	return r.p.Stop(2 * time.Second)
}
