// Package smtptest runs a small, real SMTP server on loopback for tests: it
// records what it accepts, can offer or require STARTTLS or speak implicit
// TLS with a certificate made on the spot, can require AUTH (PLAIN, LOGIN,
// CRAM-MD5, XOAUTH2), and can be told to fail: refuse connections, answer
// a reply code at the greeting, MAIL FROM, RCPT TO or the end of data,
// reject one recipient for good, stall, be slow, or drop the connection in
// the middle of the message data.
//
// It is for tests only; nothing in the service imports it.
package smtptest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/mail"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

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
	// Username and Password, when set, make the server offer AUTH and
	// refuse mail from sessions that did not authenticate with them.
	Username, Password string
	// AuthMechanisms are the mechanisms offered when Username is set
	// (PLAIN, LOGIN, CRAM-MD5, XOAUTH2); PLAIN alone when empty.
	AuthMechanisms []string
	// OAuth2Token is the bearer token XOAUTH2 accepts for Username.
	OAuth2Token string
	// Transcript keeps every byte clients send, for Server.Transcript.
	Transcript bool
}

// Stage names where a scripted failure answers.
type Stage string

// Stages at which FailNextAt can answer.
const (
	AtGreeting  Stage = "greeting"    // instead of the 220; the connection is then closed
	AtMail      Stage = "mail"        // MAIL FROM
	AtRcpt      Stage = "rcpt"        // RCPT TO
	AtEndOfData Stage = "end of data" // the reply to the final "."; nothing is recorded
)

// Message is one message the server accepted.
type Message struct {
	From string
	To   []string
	Data []byte
	TLS  bool   // the session was encrypted
	Auth string // the AUTH mechanism the session used, or ""
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

// MessageID returns the Message-Id header, or "" when there is none or the
// message is malformed.
func (m Message) MessageID() string {
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		return ""
	}
	return msg.Header.Get("Message-Id")
}

// failure is a scripted reply for the next times occasions.
type failure struct {
	times int
	err   *smtp.SMTPError
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

	opts    Options
	srv     *smtp.Server
	tlsCfg  *tls.Config
	serving sync.WaitGroup
	closing chan struct{} // closed when the test ends

	mu          sync.Mutex
	ln          net.Listener // nil while refusing
	refusing    bool
	closed      bool // the test ended; accept nothing more
	messages    []Message
	connections int
	active      int
	maxActive   int
	open        []net.Conn
	fail        map[Stage]*failure
	rejected    map[string]*smtp.SMTPError
	dropMidData int
	dropFor     map[string]bool
	stallRcpt   map[string]time.Duration
	stallLeft   int
	stallFor    time.Duration
	delay       time.Duration
	replyDelay  time.Duration
	changed     chan struct{} // closed and replaced on every new message
	transcript  bytes.Buffer  // what clients sent, as read off the socket
}

// Start runs a server until the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s := &Server{
		Host: "127.0.0.1", opts: opts, changed: make(chan struct{}), closing: make(chan struct{}),
		fail: make(map[Stage]*failure), rejected: make(map[string]*smtp.SMTPError), dropFor: make(map[string]bool),
		stallRcpt: make(map[string]time.Duration),
	}
	be := smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &session{srv: s, conn: c}, nil
	})
	srv := smtp.NewServer(be)
	srv.Domain = "smtptest.localhost"
	srv.ReadTimeout = time.Minute
	srv.WriteTimeout = time.Minute
	srv.ErrorLog = log.New(io.Discard, "", 0)
	srv.AllowInsecureAuth = true
	s.srv = srv
	if opts.TLS != NoTLS {
		cfg, caFile := selfSigned(t)
		s.CAFile = caFile
		s.tlsCfg = cfg
		if opts.TLS != Implicit {
			srv.TLSConfig = cfg
		}
	}
	if err := s.listen("127.0.0.1:0"); err != nil {
		t.Fatalf("smtptest: listen: %v", err)
	}
	t.Cleanup(s.close)
	return s
}

// close stops the server and waits until every session has ended. It
// closes the sockets itself rather than calling smtp.Server.Close, which
// races with a session swapping its socket for TLS in STARTTLS.
func (s *Server) close() {
	close(s.closing)
	s.mu.Lock()
	s.closed = true
	if s.ln != nil {
		// Serve may not have registered the listener yet, in which case
		// Shutdown would not close it.
		_ = s.ln.Close()
	}
	s.mu.Unlock()
	s.DropConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx) // closes the listeners and waits for the sessions
	s.serving.Wait()
}

// listen starts serving on addr.
func (s *Server) listen(addr string) error {
	raw, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.Port = raw.Addr().(*net.TCPAddr).Port
	var ln net.Listener = &countingListener{Listener: raw, srv: s}
	if s.opts.TLS == Implicit {
		ln = tls.NewListener(ln, s.tlsCfg)
	}
	s.mu.Lock()
	s.ln = ln
	s.refusing = false
	s.mu.Unlock()
	s.serving.Go(func() { _ = s.srv.Serve(ln) })
	return nil
}

// Refuse stops listening, so that new connections are refused, like a relay
// that is down. Sessions already open finish the transaction they are in;
// their next MAIL FROM is answered 421.
func (s *Server) Refuse() {
	s.mu.Lock()
	ln := s.ln
	s.ln, s.refusing = nil, true
	s.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
}

// Accept listens again on the same port after Refuse.
func (s *Server) Accept(t testing.TB) {
	t.Helper()
	if err := s.listen(net.JoinHostPort(s.Host, strconv.Itoa(s.Port))); err != nil {
		t.Fatalf("smtptest: listen again: %v", err)
	}
}

// FailNext makes the server answer code (for example 451 or 550) to RCPT TO
// for the next n messages.
func (s *Server) FailNext(n, code int) { s.FailNextAt(AtRcpt, n, code, "") }

// FailNextAt makes the server answer code with the enhanced status code
// enhanced ("5.7.1"; the code's class with ".0.0" when empty) at stage, the
// next n times that stage is reached.
func (s *Server) FailNextAt(stage Stage, n, code int, enhanced string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail[stage] = &failure{times: n, err: reply(code, enhanced, "scripted failure "+strconv.Itoa(code))}
}

// RejectRecipient makes the server answer code (with enhanced, see
// FailNextAt) to RCPT TO for addr, every time; code 0 lifts it.
func (s *Server) RejectRecipient(addr string, code int, enhanced string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if code == 0 {
		delete(s.rejected, addr)
		return
	}
	s.rejected[addr] = reply(code, enhanced, "recipient <"+addr+"> rejected")
}

// DropNextMidData makes the server read only the start of the next n
// messages' data and then close the connection without a reply; the
// messages are not recorded.
func (s *Server) DropNextMidData(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropMidData = n
}

// DropMidDataFor makes the server drop the connection in the middle of the
// data of every message to addr, as a relay whose content filter crashes
// on one message does.
func (s *Server) DropMidDataFor(addr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropFor[addr] = true
}

// StallNext makes the server leave the next n MAIL FROM commands without an
// answer for d (or until the test ends).
func (s *Server) StallNext(n int, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stallLeft, s.stallFor = n, d
}

// StallFor makes the server leave every RCPT TO for addr without an answer
// for d (or until the test ends), as a relay that hangs on one recipient.
func (s *Server) StallFor(addr string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stallRcpt[addr] = d
}

// SetDelay makes the server wait d after each message's data before it
// records the message and answers, like a slow relay.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// SetReplyDelay makes the server record each message as soon as its data
// has arrived and only then wait d before it answers the final ".", as a
// relay whose content filter scans stored messages does. A client that
// gives up before the reply has delivered the message all the same.
func (s *Server) SetReplyDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replyDelay = d
}

// Messages returns a copy of the accepted messages, oldest first.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// CountByMessageID returns how often each Message-Id was accepted.
func (s *Server) CountByMessageID() map[string]int {
	counts := make(map[string]int)
	for _, m := range s.Messages() {
		counts[m.MessageID()]++
	}
	return counts
}

// Connections returns how many TCP connections the server has accepted.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connections
}

// Active returns how many connections are open now.
func (s *Server) Active() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active
}

// MaxActive returns the most connections that were open at once.
func (s *Server) MaxActive() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxActive
}

// DropConnections closes every connection the server accepted so far,
// without a goodbye, as a relay does when it times out idle clients.
func (s *Server) DropConnections() {
	s.mu.Lock()
	open := s.open
	s.open = nil
	s.mu.Unlock()
	for _, c := range open {
		_ = c.Close()
	}
}

// WaitForMessages waits until the server holds at least n messages and
// returns them; the test fails after timeout.
func (s *Server) WaitForMessages(t testing.TB, n int, timeout time.Duration) []Message {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		got, changed := len(s.messages), s.changed
		s.mu.Unlock()
		if got >= n {
			return s.Messages()
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("smtptest: got %d messages after %s, want %d", got, timeout, n)
			return nil
		}
	}
}

// WaitForMessageIDs waits until n distinct Message-Ids were accepted and
// returns the counts by Message-Id; the test fails after timeout.
func (s *Server) WaitForMessageIDs(t testing.TB, n int, timeout time.Duration) map[string]int {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		changed := s.changed
		s.mu.Unlock()
		counts := s.CountByMessageID()
		if len(counts) >= n {
			return counts
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("smtptest: got %d distinct messages after %s, want %d", len(counts), timeout, n)
			return nil
		}
	}
}

// takeFailure consumes one scripted failure at stage, if any is left.
func (s *Server) takeFailure(stage Stage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fail[stage]
	if f == nil || f.times <= 0 {
		return nil
	}
	f.times--
	return f.err
}

func (s *Server) record(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages = append(s.messages, m)
	close(s.changed)
	s.changed = make(chan struct{})
}

// reply builds an SMTP error reply.
func reply(code int, enhanced, text string) *smtp.SMTPError {
	enh := smtp.EnhancedCode{code / 100, 0, 0}
	if enhanced != "" {
		parts := strings.Split(enhanced, ".")
		if len(parts) == 3 {
			for i, p := range parts {
				enh[i], _ = strconv.Atoi(p)
			}
		}
	}
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: text}
}

type countingListener struct {
	net.Listener
	srv *Server
}

func (l *countingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if err := l.srv.takeFailure(AtGreeting); err != nil {
			var se *smtp.SMTPError
			errors.As(err, &se)
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = fmt.Fprintf(c, "%d %d.%d.%d %s\r\n", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
			_ = c.Close()
			continue
		}
		l.srv.mu.Lock()
		if l.srv.closed {
			l.srv.mu.Unlock()
			_ = c.Close()
			return nil, net.ErrClosed
		}
		l.srv.connections++
		l.srv.active++
		l.srv.maxActive = max(l.srv.maxActive, l.srv.active)
		cc := &countingConn{Conn: c, srv: l.srv}
		l.srv.open = append(l.srv.open, cc)
		l.srv.mu.Unlock()
		return cc, nil
	}
}

// countingConn keeps Server.active right.
type countingConn struct {
	net.Conn
	srv  *Server
	once sync.Once
}

// Read keeps what the client sends for Transcript, when asked to.
func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.srv.opts.Transcript {
		c.srv.mu.Lock()
		c.srv.transcript.Write(p[:n])
		c.srv.mu.Unlock()
	}
	return n, err
}

// Transcript is every byte clients sent to the server (with
// Options.Transcript), as read off the socket: readable SMTP commands for NoTLS, ciphertext after a TLS
// handshake. The SMTP library behind this server accepts envelope
// addresses without angle brackets, which strict relays refuse; tests read
// the commands here to hold the client to RFC 5321.
func (s *Server) Transcript() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.transcript.String()
}

func (c *countingConn) Close() error {
	c.once.Do(func() {
		c.srv.mu.Lock()
		c.srv.active--
		c.srv.mu.Unlock()
	})
	return c.Conn.Close()
}

type session struct {
	srv    *Server
	conn   *smtp.Conn
	authed string // mechanism, once authenticated
	from   string
	to     []string
}

var _ smtp.AuthSession = (*session)(nil)

func (s *session) encrypted() bool {
	_, ok := s.conn.TLSConnectionState()
	return ok
}

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	s.srv.mu.Lock()
	refusing := s.srv.refusing
	stall := s.srv.stallLeft > 0
	if stall {
		s.srv.stallLeft--
	}
	stallFor := s.srv.stallFor
	s.srv.mu.Unlock()
	if refusing {
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service shutting down"}
	}
	if stall {
		select {
		case <-time.After(stallFor):
		case <-s.srv.closing:
		}
	}
	if s.srv.opts.TLS == RequireStartTLS && !s.encrypted() {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Must issue a STARTTLS command first"}
	}
	if s.srv.opts.Username != "" && s.authed == "" {
		return smtp.ErrAuthRequired
	}
	if err := s.srv.takeFailure(AtMail); err != nil {
		return err
	}
	s.from = from
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.srv.mu.Lock()
	rejected, stall := s.srv.rejected[to], s.srv.stallRcpt[to]
	s.srv.mu.Unlock()
	if stall > 0 {
		select {
		case <-time.After(stall):
		case <-s.srv.closing:
		}
	}
	if rejected != nil {
		return rejected
	}
	if err := s.srv.takeFailure(AtRcpt); err != nil {
		return err
	}
	s.to = append(s.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	s.srv.mu.Lock()
	drop := s.srv.dropMidData > 0
	if drop {
		s.srv.dropMidData--
	}
	for _, to := range s.to {
		drop = drop || s.srv.dropFor[to]
	}
	delay, replyDelay := s.srv.delay, s.srv.replyDelay
	s.srv.mu.Unlock()
	if drop {
		_, _ = io.ReadFull(r, make([]byte, 64))
		_ = s.conn.Conn().Close()
		return errors.New("connection dropped mid-data")
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-s.srv.closing:
		}
	}
	if err := s.srv.takeFailure(AtEndOfData); err != nil {
		return err
	}
	s.srv.record(Message{From: s.from, To: s.to, Data: b, TLS: s.encrypted(), Auth: s.authed})
	if replyDelay > 0 {
		select {
		case <-time.After(replyDelay):
		case <-s.srv.closing:
		}
	}
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
