package smtptest

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"
)

// A test that ends while a client is in the middle of STARTTLS stops the
// server cleanly: every session ends and nothing races. The SMTP library's
// own Server.Close reads each session's socket while STARTTLS swaps it for
// a TLS one, with no lock between the two. That window is the moment
// between the server reading the client's last handshake message and the
// handshake returning, so the server here asks for a client certificate
// and pauses while it checks it, after the client's whole last flight has
// arrived; the test ends during the pause. Run with -race against a server
// stopped by Server.Close, this test fails.
func TestAServerStopsWhileAClientStartsTLS(t *testing.T) {
	var session sync.WaitGroup
	t.Cleanup(session.Wait) // cleanups run last first: after the server stops
	srv := Start(t, Options{TLS: StartTLS})
	srv.mu.Lock() // before any session reads it
	srv.tlsCfg.ClientAuth = tls.RequireAnyClientCert
	srv.tlsCfg.SessionTicketsDisabled = true // nothing to write after the pause
	srv.tlsCfg.VerifyConnection = func(tls.ConnectionState) error {
		time.Sleep(100 * time.Millisecond)
		return nil
	}
	srv.mu.Unlock()

	conn := readyForTLS(t, srv)
	tc := tls.Client(conn, &tls.Config{ //nolint:gosec // a throwaway test certificate
		InsecureSkipVerify: true,
		Certificates:       srv.tlsCfg.Certificates,
		MaxVersion:         tls.VersionTLS13,
	})
	if err := tc.Handshake(); err != nil { // returns once its last flight is sent
		t.Fatal(err)
	}
	session.Go(func() {
		defer conn.Close()
		_, _ = io.Copy(io.Discard, tc) // hold the session until the server ends it
	})
}

// readyForTLS opens a session and sends STARTTLS, leaving the handshake to
// the caller.
func readyForTLS(t *testing.T, srv *Server) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", net.JoinHostPort(srv.Host, strconv.Itoa(srv.Port)))
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	readReply(t, r) // the greeting
	for _, cmd := range []string{"EHLO client", "STARTTLS"} {
		if _, err := c.Write([]byte(cmd + "\r\n")); err != nil {
			t.Fatal(err)
		}
		readReply(t, r)
	}
	return c
}

// readReply reads one SMTP reply, all its lines.
func readReply(t *testing.T, r *bufio.Reader) {
	t.Helper()
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading a reply: %v", err)
		}
		if len(line) < 4 || line[3] != '-' {
			return
		}
	}
}
