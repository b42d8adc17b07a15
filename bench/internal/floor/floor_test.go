package floor_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/doorbell/doorbell/bench/internal/backlog"
	"github.com/doorbell/doorbell/bench/internal/floor"
	"github.com/doorbell/doorbell/devstack/natsdev"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// Run takes every event once, acknowledged, and leaves one record per
// event: the round trips it times are the ones it claims to make.
func TestRunMakesEachEventsRoundTrips(t *testing.T) {
	ns, err := natsdev.Start(natsdev.Config{Host: "127.0.0.1", Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const n = 60
	if err := backlog.Fill(ctx, js, n, func(i int) string { return fmt.Sprintf("p%d@example.com", i) }); err != nil {
		t.Fatal(err)
	}

	rate, err := floor.Run(ctx, ns.ClientURL(), 3, n)
	if err != nil || rate <= 0 {
		t.Fatalf("Run = %v, %v", rate, err)
	}
	cons, err := js.Consumer(ctx, eventsv1.StreamAuthEvents, "bench_floor")
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.AckFloor.Stream != n || info.NumAckPending != 0 || info.NumPending != 0 {
		t.Errorf("consumer after Run: ack floor %d, ack pending %d, pending %d; want %d, 0, 0",
			info.AckFloor.Stream, info.NumAckPending, info.NumPending, n)
	}
	kv, err := js.KeyValue(ctx, "bench_floor")
	if err != nil {
		t.Fatal(err)
	}
	status, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if status.Values() != n {
		t.Errorf("bucket holds %d records, want %d", status.Values(), n)
	}
}
