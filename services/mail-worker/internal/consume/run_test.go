package consume

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/doorbell/doorbell/services/mail-worker/internal/relay"
	"github.com/doorbell/doorbell/services/mail-worker/internal/smtpsend"
)

// failingConsumer fails every pull, as a consumer does while its NATS
// connection is down. Nothing else of jetstream.Consumer is used.
type failingConsumer struct {
	jetstream.Consumer
	pulls atomic.Int32
}

func (c *failingConsumer) Fetch(int, ...jetstream.FetchOpt) (jetstream.MessageBatch, error) {
	c.pulls.Add(1)
	return nil, errors.New("nats: connection closed")
}

// A pull that fails while the relay is on trial says nothing of the relay:
// the Gate stays on trial, relay_paused 1, rather than opening for every
// handler on the strength of a probe alone.
func TestAFailedPullDuringATrialDoesNotOpenTheGate(t *testing.T) {
	reg := prometheus.NewRegistry()
	gate, err := relay.New(func(context.Context) error { return nil }, relay.Config{ProbeBase: time.Millisecond}, reg,
		slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gate.Report(ctx, "", smtpsend.Classify(smtpsend.StageConnect, errors.New("connection refused")))

	cons := &failingConsumer{}
	cfg := Config{Concurrency: 4, FetchWait: 10 * time.Millisecond, ShutdownTimeout: time.Second}
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, cons, func(context.Context, jetstream.Msg) {}, gate, cfg, slog.New(slog.DiscardHandler))
	}()
	deadline := time.Now().Add(30 * time.Second)
	for cons.pulls.Load() < 2 { // a failed pull, its pause, and the next
		if time.Now().After(deadline) {
			t.Fatalf("%d pulls in 30 s", cons.pulls.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if p := relayPaused(t, reg); p != 1 {
		t.Errorf("relay_paused = %v after failed pulls on trial, want 1: the Gate opened without a trial email", p)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// relayPaused reads doorbell_mailworker_relay_paused from reg.
func relayPaused(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "doorbell_mailworker_relay_paused" {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("no doorbell_mailworker_relay_paused")
	return 0
}
