package ratelimit_test

import (
	"fmt"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/ratelimit"
)

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func TestAllowGivesEachKeyItsBurstThenItsRate(t *testing.T) {
	l := ratelimit.New(10, 3, 100) // 10/s, burst 3
	for i := range 3 {
		if ok, _ := l.Allow("1.2.3.4", t0); !ok {
			t.Fatalf("request %d within the burst refused", i+1)
		}
	}
	ok, wait := l.Allow("1.2.3.4", t0)
	if ok {
		t.Fatal("request past the burst allowed")
	}
	if wait != 100*time.Millisecond {
		t.Errorf("wait = %v, want 100ms (one token at 10/s)", wait)
	}
	// A refused request takes no token: after the wait exactly one more.
	if ok, _ := l.Allow("1.2.3.4", t0.Add(100*time.Millisecond)); !ok {
		t.Error("refused after waiting the time it was told")
	}
	if ok, _ := l.Allow("1.2.3.4", t0.Add(100*time.Millisecond)); ok {
		t.Error("a second request after one token's wait allowed")
	}
	// Other keys are not affected.
	if ok, _ := l.Allow("5.6.7.8", t0); !ok {
		t.Error("another key was limited")
	}
}

func TestMemoryStaysBounded(t *testing.T) {
	tests := []struct {
		name string
		// gap between new keys; 0 means a flood where no bucket refills.
		gap time.Duration
	}{
		{"idle keys are forgotten", time.Second},
		{"flood of new keys", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := ratelimit.New(10, 2, 50)
			now := t0
			for i := range 1000 {
				l.Allow(fmt.Sprintf("10.0.%d.%d", i/256, i%256), now)
				now = now.Add(tt.gap)
				if n := l.Len(); n > 50 {
					t.Fatalf("after %d keys the limiter holds %d, want at most 50", i+1, n)
				}
			}
		})
	}
}

func TestBusyKeyKeepsItsEmptyBucketWhileIdleOnesAreDropped(t *testing.T) {
	l := ratelimit.New(rate.Every(time.Hour), 1, 3)
	l.Allow("busy", t0)
	l.Allow("idle-1", t0)
	l.Allow("idle-2", t0)
	// Two hours on, the idle buckets are full again and may go; the busy
	// one is touched just before the limiter fills up.
	later := t0.Add(2 * time.Hour)
	if ok, _ := l.Allow("busy", later); !ok {
		t.Fatal("busy key refused after its bucket refilled")
	}
	l.Allow("new", later)
	if ok, _ := l.Allow("busy", later); ok {
		t.Error("making room reset the busy key's empty bucket")
	}
}
