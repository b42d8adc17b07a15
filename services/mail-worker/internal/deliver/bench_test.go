package deliver

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/doorbell/doorbell/services/mail-worker/internal/consume"
)

// BenchmarkHandle measures the whole consume path per sign-in, draining a
// backlog as a worker does after a pause: pull from an embedded JetStream,
// claim the email in the person's record, render, send over a pool of 4
// connections to the test SMTP server, acknowledge.
//
// Besides the time per email it reports cpu-µs/email: the CPU of the
// whole process (worker, NATS server and SMTP server together) per email,
// which a shared, noisy machine disturbs far less than the time, and which
// bounds the rate on a machine whose cores they all share.
func BenchmarkHandle(b *testing.B) {
	h := newHarness(b, harnessOptions{concurrency: 4, noRun: true})
	var last uint64
	for i := range b.N {
		last = h.publish(person(i), person(i).EventId).Sequence
	}
	cfg := consume.Config{AckWait: 30 * time.Second, Concurrency: 16, Horizon: 24 * time.Hour,
		ShutdownTimeout: 10 * time.Second, FetchWait: 200 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cpu := processCPU()
	b.ResetTimer()
	go func() { done <- consume.Run(ctx, h.cons, h.handler.Handle, h.handler.Gate, cfg, h.handler.Log) }()
	h.smtp.WaitForMessages(b, b.N, waitLong*5)
	h.waitSettled(last)
	b.StopTimer()
	b.ReportMetric(float64((processCPU()-cpu).Microseconds())/float64(b.N), "cpu-µs/email")
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// processCPU is the CPU time this process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
