// Package natstest runs a real, embedded NATS server with JetStream for
// tests, alone or as a cluster. It is for tests only.
package natstest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// readyWait bounds the wait for a server to accept connections and for a
// cluster to elect its meta leader; the test machine is shared and slow at
// times.
const readyWait = 60 * time.Second

// Run starts a JetStream-enabled nats-server on a random loopback port, with
// its store in a temporary directory, and shuts it down when the test ends.
func Run(t testing.TB) *server.Server {
	t.Helper()
	return RunOn(t, server.RANDOM_PORT)
}

// RunOn is Run on a chosen loopback port, for tests that start NATS after
// the code under test began connecting to it.
func RunOn(t testing.TB, port int) *server.Server {
	t.Helper()
	return RunWithStore(t, port, t.TempDir())
}

// RunWithStore is RunOn with the JetStream store in storeDir, so that a
// test can stop the server and start it again with its streams intact.
func RunWithStore(t testing.TB, port int, storeDir string) *server.Server {
	t.Helper()
	return run(t, &server.Options{ServerName: "doorbell-test", Port: port, StoreDir: storeDir})
}

// RunWith is Run with the server's options changed by change first, for
// tests that need users and permissions.
func RunWith(t testing.TB, change func(*server.Options)) *server.Server {
	t.Helper()
	opts := &server.Options{ServerName: "doorbell-test", Port: server.RANDOM_PORT}
	change(opts)
	return run(t, opts)
}

// run starts a JetStream-enabled server with opts on loopback (its store in
// a temporary directory unless opts names one) and waits until it accepts
// connections. It shuts down when the test ends.
func run(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	opts.Host, opts.JetStream, opts.NoLog, opts.NoSigs = "127.0.0.1", true, true, true
	if opts.StoreDir == "" {
		opts.StoreDir = t.TempDir()
	}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("natstest: new server: %v", err)
	}
	go s.Start()
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	if !s.ReadyForConnections(readyWait) {
		t.Fatalf("natstest: nats-server %s not ready after %s", opts.ServerName, readyWait)
	}
	return s
}

// Cluster is a JetStream cluster of embedded servers on loopback, named
// n1, n2, ….
type Cluster struct {
	Servers []*server.Server
}

// URL is the servers' client URLs joined by commas, as NATS_URL takes them.
func (c *Cluster) URL() string {
	urls := make([]string, len(c.Servers))
	for i, s := range c.Servers {
		urls[i] = s.ClientURL()
	}
	return strings.Join(urls, ",")
}

// Server returns the cluster member called name, or nil.
func (c *Cluster) Server(name string) *server.Server {
	for _, s := range c.Servers {
		if s.Name() == name {
			return s
		}
	}
	return nil
}

// StartCluster runs a JetStream cluster of n nats-servers on loopback, each
// with its store in a temporary directory, and waits until it has elected a
// meta leader. The servers shut down when the test ends; a test may shut
// one down earlier to see the others carry on.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	routePorts := make([]int, n)
	routes := make([]string, n)
	for i := range routePorts {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("natstest: %v", err)
		}
		routePorts[i] = ln.Addr().(*net.TCPAddr).Port
		routes[i] = fmt.Sprintf("nats://127.0.0.1:%d", routePorts[i])
		_ = ln.Close()
	}
	c := &Cluster{}
	for i := range n {
		c.Servers = append(c.Servers, run(t, &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Port:       server.RANDOM_PORT,
			Cluster:    server.ClusterOpts{Name: "natstest", Host: "127.0.0.1", Port: routePorts[i]},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
		}))
	}
	nc, err := nats.Connect(c.URL())
	if err != nil {
		t.Fatalf("natstest: connect to the cluster: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	// The meta leader answers account info: once it does, streams can be
	// created.
	deadline := time.Now().Add(readyWait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("natstest: the JetStream cluster has no meta leader after %s: %v", readyWait, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
