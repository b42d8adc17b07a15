package main

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/doorbell/doorbell/bench/internal/backlog"
	"github.com/doorbell/doorbell/bench/internal/floor"
	"github.com/doorbell/doorbell/bench/internal/launch"
	"github.com/doorbell/doorbell/bench/internal/plainsmtp"
	"github.com/doorbell/doorbell/bench/internal/proc"
	"github.com/doorbell/doorbell/bench/internal/smtpsink"
)

// ThroughputRow compares the mail-worker with plain net/smtp at one pool
// size, in the same run, against the same kind of sink.
type ThroughputRow struct {
	Pool   int `json:"pool"`
	Events int `json:"events"`
	// Delivered is how many emails the sink got from the worker in time.
	Delivered           int     `json:"delivered"`
	WorkerPerSecond     float64 `json:"worker_emails_per_second"`
	WorkerCPUPerEmailUs float64 `json:"worker_cpu_us_per_email"`
	// NATSCPUPerEmailUs is the NATS server's CPU per email: the worker's
	// fetches, acks and key-value reads and writes.
	NATSCPUPerEmailUs float64 `json:"nats_cpu_us_per_email"`
	WorkerPeakRSSMB   float64 `json:"worker_peak_rss_mb"`
	NetSMTPPerSecond  float64 `json:"net_smtp_emails_per_second"`
	// Ratio is WorkerPerSecond / NetSMTPPerSecond: the headline figure.
	Ratio float64 `json:"ratio"`
	// JetStreamOnlyPerSecond is the rate of the worker's JetStream round
	// trips alone (see package floor), with as many handlers as the worker
	// has: the most a worker with its guarantees can deliver here.
	JetStreamOnlyPerSecond float64 `json:"jetstream_only_per_second"`
	// Ceiling is JetStreamOnlyPerSecond / NetSMTPPerSecond: the ratio
	// the worker would have if rendering and SMTP cost nothing.
	Ceiling   float64 `json:"ceiling_ratio"`
	MeanBytes int     `json:"mean_email_bytes"`
	// RoundRatios are the ratios of every round, in the order they ran;
	// the row is the round with the median ratio.
	RoundRatios []float64 `json:"round_ratios,omitempty"`
}

// throughput measures pool in Config.Rounds rounds and returns the round
// with the median ratio, with every round's ratio. The worker and its
// yardstick are measured side by side in each round, so that a machine that
// slows down for a while moves both figures of a round.
func (b *bench) throughput(ctx context.Context, pool int) (ThroughputRow, error) {
	var rounds []ThroughputRow
	for round := range max(1, b.cfg.Rounds) {
		row, err := b.throughputRound(ctx, pool, round)
		if err != nil {
			return row, err
		}
		rounds = append(rounds, row)
	}
	return medianRound(rounds), nil
}

// medianRound returns the round with the median ratio (the higher of the
// two middle ones for an even count), with the ratios of all rounds in
// the order they ran.
func medianRound(rounds []ThroughputRow) ThroughputRow {
	ratios := make([]float64, len(rounds))
	for i, r := range rounds {
		ratios[i] = r.Ratio
	}
	sorted := slices.SortedStableFunc(slices.Values(rounds), func(a, b ThroughputRow) int { return cmp.Compare(a.Ratio, b.Ratio) })
	row := sorted[len(sorted)/2]
	row.RoundRatios = ratios
	return row
}

// throughputRound runs the worker over a backlog of events, then net/smtp
// over as many similar emails, each into a fresh sink, then the worker's
// JetStream round trips alone. Both rates run from the first email the sink
// received to the last.
func (b *bench) throughputRound(ctx context.Context, pool, round int) (ThroughputRow, error) {
	n := b.cfg.Events
	row := ThroughputRow{Pool: pool, Events: n}
	dir, err := b.phaseDir(fmt.Sprintf("throughput-pool-%d-round-%d", pool, round+1))
	if err != nil {
		return row, err
	}
	b.progress("throughput: %d events in AUTH_EVENTS → mail-worker (SMTP_POOL_SIZE=%d) → sink", n, pool)
	d, err := b.drainBacklog(ctx, dir, pool)
	if err != nil {
		return row, err
	}
	row.Delivered = len(d.receipts)
	row.WorkerPeakRSSMB = mb(d.workerRSS)
	if len(d.receipts) >= 2 {
		w := window(d.receipts)
		row.WorkerPerSecond = w.rate()
		row.MeanBytes = w.meanBytes
		// The samplers start once the worker is ready, perhaps after its
		// first emails: CPU is divided by the emails inside the span they
		// cover.
		from := later(w.first, d.worker.Started())
		if cnt := countBetween(d.receipts, from, w.last); cnt > 1 {
			row.WorkerCPUPerEmailUs = us(d.worker.Between(from, w.last)) / float64(cnt-1)
			row.NATSCPUPerEmailUs = us(d.nats.Between(from, w.last)) / float64(cnt-1)
		}
	}

	b.progress("throughput: %d emails over %d reused net/smtp connections → sink", n, pool)
	rate, err := b.netSMTP(ctx, dir, pool, n, max(row.MeanBytes, 1000))
	if err != nil {
		return row, err
	}
	row.NetSMTPPerSecond = rate

	handlers := max(workerMinHandlers, workerHandlersPerConnection*pool)
	b.progress("throughput: %d events through the worker's JetStream round trips alone (no SMTP), %d handlers", n, handlers)
	if row.JetStreamOnlyPerSecond, err = b.jetStreamOnly(ctx, filepath.Join(dir, "jetstream-only"), handlers); err != nil {
		return row, err
	}
	if rate > 0 {
		row.Ratio = row.WorkerPerSecond / rate
		row.Ceiling = row.JetStreamOnlyPerSecond / rate
	}
	return row, nil
}

// The mail-worker handles workerHandlersPerConnection messages at once per
// SMTP connection, and at least workerMinHandlers (its main.go: handlers).
const (
	workerHandlersPerConnection = 16
	workerMinHandlers           = 64
)

// jetStreamOnly fills AUTH_EVENTS on a fresh NATS server whose files go in
// dir and makes the worker's round trips for every event (package floor).
func (b *bench) jetStreamOnly(ctx context.Context, dir string, handlers int) (float64, error) {
	n := b.cfg.Events
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	ns, err := b.startNATS(ctx, dir)
	if err != nil {
		return 0, err
	}
	defer ns.Stop(5 * time.Second)
	if err := fill(ctx, ns.URL, n, func(i int) string { return fmt.Sprintf("js%d-%d@bench.localhost", handlers, i) }); err != nil {
		return 0, err
	}
	fctx, cancel := context.WithTimeout(ctx, b.cfg.ThroughputTimeout)
	defer cancel()
	return floor.Run(fctx, ns.URL, handlers, n)
}

// drained is what a worker did with a backlog.
type drained struct {
	receipts     []smtpsink.Receipt
	worker, nats *proc.Sampler
	workerRSS    int64
}

// drainBacklog fills AUTH_EVENTS on a fresh NATS server, starts a sink and
// the worker, and waits until the sink has every email or the phase's
// bound has passed.
func (b *bench) drainBacklog(ctx context.Context, dir string, pool int) (drained, error) {
	n := b.cfg.Events
	var d drained
	ns, err := b.startNATS(ctx, dir)
	if err != nil {
		return d, err
	}
	defer ns.Stop(5 * time.Second)
	if err := fill(ctx, ns.URL, n, func(i int) string { return fmt.Sprintf("tp%d-%d@bench.localhost", pool, i) }); err != nil {
		return d, err
	}
	sink, err := b.startSink(ctx, dir, 0)
	if err != nil {
		return d, err
	}
	defer sink.Stop()
	worker, err := launch.StartWorker(ctx, b.cfg.Worker, dir, launch.WorkerSettings{
		NATSURL: ns.URL, SMTPAddr: sink.Addr, PoolSize: pool,
	})
	if err != nil {
		return d, err
	}
	d.worker, d.nats = worker.Sample(20*time.Millisecond), ns.Sample(20*time.Millisecond)
	wctx, cancel := context.WithTimeout(ctx, b.cfg.ThroughputTimeout)
	err = b.timeoutNote(fmt.Sprintf("throughput pool %d", pool), sink.WaitFor(wctx, n))
	cancel()
	d.worker.Stop()
	d.nats.Stop()
	d.workerRSS = b.stop(worker, "throughput")
	d.receipts = sink.Receipts()
	return d, err
}

// fill puts n events into AUTH_EVENTS on the server at url.
func fill(ctx context.Context, url string, n int, email func(i int) string) error {
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	return backlog.Fill(ctx, js, n, email)
}

// netSMTP sends n emails of about size bytes over conns net/smtp
// connections into a fresh sink and returns the rate the sink saw.
func (b *bench) netSMTP(ctx context.Context, dir string, conns, n, size int) (float64, error) {
	sink, err := b.startSink(ctx, dir, 0)
	if err != nil {
		return 0, err
	}
	defer sink.Stop()
	const from = "doorbell@bench.localhost"
	err = plainsmtp.Send(ctx, sink.Addr, conns, n, func(i int) plainsmtp.Message {
		to := fmt.Sprintf("plain-%d@bench.localhost", i)
		return plainsmtp.Message{From: from, To: to, Data: plainsmtp.Compose(from, to, fmt.Sprintf("plain-%d", i), size)}
	})
	if err != nil {
		return 0, err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := sink.WaitFor(wctx, n); err != nil {
		return 0, err
	}
	return window(sink.Receipts()).rate(), nil
}

// span is the stretch of time in which a sink received a set of emails.
type span struct {
	first, last time.Time
	count       int
	meanBytes   int
}

func window(rs []smtpsink.Receipt) span {
	if len(rs) == 0 {
		return span{}
	}
	s := span{first: rs[0].At, last: rs[0].At, count: len(rs)}
	total := 0
	for _, r := range rs {
		if r.At.Before(s.first) {
			s.first = r.At
		}
		if r.At.After(s.last) {
			s.last = r.At
		}
		total += r.Size
	}
	s.meanBytes = total / len(rs)
	return s
}

// rate is emails per second from the first to the last: count-1 intervals.
func (s span) rate() float64 {
	d := s.last.Sub(s.first).Seconds()
	if s.count < 2 || d <= 0 {
		return 0
	}
	return float64(s.count-1) / d
}

func countBetween(rs []smtpsink.Receipt, from, to time.Time) int {
	n := 0
	for _, r := range rs {
		if !r.At.Before(from) && !r.At.After(to) {
			n++
		}
	}
	return n
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
func mb(bytes int64) float64     { return float64(bytes) / (1 << 20) }
