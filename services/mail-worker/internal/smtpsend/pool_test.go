package smtpsend

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A job that waits for a busy worker can be withdrawn by its context or by
// close, and then never runs; one queued behind a busy worker runs on it
// as soon as it is free.
func TestPoolJobsWaitForAWorkerAndCanBeWithdrawn(t *testing.T) {
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	p := newPool(1, nil, time.Minute, m, slog.New(slog.DiscardHandler))
	first := make(chan error, 1)
	// occupy gives the worker a job that holds it until release is called.
	occupy := func() (release func()) {
		hold, busy := make(chan struct{}), make(chan struct{})
		go func() {
			first <- p.do(context.Background(), func(c *conn) *conn {
				close(busy)
				<-hold
				return c
			})
		}()
		<-busy
		return func() { close(hold) }
	}
	release := occupy()

	var ran atomic.Int32
	count := func(c *conn) *conn { ran.Add(1); return c }
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := p.do(ctx, count); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a job whose context ended while it waited: %v", err)
	}
	queued := make(chan error, 1)
	go func() { queued <- p.do(context.Background(), count) }()
	time.Sleep(50 * time.Millisecond) // queued behind the busy worker
	release()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-queued; err != nil || ran.Load() != 1 {
		t.Errorf("the queued job: %v, %d jobs ran; want it run once and the withdrawn one never", err, ran.Load())
	}

	release = occupy()
	go func() { queued <- p.do(context.Background(), count) }()
	time.Sleep(50 * time.Millisecond)
	go p.close()
	if err := <-queued; !errors.Is(err, ErrClosed) {
		t.Errorf("a job queued at close: %v, want ErrClosed", err)
	}
	release()
	if err := <-first; err != nil {
		t.Errorf("the job in hand at close: %v", err)
	}
	if err := p.do(context.Background(), count); !errors.Is(err, ErrClosed) || ran.Load() != 1 {
		t.Errorf("after close: %v, %d jobs ran", err, ran.Load())
	}
}

// A free worker that holds a session is given the next job before one that
// would have to dial, even one freed later (its send dropped its session).
func TestPoolPrefersAWorkerWithASession(t *testing.T) {
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	p := newPool(2, nil, time.Minute, m, slog.New(slog.DiscardHandler))
	t.Cleanup(p.close)
	session := &conn{} // never used as one: the last job drops it
	inA, inB, relA, relB := make(chan struct{}), make(chan struct{}), make(chan struct{}), make(chan struct{})
	doneA, doneB := make(chan error, 1), make(chan error, 1)
	go func() { doneA <- p.do(context.Background(), func(*conn) *conn { close(inA); <-relA; return session }) }()
	<-inA
	go func() { doneB <- p.do(context.Background(), func(*conn) *conn { close(inB); <-relB; return nil }) }()
	<-inB
	close(relA)
	if err := <-doneA; err != nil {
		t.Fatal(err)
	}
	close(relB) // freed last, without a session
	if err := <-doneB; err != nil {
		t.Fatal(err)
	}
	var got *conn
	if err := p.do(context.Background(), func(c *conn) *conn { got = c; return nil }); err != nil || got != session {
		t.Errorf("the next job got session %p (%v), want the idle one %p", got, err, session)
	}
}
