package publish_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/doorbell/doorbell/platform/natstest"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/publish"
)

// streamReplicas returns the replica count AUTH_EVENTS has on the servers
// at url.
func streamReplicas(ctx context.Context, t *testing.T, url string) int {
	t.Helper()
	s, err := inspector(t, url).Stream(ctx, eventsv1.StreamAuthEvents)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	return s.CachedInfo().Config.Replicas
}

// TestStreamReplicasFitTheNATSServers: by default (auto) the stream the
// gateway creates has as many replicas as the NATS servers allow, up to
// three, and the log says what was chosen; an explicit count is used as
// given.
func TestStreamReplicasFitTheNATSServers(t *testing.T) {
	tests := []struct {
		name     string
		servers  int
		replicas int // the setting; 0 is auto
		want     int
		wantLog  string
	}{
		{"auto on a single server", 1, 0, 1, `replicas=1 replicas_setting=auto`},
		{"auto on a three-node cluster", 3, 0, 3, `replicas=3 replicas_setting=auto`},
		{"an explicit count on a three-node cluster", 3, 2, 2, `replicas=2 replicas_setting=2`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := natstest.Run(t).ClientURL()
			if tt.servers > 1 {
				url = natstest.StartCluster(t, tt.servers).URL()
			}
			h := newHarness(t, url, func(c *publish.Config) { c.Replicas = tt.replicas })
			ctx := testCtx(t)
			waitConnected(ctx, t, h)
			if _, err := h.pub.Publish(ctx, event("0190f0c2-0000-7000-8000-000000000601")); err != nil {
				t.Fatalf("Publish: %v", err)
			}
			if got := streamReplicas(ctx, t, url); got != tt.want {
				t.Errorf("AUTH_EVENTS has %d replicas, want %d", got, tt.want)
			}
			mustContain(t, h.logs.String(), `msg="stream created"`, tt.wantLog)
		})
	}
}

// TestAStreamTheGatewayMadeWithTooFewReplicasGrows: an AUTH_EVENTS an older
// gateway created with one replica on a cluster is raised to what the
// setting asks for; one an operator made is left as it is.
func TestAStreamTheGatewayMadeWithTooFewReplicasGrows(t *testing.T) {
	tests := []struct {
		name     string
		existing jetstream.StreamConfig
		want     int
		wantLog  string
	}{
		{"made by the gateway", publish.StreamConfig(1), 3, `msg="stream replicas raised" stream=AUTH_EVENTS from=1 replicas=3`},
		{"made by an operator", jetstream.StreamConfig{Name: eventsv1.StreamAuthEvents, Subjects: []string{"user.>"}, Replicas: 1},
			1, `msg="stream found, made by an operator: left as it is"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := natstest.StartCluster(t, 3)
			ctx := testCtx(t)
			if _, err := inspector(t, c.URL()).CreateStream(ctx, tt.existing); err != nil {
				t.Fatal(err)
			}
			h := newHarness(t, c.URL(), func(c *publish.Config) { c.Replicas = 0 })
			waitConnected(ctx, t, h)
			if err := h.pub.EnsureStream(ctx); err != nil {
				t.Fatalf("EnsureStream: %v", err)
			}
			if got := streamReplicas(ctx, t, c.URL()); got != tt.want {
				t.Errorf("AUTH_EVENTS has %d replicas after a start with auto, want %d", got, tt.want)
			}
			mustContain(t, h.logs.String(), tt.wantLog)
		})
	}
}

// TestPublishRidesThroughTheLossOfItsNATSServer: the NATS server the
// gateway is connected to, which also leads the stream, goes away while
// people sign in. Every publish waits for the reconnection and the new
// stream leader and succeeds, with no event stored twice.
func TestPublishRidesThroughTheLossOfItsNATSServer(t *testing.T) {
	c := natstest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	js := inspector(t, c.URL())
	s, err := js.CreateStream(ctx, publish.StreamConfig(3))
	if err != nil {
		t.Fatal(err)
	}
	var leader string
	waitFor(ctx, t, "the stream to elect a leader", func() bool {
		info, err := s.Info(ctx)
		if err == nil && info.Cluster != nil {
			leader = info.Cluster.Leader
		}
		return leader != ""
	})
	doomed := c.Server(leader)

	// The gateway knows only the doomed server's URL: it learns the others
	// from it, as behind a Kubernetes Service.
	h := newHarness(t, doomed.ClientURL(), func(c *publish.Config) { c.Replicas = 3 })
	waitConnected(ctx, t, h)
	if _, err := h.pub.Publish(ctx, event("0190f0c2-0000-7000-8000-000000000700")); err != nil {
		t.Fatalf("Publish before the loss: %v", err)
	}

	// People keep signing in while the server shuts down, and a little
	// after: some publishes are in flight when it goes, some start while the
	// client reconnects, some before the stream has a new leader.
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		doomed.Shutdown()
	}()
	const workers, after = 10, 3
	var mu sync.Mutex
	var published []string
	failed := 0
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i, left := 0, after; left > 0; i++ {
				select {
				case <-gone:
					left--
				default:
				}
				id := fmt.Sprintf("0190f0c2-0000-7000-8%03d-%012d", w, i)
				pctx, cancel := context.WithTimeout(ctx, 60*time.Second)
				_, err := h.pub.Publish(pctx, event(id))
				cancel()
				mu.Lock()
				if err != nil {
					failed++
					t.Errorf("sign-in %s: %v", id, err)
				} else {
					published = append(published, id)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if failed > 0 {
		t.Fatalf("%d of %d publishes failed while a NATS server was lost\n%s", failed, failed+len(published), h.logs)
	}

	var survivor string
	for _, srv := range c.Servers {
		if srv != doomed {
			survivor = srv.ClientURL()
		}
	}
	ids := eventIDs(t, streamMessages(ctx, t, inspector(t, survivor)))
	want := append(published, "0190f0c2-0000-7000-8000-000000000700")
	slices.Sort(ids)
	slices.Sort(want)
	if !slices.Equal(ids, want) {
		t.Errorf("stream holds %d events, want the %d published, each once", len(ids), len(want))
	}
}

func mustContain(t *testing.T, s string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(s, w) {
			t.Errorf("log lacks %q:\n%s", w, s)
		}
	}
}
