// Package natstest runs a real, embedded NATS server with JetStream for
// tests, and connects clients to it. It is for tests only.
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

// readyWait bounds the wait for the server to accept connections; the test
// machine is shared and slow at times.
const readyWait = 60 * time.Second

// Start runs a JetStream-enabled nats-server on a random loopback port, with
// its store in a temporary directory, and returns its client URL. The server
// shuts down when the test ends.
func Start(t testing.TB) string {
	t.Helper()
	return run(t, &server.Options{Port: server.RANDOM_PORT}).ClientURL()
}

// run starts a JetStream-enabled server with opts on loopback, its store in
// a temporary directory, and waits until it accepts connections. It shuts
// down when the test ends.
func run(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	opts.Host, opts.JetStream, opts.StoreDir, opts.NoLog, opts.NoSigs = "127.0.0.1", true, t.TempDir(), true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("natstest: new server: %v", err)
	}
	s.Start()
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	if !s.ReadyForConnections(readyWait) {
		t.Fatalf("natstest: nats-server %s not ready after %s", opts.ServerName, readyWait)
	}
	return s
}

// Connect connects to the server at url and returns the connection and a
// JetStream client on it. The connection is closed when the test ends,
// before any server the test started earlier shuts down.
func Connect(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("natstest: connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("natstest: jetstream: %v", err)
	}
	return nc, js
}

// JetStream starts a server as Start does and returns a JetStream client
// connected to it, for tests that need nothing else from the server.
func JetStream(t testing.TB) jetstream.JetStream {
	t.Helper()
	_, js := Connect(t, Start(t))
	return js
}

// StartCluster runs a JetStream cluster of n nats-servers on loopback, each
// with its store in a temporary directory, waits until it has elected a
// meta leader, and returns the client URLs joined by commas (a NATS_URL).
// The servers shut down when the test ends.
func StartCluster(t testing.TB, n int) string {
	t.Helper()
	routePorts := make([]int, n)
	for i := range routePorts {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("natstest: %v", err)
		}
		routePorts[i] = ln.Addr().(*net.TCPAddr).Port
		_ = ln.Close()
	}
	var routes []string
	for _, p := range routePorts {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	var urls []string
	for i := range n {
		s := run(t, &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Port:       server.RANDOM_PORT,
			Cluster:    server.ClusterOpts{Name: "natstest", Host: "127.0.0.1", Port: routePorts[i]},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
		})
		urls = append(urls, s.ClientURL())
	}
	url := strings.Join(urls, ",")
	nc, js := Connect(t, url)
	defer nc.Close()
	deadline := time.Now().Add(readyWait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			return url
		}
		if time.Now().After(deadline) {
			t.Fatalf("natstest: the JetStream cluster has no meta leader after %s: %v", readyWait, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
