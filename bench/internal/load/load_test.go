package load

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

func TestPercentileIsNearestRank(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 1000; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	s := Summarize(ds)
	if s.N != 1000 || s.P50 != 500*time.Millisecond || s.P99 != 990*time.Millisecond ||
		s.P999 != 999*time.Millisecond || s.Max != time.Second {
		t.Errorf("Summarize = %+v", s)
	}
	if got := Percentile([]time.Duration{7}, 0.999); got != 7 {
		t.Errorf("one value: p99.9 = %v, want it", got)
	}
	if got := Summarize(nil); got != (Summary{}) {
		t.Errorf("no values: %+v, want zero", got)
	}
}

func TestOpenLoopKeepsTheRateAndSkipsBeyondMaxInFlight(t *testing.T) {
	var calls atomic.Int64
	run := OpenLoop(context.Background(), 200, 250*time.Millisecond, 1000, func(context.Context, int) { calls.Add(1) })
	if run.Calls != 50 || calls.Load() != 50 || run.Skipped != 0 || len(run.Lags) != 50 {
		t.Errorf("200/s for 250ms: %d calls (%d ran), %d skipped, %d lags; want 50, 0", run.Calls, calls.Load(), run.Skipped, len(run.Lags))
	}
	if took := run.Ended.Sub(run.Began); took < 240*time.Millisecond {
		t.Errorf("the calls were spread over %v, want about 250ms", took)
	}

	block := make(chan struct{})
	go func() { time.Sleep(100 * time.Millisecond); close(block) }()
	run = OpenLoop(context.Background(), 100, 50*time.Millisecond, 2, func(context.Context, int) { <-block })
	if run.Calls != 2 || run.Skipped != 3 {
		t.Errorf("two in flight at most: %d calls, %d skipped; want 2, 3", run.Calls, run.Skipped)
	}
}

func TestClosedLoopRunsEveryWorkerUntilTheEnd(t *testing.T) {
	seen := make([]atomic.Bool, 10_000)
	run := ClosedLoop(context.Background(), 4, 50*time.Millisecond, func(_ context.Context, i int) {
		seen[i%len(seen)].Store(true)
		time.Sleep(time.Millisecond)
	})
	if run.Calls < 4 || run.Ended.Sub(run.Began) < 50*time.Millisecond {
		t.Errorf("ClosedLoop = %d calls over %v", run.Calls, run.Ended.Sub(run.Began))
	}
	for i := range run.Calls {
		if !seen[i].Load() {
			t.Fatalf("call %d of %d never ran: indexes must be 0..Calls-1", i, run.Calls)
		}
	}
}
