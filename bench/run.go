package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/doorbell/doorbell/bench/internal/browser"
	"github.com/doorbell/doorbell/bench/internal/idp"
	"github.com/doorbell/doorbell/bench/internal/launch"
	"github.com/doorbell/doorbell/bench/internal/machine"
	"github.com/doorbell/doorbell/bench/internal/proc"
	"github.com/doorbell/doorbell/bench/internal/smtpsink"
)

// clientID is the OIDC client both relying parties sign in as.
const clientID = "doorbell-bench"

// bench is one run: its settings, its scratch directory, the provider
// every sign-in goes through, and what it found.
type bench struct {
	cfg      Config
	dir      string
	self     string
	provider *idp.Provider
	client   launch.GatewaySettings // without NATSURL
	// transport is shared by every browser, or nil for fresh connections
	// per sign-in.
	transport http.RoundTripper
	res       *Results
	out       io.Writer
}

// run runs the chosen phases, then prints the table and writes the JSON.
func run(ctx context.Context, cfg Config, out io.Writer) (err error) {
	started := time.Now()
	dir, err := os.MkdirTemp("", "doorbell-bench-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil || cfg.Keep {
			fmt.Fprintf(out, "logs and NATS data kept in %s\n", dir)
			return
		}
		os.RemoveAll(dir)
	}()
	self, err := os.Executable()
	if err != nil {
		return err
	}

	provider, client, stopProvider, err := serveProvider()
	if err != nil {
		return err
	}
	defer stopProvider()
	if cfg.CPUProfile != "" {
		stopProfile, err := startProfile(cfg.CPUProfile)
		if err != nil {
			return err
		}
		defer stopProfile()
	}
	res := newResults(cfg, started)
	b := &bench{cfg: cfg, dir: dir, self: self, provider: provider, client: client, res: res, out: out}
	if cfg.SharedConnections {
		tr := browser.NewTransport()
		defer tr.CloseIdleConnections()
		b.transport = tr
	}
	fmt.Fprintf(out, "Doorbell end-to-end benchmark: %d cores, %s; phases %v\n", res.Machine.Cores, res.Machine.CPUModel, cfg.Phases)
	if err := b.phases(ctx); err != nil {
		return err
	}
	b.gauge("end")
	res.Seconds = time.Since(started).Seconds()
	res.Targets = targets(res)
	path, err := writeJSON(cfg.Out, started, res)
	if err != nil {
		return err
	}
	printTable(out, res)
	fmt.Fprintf(out, "\nResults: %s (the run took %s)\n", path, time.Since(started).Round(time.Second))
	return nil
}

// serveProvider serves the benchmark's OIDC provider on a free loopback
// port and returns it, the client settings of the relying parties, and a
// function that stops it.
func serveProvider() (*idp.Provider, launch.GatewaySettings, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, launch.GatewaySettings{}, nil, err
	}
	secret := make([]byte, 24)
	rand.Read(secret)
	client := launch.GatewaySettings{
		Issuer: "http://" + ln.Addr().String(), ClientID: clientID,
		ClientSecret: base64.RawURLEncoding.EncodeToString(secret),
	}
	provider, err := idp.New(idp.Config{Issuer: client.Issuer, ClientID: client.ClientID, ClientSecret: client.ClientSecret})
	if err != nil {
		ln.Close()
		return nil, client, nil, err
	}
	srv := &http.Server{Handler: provider.Handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	return provider, client, func() { srv.Close(); <-served }, nil
}

// startProfile writes this process's CPU profile to path until the
// returned function is called.
func startProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// gauge notes how fast the machine hashes now, before a phase starts.
func (b *bench) gauge(before string) {
	b.res.SpeedMBps = append(b.res.SpeedMBps, Speed{Before: before, MBps: machine.SpeedMBps()})
}

// phases runs each chosen phase in order.
func (b *bench) phases(ctx context.Context) error {
	if b.cfg.runs("throughput") {
		b.gauge("throughput")
		for _, pool := range b.cfg.Pools {
			row, err := b.throughput(ctx, pool)
			if err != nil {
				return fmt.Errorf("throughput, pool %d: %w", pool, err)
			}
			b.res.Throughput = append(b.res.Throughput, row)
		}
	}
	if b.cfg.runs("latency") {
		b.gauge("latency")
		rows, err := b.signIns(ctx, "latency", 0, b.cfg.Rates, true)
		if err != nil {
			return fmt.Errorf("latency: %w", err)
		}
		b.res.Latency = rows
	}
	if b.cfg.runs("smtp") {
		b.gauge("smtp")
		if err := b.smtpIndependence(ctx); err != nil {
			return fmt.Errorf("smtp independence: %w", err)
		}
	}
	if b.cfg.runs("cost") {
		b.gauge("cost")
		if err := b.cost(ctx); err != nil {
			return fmt.Errorf("cost: %w", err)
		}
	}
	return nil
}

// phaseDir makes a fresh directory for one phase's logs and NATS store.
func (b *bench) phaseDir(name string) (string, error) {
	dir := filepath.Join(b.dir, name)
	return dir, os.MkdirAll(dir, 0o700)
}

// progress prints one line about what is happening now.
func (b *bench) progress(format string, args ...any) {
	fmt.Fprintf(b.out, "==> "+format+"\n", args...)
}

// natsServer is an embedded NATS server running in a process of its own
// (this program re-executed as "bench nats"), so that its CPU time can be
// told apart from the load generator's.
type natsServer struct {
	*proc.Process
	URL string
}

// startNATS starts a NATS server with JetStream storing its files in
// dir/nats.
func (b *bench) startNATS(ctx context.Context, dir string) (*natsServer, error) {
	log, err := os.Create(filepath.Join(dir, "nats-server.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	p, url, rest, err := proc.StartAnnounced(ctx, proc.Spec{
		Name: "nats-server", Path: b.self, Args: []string{"nats", "-store", filepath.Join(dir, "nats")},
		Env: []string{"PATH=" + os.Getenv("PATH")}, Log: log,
	})
	if err != nil {
		return nil, err
	}
	go func() {
		for rest.Scan() {
		}
	}()
	return &natsServer{Process: p, URL: url}, nil
}

// startSink starts a discard SMTP sink process that waits delay before
// accepting each message.
func (b *bench) startSink(ctx context.Context, dir string, delay time.Duration) (*smtpsink.Remote, error) {
	log, err := os.Create(filepath.Join(dir, "sink.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	return smtpsink.StartRemote(ctx, proc.Spec{
		Name: "smtp sink", Path: b.self, Args: []string{"sink", "-delay", delay.String()},
		Env: []string{"PATH=" + os.Getenv("PATH")}, Log: log,
	})
}

// stop stops a service after noting its peak RSS in phase, and returns
// that peak (0 when it could not be read).
func (b *bench) stop(s *launch.Service, phase string) (peakRSS int64) {
	rss, err := s.PeakRSS()
	if err == nil {
		b.res.notePeakRSS(s.Name, phase, rss)
	}
	if err := s.Stop(10 * time.Second); err != nil {
		b.res.Notes = append(b.res.Notes, err.Error())
	}
	return rss
}

// timeoutNote records that a wait ended by its bound rather than by the
// work being done.
func (b *bench) timeoutNote(what string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		b.res.Notes = append(b.res.Notes, fmt.Sprintf("%s: %v", what, err))
		b.progress("%s: %v", what, err)
		return nil
	}
	return err
}

// machineVersions reads the machine and the versions of what is measured.
func machineVersions(cfg Config) (machine.Host, machine.Versions) {
	return machine.ReadHost(), machine.ReadVersions(cfg.Repo, map[string]string{
		"auth-gateway": cfg.Gateway, "mail-worker": cfg.Worker, "oauth2-proxy": cfg.OAuth2Proxy,
	})
}
