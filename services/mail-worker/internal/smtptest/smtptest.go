// Package smtptest runs a small, real SMTP server on loopback for tests: it
// records what it accepts, can offer or require STARTTLS or speak implicit
// TLS with a certificate made on the spot, can require AUTH PLAIN, and can be
// told to refuse the next messages with a given reply code.
//
// It is for tests only; nothing in the service imports it.
package smtptest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/mail"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// TLS selects how the server offers TLS.
type TLS int

const (
	// NoTLS offers no STARTTLS.
	NoTLS TLS = iota
	// StartTLS offers STARTTLS but accepts mail without it.
	StartTLS
	// RequireStartTLS offers STARTTLS and refuses MAIL FROM before it.
	RequireStartTLS
	// Implicit speaks TLS from the first byte (like port 465).
	Implicit
)

// Options configure a Server.
type Options struct {
	TLS TLS
	// Username and Password, when set, make the server offer AUTH PLAIN and
	// refuse mail from sessions that did not authenticate with them.
	Username, Password string
}

// Message is one message the server accepted.
type Message struct {
	From string
	To   []string
	Data []byte
	TLS  bool // the session was encrypted
}

// Header parses the message's header; it fails the test on a malformed one.
func (m Message) Header(t testing.TB) mail.Header {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatalf("smtptest: malformed message: %v\n%s", err, m.Data)
	}
	return msg.Header
}

// Server is a running test SMTP server. Its methods are safe for concurrent
// use.
type Server struct {
	// Host and Port are where it listens (always 127.0.0.1).
	Host string
	Port int
	// CAFile is a PEM file holding the server's self-signed certificate,
	// usable as SMTP_CA_FILE; empty for NoTLS.
	CAFile string

	opts Options

	mu          sync.Mutex
	messages    []Message
	connections int
	open        []net.Conn
	failCode    int
	failLeft    int
	changed     chan struct{} // closed and replaced on every new message
}

// Start runs a server until the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s := &Server{Host: "127.0.0.1", opts: opts, changed: make(chan struct{})}

	be := smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &session{srv: s, conn: c}, nil
	})
	srv := smtp.NewServer(be)
	srv.Domain = "smtptest.localhost"
	srv.ReadTimeout = time.Minute
	srv.WriteTimeout = time.Minute
	srv.ErrorLog = log.New(io.Discard, "", 0)
	srv.AllowInsecureAuth = true

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("smtptest: listen: %v", err)
	}
	if opts.TLS != NoTLS {
		cfg, caFile := selfSigned(t)
		s.CAFile = caFile
		if opts.TLS == Implicit {
			ln = tls.NewListener(ln, cfg)
		} else {
			srv.TLSConfig = cfg
		}
	}
	s.Port = ln.Addr().(*net.TCPAddr).Port
	ln = &countingListener{Listener: ln, srv: s}

	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		// Serve may not have registered the listener with srv yet, in
		// which case srv.Close did not close it.
		_ = ln.Close()
		<-done
	})
	return s
}

// FailNext makes the server answer code (for example 451 or 550) to RCPT TO
// for the next n messages.
func (s *Server) FailNext(n, code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failLeft, s.failCode = n, code
}

// Messages returns a copy of the accepted messages, oldest first.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// Connections returns how many TCP connections the server has accepted.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connections
}

// DropConnections closes every connection the server accepted so far,
// without a goodbye, as a relay does when it times out idle clients.
func (s *Server) DropConnections() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.open {
		_ = c.Close()
	}
	s.open = nil
}

// WaitForMessages waits until the server holds at least n messages and
// returns them; the test fails after timeout.
func (s *Server) WaitForMessages(t testing.TB, n int, timeout time.Duration) []Message {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		msgs, changed := append([]Message(nil), s.messages...), s.changed
		s.mu.Unlock()
		if len(msgs) >= n {
			return msgs
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("smtptest: got %d messages after %s, want %d", len(msgs), timeout, n)
			return nil
		}
	}
}

// takeFailure consumes one scripted failure, if any is left.
func (s *Server) takeFailure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failLeft <= 0 {
		return nil
	}
	s.failLeft--
	enh := smtp.EnhancedCode{4, 0, 0}
	if s.failCode >= 500 {
		enh = smtp.EnhancedCode{5, 0, 0}
	}
	return &smtp.SMTPError{Code: s.failCode, EnhancedCode: enh, Message: "scripted failure " + strconv.Itoa(s.failCode)}
}

func (s *Server) record(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages = append(s.messages, m)
	close(s.changed)
	s.changed = make(chan struct{})
}

type countingListener struct {
	net.Listener
	srv *Server
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.srv.mu.Lock()
		l.srv.connections++
		l.srv.open = append(l.srv.open, c)
		l.srv.mu.Unlock()
	}
	return c, err
}

type session struct {
	srv    *Server
	conn   *smtp.Conn
	authed bool
	from   string
	to     []string
}

var _ smtp.AuthSession = (*session)(nil)

func (s *session) AuthMechanisms() []string {
	if s.srv.opts.Username == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	if mech != sasl.Plain {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if username != s.srv.opts.Username || password != s.srv.opts.Password {
			return smtp.ErrAuthFailed
		}
		s.authed = true
		return nil
	}), nil
}

func (s *session) encrypted() bool {
	_, ok := s.conn.TLSConnectionState()
	return ok
}

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	if s.srv.opts.TLS == RequireStartTLS && !s.encrypted() {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Must issue a STARTTLS command first"}
	}
	if s.srv.opts.Username != "" && !s.authed {
		return smtp.ErrAuthRequired
	}
	s.from = from
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if err := s.srv.takeFailure(); err != nil {
		return err
	}
	s.to = append(s.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.srv.record(Message{From: s.from, To: s.to, Data: b, TLS: s.encrypted()})
	return nil
}

func (s *session) Reset() {
	s.from, s.to = "", nil
}

func (s *session) Logout() error { return nil }

// selfSigned makes a certificate for 127.0.0.1 and localhost and writes it
// to a PEM file in the test's temporary folder.
func selfSigned(t testing.TB) (*tls.Config, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("smtptest: key: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "smtptest"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("smtptest: certificate: %v", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatalf("smtptest: key: %v", err)
	}
	pair, err := tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		t.Fatalf("smtptest: key pair: %v", err)
	}
	caFile := filepath.Join(t.TempDir(), "smtptest-ca.pem")
	if err := os.WriteFile(caFile, certPEM, 0o600); err != nil {
		t.Fatalf("smtptest: %v", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, caFile
}

// ClosedPort returns a loopback port nothing listens on, for testing
// "connection refused".
func ClosedPort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("smtptest: %v", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		t.Fatalf("smtptest: %v", err)
	}
	return port
}
