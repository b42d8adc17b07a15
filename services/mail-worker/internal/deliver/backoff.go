package deliver

import "time"

// Backoff is the delay before the next attempt at a message that failed
// transiently after delivered attempts: base·2^(delivered-1), capped at
// ceiling, then moved by jitter·20%, where jitter is clamped to [-1, 1]. The
// result is never negative and never above ceiling·1.2.
func Backoff(base, ceiling time.Duration, delivered uint64, jitter float64) time.Duration {
	d := base
	for i := uint64(1); i < delivered && d < ceiling; i++ {
		d *= 2
	}
	if d > ceiling || d < 0 { // d < 0: overflow
		d = ceiling
	}
	jitter = max(-1, min(1, jitter))
	return time.Duration(float64(d) * (1 + 0.2*jitter))
}
