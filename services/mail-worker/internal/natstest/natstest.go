// Package natstest runs a real, embedded NATS server with JetStream for
// tests, and connects clients to it. It is for tests only.
package natstest

import (
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
	s, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      server.RANDOM_PORT,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	})
	if err != nil {
		t.Fatalf("natstest: new server: %v", err)
	}
	s.Start()
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	if !s.ReadyForConnections(readyWait) {
		t.Fatalf("natstest: nats-server not ready after %s", readyWait)
	}
	return s.ClientURL()
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
