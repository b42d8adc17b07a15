package main

import (
	"context"
	"fmt"
	"time"

	"github.com/doorbell/doorbell/bench/internal/launch"
	"github.com/doorbell/doorbell/bench/internal/load"
	"github.com/doorbell/doorbell/bench/internal/proc"
)

// CostRow is what one relying party spent per sign-in under one load.
type CostRow struct {
	Service string `json:"service"`
	// Load is "100/s" for an open loop at that rate, or "ceiling" for
	// CeilingBrowsers browsers signing in back to back.
	Load      string         `json:"load"`
	Completed int            `json:"completed"`
	Failures  map[string]int `json:"failures,omitempty"`
	PerSecond float64        `json:"sign_ins_per_second"`
	// CPUUs is the CPU per completed sign-in of the service, of NATS
	// (the gateway publishes, oauth2-proxy does not) and of the harness
	// (browsers and provider), by process name.
	CPUUs map[string]float64 `json:"cpu_us_per_sign_in"`
	// KernelShare is the part of the service's CPU time spent in the
	// kernel (on loopback that includes the receiving side's TCP work).
	KernelShare float64 `json:"kernel_share"`
	// Allocs is heap objects per sign-in; -1 when unknown.
	Allocs float64 `json:"allocs_per_sign_in"`
	// AtService is the time of the requests to the relying party, the
	// provider's work inside them taken out: what it adds to the
	// provider's round trip.
	AtService load.Summary `json:"at_service"`
	// PeakRSSMB is the service's peak RSS during the run.
	PeakRSSMB  float64      `json:"peak_rss_mb"`
	SignIn     load.Summary `json:"sign_in"`
	AtProvider load.Summary `json:"at_provider"`
}

// relyingParty is a service that signs people in and where its sign-in
// starts.
type relyingParty struct {
	name  string
	start func(ctx context.Context, dir, natsURL string) (*launch.Service, error)
	path  string // the start URL's path and query
}

// cost measures the gateway and then oauth2-proxy at the fixed CostRates
// and at their ceilings, one service running at a time, each after a
// warm-up.
func (b *bench) cost(ctx context.Context) error {
	dir, err := b.phaseDir("cost")
	if err != nil {
		return err
	}
	ns, err := b.startNATS(ctx, dir)
	if err != nil {
		return err
	}
	defer ns.Stop(5 * time.Second)
	parties := []relyingParty{
		{name: "auth-gateway", path: "/login", start: func(ctx context.Context, dir, natsURL string) (*launch.Service, error) {
			s := b.client
			s.NATSURL = natsURL
			return launch.StartGateway(ctx, b.cfg.Gateway, dir, s)
		}},
		{name: "oauth2-proxy", path: "/oauth2/start?rd=%2F", start: func(ctx context.Context, dir, _ string) (*launch.Service, error) {
			return launch.StartOAuth2Proxy(ctx, b.cfg.OAuth2Proxy, dir, b.client)
		}},
	}
	for _, rp := range parties {
		rows, err := b.costOf(ctx, dir, ns, rp)
		if err != nil {
			return fmt.Errorf("%s: %w", rp.name, err)
		}
		b.res.Cost = append(b.res.Cost, rows...)
	}
	return nil
}

// costOf starts rp and measures it at each fixed rate and at its ceiling,
// each after a warm-up at the same load.
func (b *bench) costOf(ctx context.Context, dir string, ns *natsServer, rp relyingParty) ([]CostRow, error) {
	svc, err := rp.start(ctx, dir, ns.URL)
	if err != nil {
		return nil, err
	}
	defer b.stop(svc, "cost")
	start := svc.URL + rp.path
	watch := []*proc.Process{ns.Process}
	var rows []CostRow
	for i, rate := range b.cfg.CostRates {
		b.progress("cost: %s at %g sign-ins/s for %s after %s of warm-up", rp.name, rate, b.cfg.CostDuration, b.cfg.WarmupDuration)
		m := b.measure(ctx, svc, watch, start, fmt.Sprintf("cost-%s-%d", rp.name, i), b.cfg.CostDuration, b.openLoop(ctx, rate))
		rows = append(rows, costRow(rp.name, fmt.Sprintf("%g/s", rate), m))
	}
	b.progress("cost: %s ceiling, %d browsers back to back for %s after %s of warm-up",
		rp.name, b.cfg.CeilingBrowsers, b.cfg.CeilingDuration, b.cfg.WarmupDuration)
	m := b.measure(ctx, svc, watch, start, "cost-"+rp.name+"-ceiling", b.cfg.CeilingDuration, func(d time.Duration, op load.Op) load.Run {
		return load.ClosedLoop(ctx, b.cfg.CeilingBrowsers, d, op)
	})
	return append(rows, costRow(rp.name, "ceiling", m)), nil
}

func costRow(service, loadName string, m measured) CostRow {
	o := m.outcome()
	return CostRow{
		Service: service, Load: loadName, Completed: o.completed, Failures: o.failures, PerSecond: o.perSecond,
		CPUUs: o.cpuUs, KernelShare: o.kernelShare[service], PeakRSSMB: o.peakRSSMB[service], Allocs: o.allocs, AtService: o.atRP, SignIn: o.total, AtProvider: o.atProvider,
	}
}
