// Package load drives an operation at a fixed offered rate (open loop: a new
// call starts on schedule whether or not earlier ones have finished) or as
// fast as a fixed number of callers can (closed loop), and summarises
// durations as percentiles.
package load

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Run is what a load run did.
type Run struct {
	// Began and Ended bound the run: the first call's start and the last
	// call's end.
	Began, Ended time.Time
	// Calls is how many calls were made.
	Calls int
	// Skipped counts calls an open loop did not make because MaxInFlight
	// calls were still running.
	Skipped int
	// Lags are, for an open loop, how late each call started against its
	// schedule: the generator's own delay, not the system's.
	Lags []time.Duration
}

// Op is one call; i counts from 0 in start order. It must return soon
// after ctx is done.
type Op func(ctx context.Context, i int)

// OpenLoop calls op rate times per second for d, each call in its own
// goroutine, and returns when every call has returned. A call whose turn
// comes while maxInFlight calls are running is skipped and counted, so an
// overloaded system cannot make the generator pile up without bound.
func OpenLoop(ctx context.Context, rate float64, d time.Duration, maxInFlight int, op Op) Run {
	n := int(rate * d.Seconds())
	interval := time.Duration(float64(time.Second) / rate)
	run := Run{Lags: make([]time.Duration, 0, n)}
	var (
		wg       sync.WaitGroup
		inFlight atomic.Int64
		mu       sync.Mutex
		ended    time.Time
	)
	start := time.Now()
	run.Began = start
	for i := 0; i < n && ctx.Err() == nil; i++ {
		due := start.Add(time.Duration(i) * interval)
		if wait := time.Until(due); wait > 0 {
			sleep(ctx, wait)
		}
		if inFlight.Load() >= int64(maxInFlight) {
			run.Skipped++
			continue
		}
		run.Lags = append(run.Lags, time.Since(due))
		run.Calls++
		inFlight.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer inFlight.Add(-1)
			op(ctx, i)
			now := time.Now()
			mu.Lock()
			if now.After(ended) {
				ended = now
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	run.Ended = ended
	return run
}

// ClosedLoop runs workers callers that each call op back to back until d
// has passed, and returns when every call has returned.
func ClosedLoop(ctx context.Context, workers int, d time.Duration, op Op) Run {
	var (
		wg   sync.WaitGroup
		next atomic.Int64
	)
	run := Run{Began: time.Now()}
	stopAt := run.Began.Add(d)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && time.Now().Before(stopAt) {
				op(ctx, int(next.Add(1)-1))
			}
		}()
	}
	wg.Wait()
	run.Ended = time.Now()
	run.Calls = int(next.Load())
	return run
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
