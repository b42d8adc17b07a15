package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/doorbell/doorbell/bench/internal/browser"
	"github.com/doorbell/doorbell/bench/internal/launch"
	"github.com/doorbell/doorbell/bench/internal/load"
	"github.com/doorbell/doorbell/bench/internal/proc"
	"github.com/doorbell/doorbell/bench/internal/smtpsink"
)

// harness names this process (browsers and provider) among the processes
// whose CPU time is counted.
const harness = "harness"

// attempt is one sign-in as the browser saw it.
type attempt struct {
	email  string
	timing browser.Timing
	err    error
}

// measured is what a load run did and what it cost each process.
type measured struct {
	run      load.Run
	attempts []attempt
	// cpu is the CPU time of each watched process over the run, by name,
	// this one as harness.
	cpu map[string]proc.Times
	// mallocs is the heap objects the relying party allocated, or -1 when
	// its metrics did not say.
	mallocs float64
	// peakRSS is each watched process's peak RSS during the run, by name;
	// the peak since it started where it cannot be reset.
	peakRSS map[string]int64
}

// driver runs op for d: an open or closed loop.
type driver func(d time.Duration, op load.Op) load.Run

// measure warms svc up with drive for WarmupDuration, lets the machine
// settle, then drives sign-ins for d (each person named from tag) and
// reads the CPU time of svc and of the watched processes, and svc's
// allocations, around that run.
func (b *bench) measure(ctx context.Context, svc *launch.Service, watch []*proc.Process, start, tag string, d time.Duration, drive driver) measured {
	m := measured{mallocs: -1}
	drive(b.cfg.WarmupDuration, func(ctx context.Context, i int) {
		_, _ = browser.SignIn(ctx, b.transport, start, fmt.Sprintf("%s-warm-%d@bench.localhost", tag, i), b.provider)
	})
	settle(ctx)

	var mu sync.Mutex
	op := func(ctx context.Context, i int) {
		email := fmt.Sprintf("%s-%d@bench.localhost", tag, i)
		t, err := browser.SignIn(ctx, b.transport, start, email, b.provider)
		mu.Lock()
		m.attempts = append(m.attempts, attempt{email: email, timing: t, err: err})
		mu.Unlock()
	}
	watch = append([]*proc.Process{svc.Process}, watch...)
	for _, p := range watch {
		_ = proc.ResetPeakRSS(p.Pid()) // else the peak since start: an upper bound
	}
	mallocs0, mErr0 := svc.Mallocs(ctx) // before cpu0: the scrape is not a sign-in's
	cpu0 := cpuTimes(watch)
	m.run = drive(d, op)
	cpu1 := cpuTimes(watch)
	mallocs1, mErr1 := svc.Mallocs(ctx)
	m.cpu = map[string]proc.Times{}
	for name, t := range cpu1 {
		m.cpu[name] = t.Sub(cpu0[name])
	}
	if mErr0 == nil && mErr1 == nil {
		m.mallocs = mallocs1 - mallocs0
	}
	m.peakRSS = map[string]int64{}
	for _, p := range watch {
		m.peakRSS[p.Name], _ = p.PeakRSS()
	}
	return m
}

// cpuTimes reads the CPU time of each process and of this one.
func cpuTimes(ps []*proc.Process) map[string]proc.Times {
	out := map[string]proc.Times{}
	for _, p := range ps {
		out[p.Name], _ = p.CPU()
	}
	out[harness], _ = proc.CPU(os.Getpid())
	return out
}

// settle lets what the previous run left behind (this process's garbage,
// the kernel writing back files) finish before a measured run.
func settle(ctx context.Context) {
	runtime.GC()
	select {
	case <-time.After(settleTime):
	case <-ctx.Done():
	}
}

// settleTime is the pause before each measured run.
const settleTime = time.Second

// openLoop drives sign-ins at rate per second.
func (b *bench) openLoop(ctx context.Context, rate float64) driver {
	return func(d time.Duration, op load.Op) load.Run { return load.OpenLoop(ctx, rate, d, b.cfg.MaxInFlight, op) }
}

// SignInRow is one offered rate of sign-ins through the real gateway
// callback, JetStream, the worker and the sink.
type SignInRow struct {
	Offered      float64        `json:"offered_per_second"`
	Seconds      float64        `json:"seconds"`
	SinkDelayMs  float64        `json:"sink_delay_ms"`
	Attempted    int            `json:"attempted"`
	Completed    int            `json:"completed"`
	Skipped      int            `json:"skipped_by_generator"`
	Failures     map[string]int `json:"failures,omitempty"`
	Achieved     float64        `json:"achieved_per_second"`
	SignIn       load.Summary   `json:"sign_in"`
	AtGateway    load.Summary   `json:"at_gateway"`
	Email        *load.Summary  `json:"sign_in_to_email,omitempty"`
	EmailMissing int            `json:"emails_missing"`
	GeneratorLag load.Summary   `json:"generator_lag"`
	// CPUUs is each process's CPU per completed sign-in, by name.
	CPUUs map[string]float64 `json:"cpu_us_per_sign_in"`
	// GatewayAllocs is heap objects per sign-in; -1 when unknown.
	GatewayAllocs float64 `json:"gateway_allocs_per_sign_in"`
	// PeakRSSMB is each process's peak RSS during the run.
	PeakRSSMB map[string]float64 `json:"peak_rss_mb"`
}

// signIns starts a whole stack (NATS, a sink with delay, the gateway, the
// worker) and offers each rate in turn for LatencyDuration. With
// waitEmails it waits after each rate for its emails and reports the
// sign-in to email latency.
func (b *bench) signIns(ctx context.Context, name string, delay time.Duration, rates []float64, waitEmails bool) ([]SignInRow, error) {
	dir, err := b.phaseDir(name)
	if err != nil {
		return nil, err
	}
	ns, err := b.startNATS(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer ns.Stop(5 * time.Second)
	sink, err := b.startSink(ctx, dir, delay)
	if err != nil {
		return nil, err
	}
	defer sink.Stop()
	settings := b.client
	settings.NATSURL = ns.URL
	gw, err := launch.StartGateway(ctx, b.cfg.Gateway, dir, settings)
	if err != nil {
		return nil, err
	}
	defer b.stop(gw, name)
	worker, err := launch.StartWorker(ctx, b.cfg.Worker, dir, launch.WorkerSettings{
		NATSURL: ns.URL, SMTPAddr: sink.Addr, PoolSize: b.cfg.LatencyPool,
	})
	if err != nil {
		return nil, err
	}
	defer b.stop(worker, name)

	login := gw.URL + "/login"
	watch := []*proc.Process{worker.Process, ns.Process, sink.Process()}
	var rows []SignInRow
	for i, rate := range rates {
		b.progress("%s: %g sign-ins/s for %s after %s of warm-up (sink delay %s, SMTP_POOL_SIZE=%d)",
			name, rate, b.cfg.LatencyDuration, b.cfg.WarmupDuration, delay, b.cfg.LatencyPool)
		m := b.measure(ctx, gw, watch, login, fmt.Sprintf("%s-%d", name, i), b.cfg.LatencyDuration, b.openLoop(ctx, rate))
		row := signInRow(rate, delay, m)
		if waitEmails {
			wctx, cancel := context.WithTimeout(ctx, b.cfg.DrainTimeout)
			row.Email, row.EmailMissing, err = emailLatency(wctx, m.attempts, sink)
			cancel()
			if err = b.timeoutNote(fmt.Sprintf("%s at %g/s: waiting for emails", name, rate), err); err != nil {
				return nil, err
			}
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// signInRow summarises one open-loop run.
func signInRow(rate float64, delay time.Duration, m measured) SignInRow {
	o := m.outcome()
	return SignInRow{
		Offered: rate, SinkDelayMs: float64(delay.Milliseconds()), Attempted: m.run.Calls, Skipped: m.run.Skipped,
		Seconds: m.run.Ended.Sub(m.run.Began).Seconds(), GeneratorLag: load.Summarize(m.run.Lags),
		Completed: o.completed, Failures: o.failures, Achieved: o.perSecond,
		SignIn: o.total, AtGateway: o.atRP, CPUUs: o.cpuUs, GatewayAllocs: o.allocs, PeakRSSMB: o.peakRSSMB,
	}
}

// outcome is what a measured run amounts to, per successful sign-in.
type outcome struct {
	completed               int
	failures                map[string]int // by browser.Reason
	total, atRP, atProvider load.Summary
	perSecond               float64
	cpuUs                   map[string]float64
	// kernelShare is, by process, the part of its CPU time spent in the
	// kernel (system time).
	kernelShare map[string]float64
	peakRSSMB   map[string]float64
	allocs      float64 // -1 when unknown
}

func (m measured) outcome() outcome {
	o := outcome{allocs: -1, cpuUs: map[string]float64{}, kernelShare: map[string]float64{}, peakRSSMB: map[string]float64{}}
	for name, rss := range m.peakRSS {
		o.peakRSSMB[name] = mb(rss)
	}
	var total, atRP, atProvider []time.Duration
	for _, a := range m.attempts {
		if a.err != nil {
			if o.failures == nil {
				o.failures = map[string]int{}
			}
			o.failures[browser.Reason(a.err)]++
			continue
		}
		total = append(total, a.timing.Total)
		atRP = append(atRP, a.timing.AtRelyingParty)
		atProvider = append(atProvider, a.timing.AtProvider)
	}
	o.completed = len(total)
	o.total, o.atRP, o.atProvider = load.Summarize(total), load.Summarize(atRP), load.Summarize(atProvider)
	if secs := m.run.Ended.Sub(m.run.Began).Seconds(); secs > 0 {
		o.perSecond = float64(o.completed) / secs
	}
	if o.completed > 0 {
		for name, t := range m.cpu {
			o.cpuUs[name] = us(t.Total()) / float64(o.completed)
			if t.Total() > 0 {
				o.kernelShare[name] = float64(t.System) / float64(t.Total())
			}
		}
		if m.mallocs >= 0 {
			o.allocs = m.mallocs / float64(o.completed)
		}
	}
	return o
}

// emailLatency waits until the sink has the email of every successful
// sign-in, or ctx is done, and returns the times from each sign-in's start
// to its email and how many emails never arrived.
func emailLatency(ctx context.Context, attempts []attempt, sink *smtpsink.Remote) (*load.Summary, int, error) {
	pending := make(map[string]time.Time, len(attempts))
	for _, a := range attempts {
		if a.err == nil {
			pending[a.email] = a.timing.Start
		}
	}
	if len(pending) == 0 {
		return &load.Summary{}, 0, nil
	}
	var lat []time.Duration
	err := sink.Watch(ctx, func(r smtpsink.Receipt) bool {
		if t, ok := pending[r.Rcpt]; ok {
			lat = append(lat, r.At.Sub(t))
			delete(pending, r.Rcpt) // a duplicate email counts once
		}
		return len(pending) == 0
	})
	s := load.Summarize(lat)
	return &s, len(pending), err
}

// SMTPIndependence compares the gateway at one rate with a healthy sink and
// with one that takes SinkDelay per email.
type SMTPIndependence struct {
	Rate    float64   `json:"rate_per_second"`
	Healthy SignInRow `json:"healthy"`
	Slow    SignInRow `json:"slow"`
}

// smtpIndependence offers SlowSinkRate against a slow sink, and takes the
// healthy figures at the same rate from the latency phase (or measures
// them when that phase did not run that rate).
func (b *bench) smtpIndependence(ctx context.Context) error {
	rate := b.cfg.SlowSinkRate
	ind := &SMTPIndependence{Rate: rate}
	found := false
	for _, row := range b.res.Latency {
		if row.Offered == rate {
			ind.Healthy, found = row, true
		}
	}
	if !found {
		rows, err := b.signIns(ctx, "smtp-healthy", 0, []float64{rate}, false)
		if err != nil {
			return err
		}
		ind.Healthy = rows[0]
	}
	rows, err := b.signIns(ctx, "smtp-slow", b.cfg.SlowSinkDelay, []float64{rate}, false)
	if err != nil {
		return err
	}
	ind.Slow = rows[0]
	b.res.SMTP = ind
	return nil
}
