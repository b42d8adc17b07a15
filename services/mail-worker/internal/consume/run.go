package consume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/relay"
)

// fetchErrorPause is how long Run waits after a failed pull before the
// next one (NATS reconnecting, a leader election).
const fetchErrorPause = time.Second

// Run handles messages from cons until ctx is done, with
// Config.Concurrency handlers, goroutines that Run owns.
//
// Run pulls exactly as many messages as it has idle handlers, so that every
// message delivered to this replica is being handled and reported in
// progress: none waits unreported past AckWait (nats.go#1929). It asks
// gate first: while the relay fails everyone it pulls nothing, and after a
// passed probe one message at a time. Run runs gate's prober; a Gate
// serves one Run.
//
// When ctx is done Run stops pulling and lets the handlers finish (they see ctx too: a message not
// yet at the relay is handed back at once, one the relay is answering is
// finished and recorded), waiting at most ShutdownTimeout from then;
// handlers still running after that are left to the caller, whose closing
// of the NATS connection ends them (their messages come back after
// AckWait). Run returns nil then, or an error when the consumer
// disappears.
func Run(ctx context.Context, cons jetstream.Consumer, handle func(context.Context, jetstream.Msg), gate *relay.Gate, cfg Config, log *slog.Logger) error {
	// ShutdownTimeout counts from the moment ctx is done.
	var stoppedAt atomic.Int64
	defer context.AfterFunc(ctx, func() { stoppedAt.Store(time.Now().UnixNano()) })()
	n := max(1, cfg.Concurrency)

	gateCtx, stopGate := context.WithCancel(ctx)
	var gateDone sync.WaitGroup
	gateDone.Go(func() { gate.Watch(gateCtx) })
	defer gateDone.Wait()
	defer stopGate()

	log.InfoContext(ctx, "consuming", "stream", eventsv1.StreamAuthEvents, "consumer", eventsv1.ConsumerMailWorker,
		"subject", eventsv1.SubjectUserAuthenticated, "concurrency", n)
	p := &puller{cons: cons, gate: gate, wait: cfg.FetchWait, log: log,
		work: make(chan delivered, n), idle: make(idleHandlers, n)}
	if p.wait <= 0 {
		p.wait = DefaultFetchWait
	}
	var handlers sync.WaitGroup
	for range n {
		p.idle <- struct{}{}
		handlers.Go(func() {
			for d := range p.work {
				handle(ctx, d.msg)
				if d.done != nil {
					d.done()
				}
				p.idle <- struct{}{}
			}
		})
	}
	runErr := p.run(ctx)
	close(p.work)
	stopGate()

	done := make(chan struct{})
	go func() {
		handlers.Wait()
		close(done)
	}()
	left := cfg.ShutdownTimeout
	if at := stoppedAt.Load(); at != 0 {
		left -= time.Since(time.Unix(0, at))
	}
	// However late the pulls ended, finished handlers get a moment to say so.
	timer := time.NewTimer(max(250*time.Millisecond, left))
	defer timer.Stop()
	select {
	case <-done:
		log.Info("consumer drained")
	case <-timer.C:
		log.Warn("shutdown timeout: messages still in flight come back after AckWait", "timeout", cfg.ShutdownTimeout)
	}
	return runErr
}

// delivered is a message on its way to a handler; done, when set, runs
// once it was handled.
type delivered struct {
	msg  jetstream.Msg
	done func()
}

// idleHandlers counts the handlers waiting for a message.
type idleHandlers chan struct{}

// take waits until at least one handler is idle, then takes every idle one,
// and returns how many; 0 when ctx ends first.
func (h idleHandlers) take(ctx context.Context) int {
	select {
	case <-h:
	case <-ctx.Done():
		return 0
	}
	n := 1
	for {
		select {
		case <-h:
			n++
		default:
			return n
		}
	}
}

// give returns n handlers taken with take but given no message.
func (h idleHandlers) give(n int) {
	for range n {
		h <- struct{}{}
	}
}

// puller is Run's pulling side.
type puller struct {
	cons jetstream.Consumer
	gate *relay.Gate
	wait time.Duration
	log  *slog.Logger
	work chan delivered // buffered for every handler; fed only for idle ones
	idle idleHandlers

	lastProblem string
}

// run pulls until ctx is done, as the gate allows: as many messages as
// there are idle handlers, or one for a trial. A Fetch per round, never a
// client-side buffer: every message pulled goes to a handler at once.
func (p *puller) run(ctx context.Context) error {
	for {
		free := p.idle.take(ctx)
		if free == 0 {
			return nil
		}
		limit, err := p.gate.Admit(ctx)
		if err != nil {
			p.idle.give(free)
			return nil
		}
		trial := limit == 1
		if trial {
			p.idle.give(free - 1)
			free = 1
		}
		got, err := p.fetch(ctx, free, trial)
		p.idle.give(free - got)
		if trial && got == 0 {
			// Nothing to pull: the passed probe stands. A failed pull
			// says nothing of the relay: the next pull is the trial.
			p.gate.TrialOver(ctx, err != nil)
		}
		if err != nil {
			if err := p.problem(ctx, err); err != nil {
				return err
			}
		} else {
			p.lastProblem = ""
		}
	}
}

// fetch pulls up to n messages and hands each to an idle handler. A trial
// message tells the gate when it is handled.
func (p *puller) fetch(ctx context.Context, n int, trial bool) (int, error) {
	batch, err := p.cons.Fetch(n, jetstream.FetchMaxWait(p.wait))
	if err != nil {
		return 0, err
	}
	got := 0
	for msg := range batch.Messages() {
		got++
		d := delivered{msg: msg}
		if trial {
			d.done = func() { p.gate.TrialOver(ctx, true) }
		}
		p.work <- d // a handler is idle: taken at once
	}
	return got, batch.Error()
}

// problem logs a failed pull once per distinct problem and pauses a
// moment; it returns an error only when the consumer is gone.
func (p *puller) problem(ctx context.Context, err error) error {
	if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("consuming stopped: consumer %s is gone: %w", eventsv1.ConsumerMailWorker, err)
	}
	if problem := err.Error(); problem != p.lastProblem {
		p.lastProblem = problem
		p.log.WarnContext(ctx, "cannot pull messages; trying again every second", "error", err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(fetchErrorPause):
	}
	return nil
}
