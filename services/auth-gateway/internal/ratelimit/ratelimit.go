// Package ratelimit limits how often each client may do something: one
// token bucket per key (a client IP), in bounded memory.
//
// A Limiter holds at most a fixed number of buckets. When it is full it
// first forgets buckets that have refilled completely (forgetting them
// changes nothing), and if that is not enough it forgets arbitrary ones,
// which hands those keys a fresh burst. So the memory bound always holds,
// and under a flood from more keys than the bound the limit becomes
// approximate for those keys; a per-key limit never stops an attacker with
// that many addresses anyway. Limiter starts no goroutine.
package ratelimit

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// sweepEvery bounds how often a full Limiter scans all its buckets.
const sweepEvery = time.Second

// Limiter is a set of token buckets, one per key. It is safe for
// concurrent use.
type Limiter struct {
	limit   rate.Limit
	burst   int
	maxKeys int
	// refill is how long an untouched bucket takes to fill up again.
	refill time.Duration

	mu        sync.Mutex
	buckets   map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	lim  *rate.Limiter
	last time.Time
}

// New returns a Limiter that allows each key limit events per second with
// bursts of up to burst, and remembers at most maxKeys keys.
func New(limit rate.Limit, burst, maxKeys int) *Limiter {
	if burst < 1 {
		burst = 1
	}
	if maxKeys < 1 {
		maxKeys = 1
	}
	refill := time.Duration(math.MaxInt64)
	if limit > 0 && limit != rate.Inf {
		refill = time.Duration(float64(burst) / float64(limit) * float64(time.Second))
	}
	return &Limiter{
		limit: limit, burst: burst, maxKeys: maxKeys, refill: refill,
		buckets: make(map[string]*bucket),
	}
}

// Allow takes a token from key's bucket at now. When the bucket is empty it
// takes nothing and returns false and how long until a token is there.
func (l *Limiter) Allow(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= l.maxKeys {
			l.makeRoom(now)
		}
		b = &bucket{lim: rate.NewLimiter(l.limit, l.burst)}
		l.buckets[key] = b
	}
	b.last = now
	r := b.lim.ReserveN(now, 1)
	if !r.OK() {
		return false, time.Duration(math.MaxInt64)
	}
	if wait := r.DelayFrom(now); wait > 0 {
		r.CancelAt(now)
		return false, wait
	}
	return true, 0
}

// Len returns how many keys the Limiter remembers.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// makeRoom frees at least one slot. It drops refilled buckets (at most once
// per sweepEvery, since that scans them all), then arbitrary ones.
func (l *Limiter) makeRoom(now time.Time) {
	if now.Sub(l.lastSweep) >= sweepEvery {
		l.lastSweep = now
		for k, b := range l.buckets {
			if now.Sub(b.last) >= l.refill {
				delete(l.buckets, k)
			}
		}
	}
	for k := range l.buckets {
		if len(l.buckets) < l.maxKeys {
			break
		}
		delete(l.buckets, k)
	}
}
