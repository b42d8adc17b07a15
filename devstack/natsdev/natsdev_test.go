package natsdev_test

import (
	"context"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/doorbell/doorbell/devstack/natsdev"
)

func start(t *testing.T, cfg natsdev.Config) *natsdev.Server {
	t.Helper()
	s, err := natsdev.Start(cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

func connect(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.Timeout(10*time.Second))
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

func port(t *testing.T, clientURL string) int {
	t.Helper()
	u, err := url.Parse(clientURL)
	if err != nil {
		t.Fatalf("parse %q: %v", clientURL, err)
	}
	p, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatalf("port of %q: %v", clientURL, err)
	}
	return p
}

func TestMessagesSurviveRestartOnSamePortAndStore(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	dir := t.TempDir()

	first, err := natsdev.Start(natsdev.Config{Host: "127.0.0.1", Port: -1, StoreDir: dir})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	url := first.ClientURL()
	if !strings.HasPrefix(url, "nats://127.0.0.1:") {
		first.Shutdown()
		t.Fatalf("ClientURL = %q, want nats://127.0.0.1:PORT", url)
	}
	js := connect(t, url)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "TEST", Subjects: []string{"test.>"}, Storage: jetstream.FileStorage,
	}); err != nil {
		first.Shutdown()
		t.Fatalf("create stream: %v", err)
	}
	if _, err := js.Publish(ctx, "test.one", []byte("kept")); err != nil {
		first.Shutdown()
		t.Fatalf("publish: %v", err)
	}
	first.Shutdown()
	first.Shutdown() // harmless

	if conn, err := net.Dial("tcp", strings.TrimPrefix(url, "nats://")); err == nil {
		conn.Close()
		t.Fatalf("server still accepts connections on %s after Shutdown", url)
	}

	second := start(t, natsdev.Config{Host: "127.0.0.1", Port: port(t, url), StoreDir: dir})
	if second.ClientURL() != url {
		t.Fatalf("restarted ClientURL = %q, want %q", second.ClientURL(), url)
	}
	js = connect(t, second.ClientURL())
	stream, err := js.Stream(ctx, "TEST")
	if err != nil {
		t.Fatalf("stream after restart: %v", err)
	}
	msg, err := stream.GetLastMsgForSubject(ctx, "test.one")
	if err != nil {
		t.Fatalf("message after restart: %v", err)
	}
	if string(msg.Data) != "kept" {
		t.Fatalf("message after restart = %q, want %q", msg.Data, "kept")
	}
}

func TestStartFails(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port

	tests := []struct {
		name    string
		cfg     natsdev.Config
		wantErr string
	}{
		{"when the port is in use", natsdev.Config{Host: "127.0.0.1", Port: takenPort, StoreDir: t.TempDir()}, "address already in use"},
		{"without a store dir", natsdev.Config{Host: "127.0.0.1", Port: -1}, "StoreDir is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := natsdev.Start(tt.cfg)
			if err == nil {
				s.Shutdown()
				t.Fatal("Start succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %q, want it to mention %q", err, tt.wantErr)
			}
		})
	}
}
