package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/doorbell/doorbell/bench/internal/load"
	"github.com/doorbell/doorbell/bench/internal/machine"
)

// Results is everything one run found; it is written as JSON as it is.
type Results struct {
	Started    time.Time          `json:"started"`
	Seconds    float64            `json:"seconds"`
	Machine    machine.Host       `json:"machine"`
	Versions   machine.Versions   `json:"versions"`
	Settings   map[string]string  `json:"settings"`
	Method     []string           `json:"method"`
	Throughput []ThroughputRow    `json:"worker_throughput,omitempty"`
	Latency    []SignInRow        `json:"sign_in_to_email,omitempty"`
	SMTP       *SMTPIndependence  `json:"login_vs_slow_smtp,omitempty"`
	Cost       []CostRow          `json:"cost_per_sign_in,omitempty"`
	PeakRSS    map[string]PeakRSS `json:"peak_rss"`
	Targets    []Target           `json:"targets"`
	// SpeedMBps gauges the machine (SHA-256 on one core, otherwise idle)
	// before each phase and at the end: a shared host that slows down
	// shows here.
	SpeedMBps []Speed  `json:"cpu_speed_check"`
	Notes     []string `json:"notes,omitempty"`
}

func newResults(cfg Config, started time.Time) *Results {
	host, versions := machineVersions(cfg)
	return &Results{
		Started: started.UTC(), Machine: host, Versions: versions, Settings: cfg.Flags,
		PeakRSS: map[string]PeakRSS{},
		Method: []string{
			"provider: a minimal OIDC server inside the benchmark that signs ID tokens with ES256 (P-256), so that the provider is not the bottleneck",
			"browsers: a fresh cookie jar and fresh connections per sign-in, following start → provider authorize → callback, without rendering",
			fmt.Sprintf("NATS: embedded nats-server %s in a process of its own (this program re-executed); JetStream file storage without per-message fsync (the server's default)", server.VERSION),
			"SMTP: a discard sink in its own process; throughput runs from the first email it received to the last",
			"auth-gateway and mail-worker at LOG_LEVEL=warn; oauth2-proxy with its request, auth and standard logs off",
			fmt.Sprintf("everything on 127.0.0.1, sharing %d cores with the benchmark's own processes (harness: load generator and provider; NATS; sink)", host.Cores),
		},
	}
}

// PeakRSS is the highest peak RSS (VmHWM) a service reached, and in which
// phase.
type PeakRSS struct {
	MB    float64 `json:"mb"`
	Phase string  `json:"phase"`
}

// notePeakRSS keeps the highest peak RSS seen for service.
func (r *Results) notePeakRSS(service, phase string, bytes int64) {
	if v := mb(bytes); v > r.PeakRSS[service].MB {
		r.PeakRSS[service] = PeakRSS{MB: v, Phase: phase}
	}
}

// Speed is one reading of machine.SpeedMBps.
type Speed struct {
	Before string  `json:"before"`
	MBps   float64 `json:"sha256_mb_per_s"`
}

// Target is one of the targets next to the figure measured.
type Target struct {
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
}

// targets checks the figures against the targets for this machine. A miss
// is reported, never an error.
func targets(r *Results) []Target {
	var t []Target
	for _, row := range r.Throughput {
		t = append(t, Target{fmt.Sprintf("mail-worker ≥ 0.5× plain net/smtp (pool %d)", row.Pool),
			fmt.Sprintf("%.2f×", row.Ratio), row.Ratio >= 0.5})
	}
	for _, row := range r.Latency {
		if row.Offered == 500 && row.Email != nil {
			t = append(t, Target{"sign-in → email p99 ≤ 10 ms at 500 sign-ins/s",
				ms(row.Email.P99), row.Email.P99 <= 10*time.Millisecond && row.EmailMissing == 0})
		}
	}
	for _, row := range r.Cost {
		if row.Service == "auth-gateway" {
			cpu := row.CPUUs[row.Service]
			t = append(t, Target{fmt.Sprintf("auth-gateway ≤ 200 µs CPU per sign-in (%s)", row.Load),
				fmt.Sprintf("%.0f µs", cpu), cpu > 0 && cpu <= 200})
		}
	}
	t = append(t, rssTargets(r)...)
	if s := r.SMTP; s != nil {
		h, w := s.Healthy.AtGateway.P99, s.Slow.AtGateway.P99
		t = append(t, Target{fmt.Sprintf("gateway p99 unmoved by a %s/email sink (within 2× or 5 ms of healthy)", time.Duration(s.Slow.SinkDelayMs)*time.Millisecond),
			fmt.Sprintf("%s vs %s", ms(w), ms(h)), w > 0 && w <= max(2*h, h+5*time.Millisecond)})
	}
	return t
}

// rssTargets checks each service's peak RSS under the load of the SMTP
// phase (healthy and slow sink), or over the whole run without it.
func rssTargets(r *Results) []Target {
	var t []Target
	for _, name := range []string{"auth-gateway", "mail-worker"} {
		peak, where := 0.0, ""
		if s := r.SMTP; s != nil {
			peak = max(s.Healthy.PeakRSSMB[name], s.Slow.PeakRSSMB[name])
			where = fmt.Sprintf("%g sign-ins/s, healthy and slow sink", s.Rate)
		} else if v, ok := r.PeakRSS[name]; ok {
			peak, where = v.MB, v.Phase
		}
		if peak > 0 {
			t = append(t, Target{fmt.Sprintf("%s peak RSS ≤ 50 MB (%s)", name, where), fmt.Sprintf("%.1f MB", peak), peak <= 50})
		}
	}
	return t
}

// writeJSON writes r to dir/<UTC start time>.json and returns the path.
func writeJSON(dir string, started time.Time, r *Results) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, started.UTC().Format("20060102T150405Z")+".json")
	return path, os.WriteFile(path, append(b, '\n'), 0o644)
}

// printTable prints the figures for people: the same numbers as the JSON.
func printTable(out io.Writer, r *Results) {
	m := r.Machine
	fmt.Fprintf(out, "\nDoorbell end to end, %s, commit %s\n", r.Started.Format("2006-01-02 15:04 MST"), r.Versions.Commit)
	fmt.Fprintf(out, "Machine: %d cores, %s, %.1f GiB, Linux %s, %s\n", m.Cores, m.CPUModel, float64(m.MemoryMB)/1024, m.Kernel, r.Versions.Go)
	for _, line := range r.Method {
		fmt.Fprintf(out, "  - %s\n", line)
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	printThroughput(w, r.Throughput)
	printLatency(w, r.Latency, r.Settings["latency-pool"])
	printSMTP(w, r.SMTP)
	printCost(w, r.Cost)
	printVerdicts(w, r)
	w.Flush()
}

func printThroughput(w io.Writer, rows []ThroughputRow) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\nWorker throughput: events already in AUTH_EVENTS → mail-worker → sink, next to plain net/smtp with as many connections\n")
	fmt.Fprintf(w, "pool\tworker emails/s\tnet/smtp emails/s\tratio\tevery round\tJetStream only/s\tceiling\tworker CPU/email\tNATS CPU/email\tworker peak RSS\temail size\tdelivered\n")
	for _, row := range rows {
		rounds := make([]string, len(row.RoundRatios))
		for i, r := range row.RoundRatios {
			rounds[i] = fmt.Sprintf("%.2f", r)
		}
		fmt.Fprintf(w, "%d\t%.0f\t%.0f\t%.2f×\t%s\t%.0f\t%.2f×\t%.0f µs\t%.0f µs\t%.1f MB\t%d B\t%d/%d\n", row.Pool, row.WorkerPerSecond,
			row.NetSMTPPerSecond, row.Ratio, strings.Join(rounds, " "), row.JetStreamOnlyPerSecond, row.Ceiling, row.WorkerCPUPerEmailUs, row.NATSCPUPerEmailUs,
			row.WorkerPeakRSSMB, row.MeanBytes, row.Delivered, row.Events)
	}
	fmt.Fprintf(w, "(each row is the round with the median ratio; every round: the ratios of all rounds, in order;\n JetStream only: the worker's round trips per event, claim and ack, with as many handlers, with no rendering or SMTP;\n ceiling: that rate ÷ net/smtp, the ratio a worker with these guarantees could reach here at most)\n")
}

func printLatency(w io.Writer, rows []SignInRow, pool string) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\nSign-in → email: open loop, gateway → JetStream → mail-worker (SMTP_POOL_SIZE=%s) → sink\n", pool)
	fmt.Fprintf(w, "offered\tdone\tfailed\tskipped\temail p50\tp99\tp99.9\tmissing\tsign-in p99\tgateway p99\tgenerator lag p99\n")
	for _, row := range rows {
		e := load.Summary{}
		if row.Email != nil {
			e = *row.Email
		}
		fmt.Fprintf(w, "%g/s\t%d\t%d\t%d\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", row.Offered, row.Completed, failed(row.Failures), row.Skipped,
			ms(e.P50), ms(e.P99), ms(e.P999), row.EmailMissing, ms(row.SignIn.P99), ms(row.AtGateway.P99), ms(row.GeneratorLag.P99))
	}
	fmt.Fprintf(w, "\nCPU per sign-in by process in the same runs (harness: load generator and provider), and peak RSS\n")
	fmt.Fprintf(w, "offered\t%s\ttotal\tgateway allocs/sign-in\tgateway RSS\tworker RSS\n", strings.Join(stackProcesses, "\t"))
	for _, row := range rows {
		fmt.Fprintf(w, "%g/s\t%s\t%s\t%.1f MB\t%.1f MB\n", row.Offered, cpuColumns(row.CPUUs), allocs(row.GatewayAllocs),
			row.PeakRSSMB["auth-gateway"], row.PeakRSSMB["mail-worker"])
	}
}

func printSMTP(w io.Writer, s *SMTPIndependence) {
	if s == nil {
		return
	}
	fmt.Fprintf(w, "\nLogin latency does not depend on SMTP: %g sign-ins/s\n", s.Rate)
	fmt.Fprintf(w, "sink\tdone\tfailed\tskipped\tsign-in p50\tsign-in p99\tgateway p99\tgateway RSS\tworker RSS\n")
	for _, row := range []SignInRow{s.Healthy, s.Slow} {
		name := "healthy"
		if row.SinkDelayMs > 0 {
			name = fmt.Sprintf("%s per email", time.Duration(row.SinkDelayMs)*time.Millisecond)
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%s\t%s\t%s\t%.1f MB\t%.1f MB\n", name, row.Completed, failed(row.Failures), row.Skipped,
			ms(row.SignIn.P50), ms(row.SignIn.P99), ms(row.AtGateway.P99), row.PeakRSSMB["auth-gateway"], row.PeakRSSMB["mail-worker"])
	}
}

// printVerdicts prints the lifetime peaks, the targets and the notes.
func printVerdicts(w io.Writer, r *Results) {
	if len(r.PeakRSS) > 0 {
		var parts []string
		for _, name := range []string{"auth-gateway", "mail-worker", "oauth2-proxy"} {
			if v, ok := r.PeakRSS[name]; ok {
				parts = append(parts, fmt.Sprintf("%s %.1f MB (%s)", name, v.MB, v.Phase))
			}
		}
		fmt.Fprintf(w, "\nPeak RSS over each process's life (VmHWM), highest phase: %s\n", strings.Join(parts, ", "))
	}
	if len(r.Targets) > 0 {
		fmt.Fprintf(w, "\nTargets on this machine (ratios from one run; absolute figures are noisy)\n")
		for _, t := range r.Targets {
			mark := "pass"
			if !t.Met {
				mark = "MISS"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\n", t.Target, t.Measured, mark)
		}
	}
	if len(r.SpeedMBps) > 0 {
		var parts []string
		for _, s := range r.SpeedMBps {
			parts = append(parts, fmt.Sprintf("%s %.0f", s.Before, s.MBps))
		}
		fmt.Fprintf(w, "\nCPU speed check, SHA-256 MB/s on one idle core before each phase (a shared host that slows down shows here): %s\n",
			strings.Join(parts, ", "))
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

// printCost prints the gateway next to oauth2-proxy, load by load, with
// the ratios.
func printCost(w io.Writer, rows []CostRow) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\nCost per sign-in: auth-gateway next to oauth2-proxy, same provider, same browsers, one at a time\n")
	fmt.Fprintf(w, "load\tservice\tsign-ins/s\tCPU/sign-in\tin kernel\tallocs/sign-in\tadded p99\tprovider p99\tsign-in p99\tfailed\tpeak RSS\tNATS CPU\tharness CPU\n")
	byLoad := map[string][]CostRow{}
	var order []string
	for _, row := range rows {
		if _, ok := byLoad[row.Load]; !ok {
			order = append(order, row.Load)
		}
		byLoad[row.Load] = append(byLoad[row.Load], row)
	}
	for _, l := range order {
		var gw, op *CostRow
		for i, row := range byLoad[l] {
			fmt.Fprintf(w, "%s\t%s\t%.0f\t%.0f µs\t%.0f%%\t%s\t%s\t%s\t%s\t%d\t%.1f MB\t%s\t%.0f µs\n", l, row.Service, row.PerSecond, row.CPUUs[row.Service],
				100*row.KernelShare, allocs(row.Allocs), ms(row.AtService.P99), ms(row.AtProvider.P99), ms(row.SignIn.P99), failed(row.Failures),
				row.PeakRSSMB, microseconds(row.CPUUs["nats-server"]), row.CPUUs[harness])
			switch row.Service {
			case "auth-gateway":
				gw = &byLoad[l][i]
			case "oauth2-proxy":
				op = &byLoad[l][i]
			}
		}
		if gw != nil && op != nil {
			fmt.Fprintf(w, "%s\tgateway ÷ oauth2-proxy\t%s\t%s\t\t%s\t%s\t\t\t\t\t\t\n", l, ratio(gw.PerSecond, op.PerSecond),
				ratio(gw.CPUUs[gw.Service], op.CPUUs[op.Service]), ratio(gw.Allocs, op.Allocs),
				ratio(float64(gw.AtService.P99), float64(op.AtService.P99)))
		}
	}
}

// stackProcesses are the processes of a sign-in stack, in table order.
var stackProcesses = []string{"auth-gateway", "mail-worker", "nats-server", "smtp sink", harness}

// cpuColumns is the CPU per sign-in of each of stackProcesses and their
// total, tab-separated.
func cpuColumns(cpu map[string]float64) string {
	cols := make([]string, 0, len(stackProcesses)+1)
	total := 0.0
	for _, name := range stackProcesses {
		cols = append(cols, microseconds(cpu[name]))
		total += cpu[name]
	}
	return strings.Join(append(cols, microseconds(total)), "\t")
}

func microseconds(v float64) string {
	if v <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f µs", v)
}

func failed(f map[string]int) int {
	n := 0
	for _, v := range f {
		n += v
	}
	return n
}

func ms(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func allocs(v float64) string {
	if v < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.0f", v)
}

func ratio(a, b float64) string {
	if a <= 0 || b <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", a/b)
}
