// Command bench measures Doorbell end to end, from outside, as a new user
// would: the real auth-gateway and mail-worker binaries, an embedded NATS
// server with file storage, a minimal ES256 OIDC provider in this process,
// a discard SMTP sink in another process and oauth2-proxy for comparison,
// all on 127.0.0.1. `make bench` builds everything and runs it.
//
// It prints a table and writes the same figures, with the machine and the
// versions, as JSON to -out/<UTC time>.json. Targets are shown next to the
// figures with a pass/miss mark; a miss never fails the run (benchmarks
// never assert timings). Every phase is bounded in count and time.
//
// "bench sink [-delay D]" is the SMTP sink and "bench nats -store DIR" the
// NATS server; the benchmark starts both as processes of their own.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/doorbell/doorbell/bench/internal/proc"
	"github.com/doorbell/doorbell/bench/internal/smtpsink"
	"github.com/doorbell/doorbell/devstack/natsdev"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch {
	case len(os.Args) > 1 && os.Args[1] == "sink":
		err = runSink(ctx, os.Args[2:], os.Stdout)
	case len(os.Args) > 1 && os.Args[1] == "nats":
		err = runNATS(ctx, os.Args[2:], os.Stdout)
	default:
		var cfg Config
		if cfg, err = parseFlags(os.Args[1:], os.Stderr); err == nil {
			err = run(ctx, cfg, os.Stdout)
		}
	}
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// runSink is the SMTP sink process.
func runSink(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("bench sink", flag.ContinueOnError)
	delay := fs.Duration("delay", 0, "wait this long after each message before answering 250")
	if err := fs.Parse(args); err != nil {
		return err
	}
	return smtpsink.Run(ctx, out, *delay)
}

// runNATS is the NATS server process: an embedded nats-server with
// JetStream on a free loopback port, until ctx is done.
func runNATS(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("bench nats", flag.ContinueOnError)
	store := fs.String("store", "", "JetStream storage directory (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ns, err := natsdev.Start(natsdev.Config{Host: "127.0.0.1", Port: -1, StoreDir: *store})
	if err != nil {
		return err
	}
	defer ns.Shutdown()
	if err := proc.Announce(out, ns.ClientURL()); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// Config is what the flags choose.
type Config struct {
	Gateway     string
	Worker      string
	OAuth2Proxy string
	Repo        string
	Out         string
	Keep        bool
	Phases      []string
	// Flags is every flag's value as given or defaulted, for the record.
	Flags map[string]string

	Events            int
	Pools             []int
	Rounds            int
	ThroughputTimeout time.Duration

	Rates           []float64
	LatencyDuration time.Duration
	LatencyPool     int
	DrainTimeout    time.Duration
	MaxInFlight     int

	SlowSinkDelay time.Duration
	SlowSinkRate  float64

	CostRates       []float64
	CostDuration    time.Duration
	CeilingBrowsers int
	CeilingDuration time.Duration
	WarmupDuration  time.Duration
	// CPUProfile, when set, is where this process's CPU profile goes.
	CPUProfile string
	// SharedConnections lets every browser use one pool of kept-alive
	// connections, as behind a reverse proxy, instead of its own.
	SharedConnections bool
}

// allPhases are the phases in the order they run.
var allPhases = []string{"throughput", "latency", "smtp", "cost"}

func parseFlags(args []string, stderr io.Writer) (Config, error) {
	c := Config{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.Gateway, "gateway", "bin/auth-gateway", "auth-gateway binary")
	fs.StringVar(&c.Worker, "worker", "bin/mail-worker", "mail-worker binary")
	fs.StringVar(&c.OAuth2Proxy, "oauth2-proxy", "bin/oauth2-proxy", "oauth2-proxy binary")
	fs.StringVar(&c.Repo, "repo", ".", "the repository, for its git commit")
	fs.StringVar(&c.Out, "out", "bench/results", "directory of the JSON results")
	fs.BoolVar(&c.Keep, "keep", false, "keep the run directory (logs, NATS data) instead of deleting it")
	phases := fs.String("phases", strings.Join(allPhases, ","), "phases to run, comma-separated")

	fs.IntVar(&c.Events, "events", 10_000, "throughput: events (distinct people) in AUTH_EVENTS per run")
	pools := fs.String("pools", "4,16", "throughput: SMTP_POOL_SIZE values (and net/smtp connections)")
	fs.IntVar(&c.Rounds, "rounds", 3, "throughput: rounds per pool size; the round with the median ratio is reported")
	fs.DurationVar(&c.ThroughputTimeout, "throughput-timeout", 90*time.Second, "throughput: most time one run may take")

	rates := fs.String("rates", "100,500,1000", "latency: offered sign-ins per second")
	fs.DurationVar(&c.LatencyDuration, "latency-duration", 10*time.Second, "latency: how long each rate is offered")
	fs.IntVar(&c.LatencyPool, "latency-pool", 4, "latency: the worker's SMTP_POOL_SIZE")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 30*time.Second, "latency: how long to wait for the last emails of a rate")
	fs.IntVar(&c.MaxInFlight, "max-in-flight", 2000, "open loop: sign-ins in flight at most; the rest are skipped and counted")

	fs.DurationVar(&c.SlowSinkDelay, "slow-sink-delay", 2*time.Second, "smtp: the slow sink's delay per email")
	fs.Float64Var(&c.SlowSinkRate, "slow-sink-rate", 100, "smtp: sign-ins per second against the slow sink and a healthy one (a rate with headroom on the machine, so that only SMTP differs)")

	costRates := fs.String("cost-rates", "100,500", "cost: fixed sign-in rates per second")
	fs.DurationVar(&c.CostDuration, "cost-duration", 4*time.Second, "cost: how long each fixed rate is offered")
	fs.IntVar(&c.CeilingBrowsers, "ceiling-browsers", 32, "cost: browsers signing in back to back to find the ceiling")
	fs.DurationVar(&c.CeilingDuration, "ceiling-duration", 5*time.Second, "cost: how long the ceiling is measured")
	fs.DurationVar(&c.WarmupDuration, "warmup", 2*time.Second, "sign-ins at the same load before each measured run, not counted")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write the harness's own CPU profile (load generator and provider) to this file")
	fs.BoolVar(&c.SharedConnections, "shared-connections", false, "browsers share kept-alive connections (as behind a reverse proxy) instead of opening their own")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	c.Flags = map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { c.Flags[f.Name] = f.Value.String() })
	var errs []error
	for _, p := range splitList(*phases) {
		if !slices.Contains(allPhases, p) {
			errs = append(errs, fmt.Errorf("-phases: unknown phase %q (have %s)", p, strings.Join(allPhases, ",")))
		}
		c.Phases = append(c.Phases, p)
	}
	var err error
	if c.Pools, err = parseList(*pools, strconv.Atoi); err != nil {
		errs = append(errs, fmt.Errorf("-pools: %w", err))
	}
	parseRate := func(s string) (float64, error) { return strconv.ParseFloat(s, 64) }
	if c.Rates, err = parseList(*rates, parseRate); err != nil {
		errs = append(errs, fmt.Errorf("-rates: %w", err))
	}
	if c.CostRates, err = parseList(*costRates, parseRate); err != nil {
		errs = append(errs, fmt.Errorf("-cost-rates: %w", err))
	}
	if c.Events < 2 || c.Rounds < 1 || c.CeilingBrowsers < 1 || c.MaxInFlight < 1 || c.SlowSinkRate <= 0 {
		errs = append(errs, errors.New("-events must be at least 2, -rounds at least 1; -ceiling-browsers, -max-in-flight and -slow-sink-rate positive"))
	}
	return c, errors.Join(errs...)
}

// runs reports whether phase is among those chosen.
func (c Config) runs(phase string) bool { return slices.Contains(c.Phases, phase) }

func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// parseList parses a comma-separated list of positive numbers.
func parseList[T int | float64](s string, parse func(string) (T, error)) ([]T, error) {
	var out []T
	for _, f := range splitList(s) {
		v, err := parse(f)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, v)
	}
	return out, nil
}
