// Package natstest runs a real, embedded NATS server with JetStream for
// tests. It is for tests only.
package natstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

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
	opts := &server.Options{
		ServerName: "doorbell-test",
		Host:       "127.0.0.1",
		Port:       port,
		JetStream:  true,
		StoreDir:   storeDir,
		NoLog:      true,
		NoSigs:     true,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("natstest: new server: %v", err)
	}
	go s.Start()
	// Generous: the test machine is shared and slow.
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		t.Fatal("natstest: server not ready after 30s")
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}
