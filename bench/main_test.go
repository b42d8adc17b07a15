package main

import (
	"io"
	"slices"
	"testing"
	"time"

	"github.com/doorbell/doorbell/bench/internal/load"
)

func TestDefaultsAreTheIssuesPhases(t *testing.T) {
	c, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Events != 10_000 || !slices.Equal(c.Pools, []int{4, 16}) || !slices.Equal(c.Rates, []float64{100, 500, 1000}) ||
		c.SlowSinkDelay != 2*time.Second || !slices.Equal(c.Phases, allPhases) {
		t.Errorf("defaults: %+v", c)
	}
	if c.Flags["events"] != "10000" {
		t.Errorf("Flags records the values for the JSON: %v", c.Flags)
	}
	for _, args := range [][]string{{"-phases", "throughput,nap"}, {"-pools", "4,0"}, {"-rates", "fast"}, {"-events", "1"}} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) accepted it", args)
		}
	}
}

func TestTargetsMarkMissesAndPasses(t *testing.T) {
	email := load.Summary{P99: 12 * time.Millisecond}
	r := &Results{
		Throughput: []ThroughputRow{{Pool: 4, Ratio: 0.12}, {Pool: 16, Ratio: 0.6}},
		Latency:    []SignInRow{{Offered: 500, Email: &email}},
		Cost:       []CostRow{{Service: "auth-gateway", Load: "ceiling", CPUUs: map[string]float64{"auth-gateway": 150}}},
		SMTP: &SMTPIndependence{Rate: 100,
			Healthy: SignInRow{AtGateway: load.Summary{P99: 3 * time.Millisecond}, PeakRSSMB: map[string]float64{"auth-gateway": 30, "mail-worker": 20}},
			Slow:    SignInRow{SinkDelayMs: 2000, AtGateway: load.Summary{P99: 7 * time.Millisecond}, PeakRSSMB: map[string]float64{"auth-gateway": 60}}},
	}
	var met []bool
	for _, tg := range targets(r) {
		met = append(met, tg.Met)
	}
	// worker 4, worker 16, email p99, gateway CPU, gateway RSS, worker RSS, unmoved p99 (7 ms ≤ 3+5 ms)
	if want := []bool{false, true, false, true, false, true, true}; !slices.Equal(met, want) {
		t.Errorf("met = %v, want %v (%+v)", met, want, targets(r))
	}
}

// A throughput row is the round with the median ratio, whole, and keeps
// every round's ratio in the order they ran.
func TestMedianRound(t *testing.T) {
	rounds := []ThroughputRow{
		{Ratio: 0.41, WorkerPerSecond: 1},
		{Ratio: 0.25, WorkerPerSecond: 2},
		{Ratio: 0.33, WorkerPerSecond: 3},
	}
	got := medianRound(rounds)
	if got.Ratio != 0.33 || got.WorkerPerSecond != 3 || !slices.Equal(got.RoundRatios, []float64{0.41, 0.25, 0.33}) {
		t.Errorf("medianRound = %+v", got)
	}
	if one := medianRound(rounds[:1]); one.Ratio != 0.41 {
		t.Errorf("medianRound of one round = %+v", one)
	}
}
