// Package natstest runs a real, embedded NATS server with JetStream for
// tests, alone, as a cluster or behind a proxy that can partition it, and
// connects clients to it. It is for tests only.
package natstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// readyWait bounds the wait for a server to accept connections and for a
// cluster to elect its meta leader; the test machine is shared and slow at
// times.
const readyWait = 60 * time.Second

// portRetry is the pause before a server that could not listen on its
// chosen port is started again (see run).
const portRetry = 200 * time.Millisecond

// Run starts a JetStream-enabled nats-server on a random loopback port, with
// its store in a temporary directory, and shuts it down when the test ends.
func Run(t testing.TB) *server.Server {
	t.Helper()
	return RunOn(t, server.RANDOM_PORT)
}

// Start is Run for tests that need only the server's client URL.
func Start(t testing.TB) string {
	t.Helper()
	return Run(t).ClientURL()
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
	deadline := time.Now().Add(readyWait)
	for {
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatalf("natstest: new server: %v", err)
		}
		fatal := make(fatalCatcher, 1)
		s.SetLogger(fatal, false, false)
		s.Start()
		why := waitReady(s, fatal, deadline)
		if why == "" {
			t.Cleanup(func() {
				s.Shutdown()
				s.WaitForShutdown()
			})
			return s
		}
		s.Shutdown()
		s.WaitForShutdown()
		if opts.Port <= 0 || time.Now().After(deadline) {
			t.Fatalf("natstest: nats-server %s: %s", opts.ServerName, why)
		}
		// A chosen port can be taken for a moment: a client dialling it
		// for the test may have got it as its own source port and
		// connected to itself, or another process's connection holds it.
		// Both let go soon.
		time.Sleep(portRetry)
	}
}

// waitReady waits until s accepts connections, and says why not when it
// reports a fatal error (a port it cannot listen on) or deadline passes.
func waitReady(s *server.Server, fatal fatalCatcher, deadline time.Time) string {
	for !s.ReadyForConnections(100 * time.Millisecond) {
		select {
		case why := <-fatal:
			return why
		default:
		}
		if time.Now().After(deadline) {
			return "not ready after " + readyWait.String()
		}
	}
	return ""
}

// fatalCatcher is a server.Logger that keeps only the first fatal error.
type fatalCatcher chan string

func (f fatalCatcher) Fatalf(format string, v ...any) {
	select {
	case f <- fmt.Sprintf(format, v...):
	default:
	}
}

func (fatalCatcher) Noticef(string, ...any) {}
func (fatalCatcher) Warnf(string, ...any)   {}
func (fatalCatcher) Errorf(string, ...any)  {}
func (fatalCatcher) Debugf(string, ...any)  {}
func (fatalCatcher) Tracef(string, ...any)  {}

// Connect connects to the server at url and returns the connection and a
// JetStream client on it. The connection is closed when the test ends,
// before any server the test started earlier shuts down.
func Connect(t testing.TB, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
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

// Server is a server a test can stop and start again, on the same port
// and with the same store, as a NATS outage or restart.
type Server struct {
	// URL is the client URL; it stays the same across restarts.
	URL  string
	t    testing.TB
	opts server.Options
	mu   sync.Mutex
	s    *server.Server // nil while stopped
}

// StartServer runs a JetStream-enabled server as Start does and returns it
// for Stop and Restart.
func StartServer(t testing.TB) *Server {
	t.Helper()
	opts := server.Options{ServerName: "doorbell-test", Port: server.RANDOM_PORT}
	s := run(t, &opts)
	srv := &Server{URL: s.ClientURL(), t: t, s: s, opts: opts}
	srv.opts.Port = s.Addr().(*net.TCPAddr).Port
	return srv
}

// Stop shuts the server down, as an outage.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.s != nil {
		s.s.Shutdown()
		s.s.WaitForShutdown()
		s.s = nil
	}
}

// Restart starts the server again after Stop, with its stored streams.
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.s != nil {
		return
	}
	opts := s.opts
	s.s = run(s.t, &opts)
}

// JetStream starts a server as Start does and returns a JetStream client
// connected to it, for tests that need nothing else from the server.
func JetStream(t testing.TB) jetstream.JetStream {
	t.Helper()
	_, js := Connect(t, Start(t))
	return js
}

// CreateAuthEvents creates AUTH_EVENTS with replicas copies, as the
// auth-gateway does (file storage, kept 7 days), standing in for the
// gateway in a test.
func CreateAuthEvents(t testing.TB, js jetstream.JetStream, replicas int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyWait)
	defer cancel()
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: eventsv1.StreamAuthEvents, Subjects: []string{eventsv1.StreamAuthEventsSubjects},
		Storage: jetstream.FileStorage, MaxAge: 7 * 24 * time.Hour, Replicas: replicas,
	}); err != nil {
		t.Fatalf("create %s: %v", eventsv1.StreamAuthEvents, err)
	}
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
	nc, js := Connect(t, c.URL())
	defer nc.Close()
	// The meta leader answers account info, and every server has caught up
	// with the meta group: then streams can be created and placed at once.
	deadline := time.Now().Add(readyWait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil && !slices.ContainsFunc(c.Servers, func(s *server.Server) bool { return !s.JetStreamIsCurrent() }) {
			return c
		}
		if err == nil {
			err = errors.New("a server has not caught up with the meta group")
		}
		if time.Now().After(deadline) {
			t.Fatalf("natstest: the JetStream cluster has no meta leader after %s: %v", readyWait, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Proxy forwards TCP connections to a NATS server and can cut them off
// without closing them, as a network partition does: bytes sent meanwhile
// are lost, not buffered, and neither side notices until the partition
// ends (then its connections are closed and clients reconnect).
type Proxy struct {
	// URL is the client URL to give the process under test.
	URL string

	target string
	ln     net.Listener
	mu     sync.Mutex
	cut    bool
	conns  []net.Conn
}

// StartProxy forwards a loopback port to the server at url until the test
// ends.
func StartProxy(t testing.TB, url string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("natstest: proxy: %v", err)
	}
	p := &Proxy{URL: "nats://" + ln.Addr().String(), target: strings.TrimPrefix(url, "nats://"), ln: ln}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { p.forward(c) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		p.closeAll()
		wg.Wait()
	})
	return p
}

// Partition drops every byte in both directions from now on.
func (p *Proxy) Partition() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
}

// Heal ends the partition: the connections that lived through it are
// closed (their streams lost bytes), and new ones are forwarded.
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
	p.closeAll()
}

func (p *Proxy) closeAll() {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

func (p *Proxy) forward(client net.Conn) {
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		_ = client.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, client, server)
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(server, client) })
	wg.Go(func() { p.pipe(client, server) })
	wg.Wait()
}

// pipe copies from src to dst, dropping what arrives while partitioned.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer func() {
		_ = dst.Close()
		_ = src.Close()
	}()
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			cut := p.cut
			p.mu.Unlock()
			if !cut {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}
