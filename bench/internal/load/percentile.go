package load

import (
	"encoding/json"
	"math"
	"slices"
	"time"
)

// Summary is the distribution of a set of durations.
type Summary struct {
	N    int
	P50  time.Duration
	P99  time.Duration
	P999 time.Duration
	Max  time.Duration
}

// Summarize sorts ds in place and returns its percentiles (nearest rank:
// the smallest value with at least q of the values at or below it).
func Summarize(ds []time.Duration) Summary {
	slices.Sort(ds)
	if len(ds) == 0 {
		return Summary{}
	}
	return Summary{
		N: len(ds), P50: Percentile(ds, 0.50), P99: Percentile(ds, 0.99),
		P999: Percentile(ds, 0.999), Max: ds[len(ds)-1],
	}
}

// Percentile is the q-th (0 < q ≤ 1) nearest-rank percentile of sorted.
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(q * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// MarshalJSON writes the summary in milliseconds, the unit people read
// latencies in.
func (s Summary) MarshalJSON() ([]byte, error) {
	ms := func(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }
	return json.Marshal(struct {
		N    int     `json:"n"`
		P50  float64 `json:"p50_ms"`
		P99  float64 `json:"p99_ms"`
		P999 float64 `json:"p99_9_ms"`
		Max  float64 `json:"max_ms"`
	}{s.N, ms(s.P50), ms(s.P99), ms(s.P999), ms(s.Max)})
}
