package deliver

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	const base, ceiling = 2 * time.Second, 5 * time.Minute
	tests := []struct {
		name      string
		delivered uint64
		jitter    float64
		want      time.Duration
	}{
		{"the first retry waits the base", 1, 0, 2 * time.Second},
		{"zero deliveries counts as the first", 0, 0, 2 * time.Second},
		{"each attempt doubles the wait", 2, 0, 4 * time.Second},
		{"the fifth attempt waits 32s", 5, 0, 32 * time.Second},
		{"the wait is capped", 9, 0, 5 * time.Minute},
		{"huge attempt counts do not overflow", 1 << 40, 0, 5 * time.Minute},
		{"jitter +1 adds 20%", 1, 1, 2400 * time.Millisecond},
		{"jitter -1 removes 20%", 1, -1, 1600 * time.Millisecond},
		{"jitter beyond 1 is clamped", 9, 7, 6 * time.Minute},
		{"jitter below -1 is clamped", 1, -7, 1600 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Backoff(base, ceiling, tt.delivered, tt.jitter); got != tt.want {
				t.Errorf("Backoff(%s, %s, %d, %v) = %s, want %s", base, ceiling, tt.delivered, tt.jitter, got, tt.want)
			}
		})
	}
}
