// Package smtpsend delivers rendered emails over SMTP with go-mail.
//
// A Sender keeps one long-lived SMTP connection and reuses it for every
// email, one at a time; it dials again after any failure and closes the
// connection when it has been idle for a while. Send returns only after the
// server accepted the message data, and classifies every failure once as
// transient or permanent (see ErrTransient, ErrPermanent).
package smtpsend

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	netmail "net/mail"
	"os"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/wneessen/go-mail"
	"github.com/wneessen/go-mail/smtp"
)

// TLSMode says how the connection to the relay is encrypted.
type TLSMode string

const (
	// TLSMandatory requires STARTTLS; a server that does not offer it is
	// not used.
	TLSMandatory TLSMode = "mandatory"
	// TLSOpportunistic uses STARTTLS when offered, plain text otherwise.
	TLSOpportunistic TLSMode = "opportunistic"
	// TLSImplicit speaks TLS from the first byte (usually port 465).
	TLSImplicit TLSMode = "implicit"
	// TLSNone never encrypts. Only for a relay on the same host.
	TLSNone TLSMode = "none"
)

// DefaultIdleTimeout is how long an unused connection stays open.
const DefaultIdleTimeout = 30 * time.Second

// Config describes the relay and the sender address.
type Config struct {
	Host string
	Port int
	// Username enables SMTP AUTH (mechanism discovered from the server's
	// offer) when not empty.
	Username, Password string
	TLS                TLSMode
	// CAFile optionally names a PEM file of roots trusted in addition to
	// the system's. Certificates are always verified, against Host.
	CAFile string
	// Timeout bounds dialling (TCP, greeting, TLS, AUTH) and, separately,
	// the transfer of one email.
	Timeout time.Duration
	// From is the From header, e.g. "Doorbell <doorbell@example.com>". Its
	// domain also ends every Message-ID.
	From string
	// IdleTimeout closes the connection after this long without a send;
	// DefaultIdleTimeout when zero.
	IdleTimeout time.Duration
	// HELO is the name given in EHLO; the host name when empty.
	HELO string
}

// Message is one email to send.
type Message struct {
	// EventID identifies the sign-in; the Message-ID is derived from it, so
	// a retried email keeps its Message-ID. It must be a valid Message-ID
	// left part (letters, digits, '-', '.', '_').
	EventID string
	ToName  string // display name; may be empty; untrusted
	ToAddr  string // a bare address, e.g. ann@example.com
	Subject string
	Text    string
	HTML    string
}

// Receipt describes an accepted email.
type Receipt struct {
	MessageID  string // with angle brackets
	AcceptedAt time.Time
}

// Sender sends emails over one reused connection. It is safe for concurrent
// use; sends are serialised.
type Sender struct {
	cfg     Config
	client  *mail.Client
	from    *netmail.Address
	domain  string
	log     *slog.Logger
	metrics *Metrics

	mu       sync.Mutex // guards everything below, and the connection's use
	conn     *smtp.Client
	dialed   net.Conn // the last TCP connection dialled, closed if the session setup fails
	lastUsed time.Time
	idle     *time.Timer
	closed   bool

	statusMu sync.Mutex
	status   error // nil when the last check or send reached the server
}

// ErrNotChecked is the Status before the first check or send.
var ErrNotChecked = errors.New("smtp not checked yet")

// New builds a Sender. It does not connect; see Check.
func New(cfg Config, metrics *Metrics, log *slog.Logger) (*Sender, error) {
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.Timeout <= 0 {
		return nil, errors.New("smtpsend: timeout must be positive")
	}
	from, err := netmail.ParseAddress(cfg.From)
	if err != nil {
		return nil, fmt.Errorf("smtpsend: from address %q: %w", cfg.From, err)
	}
	domain := from.Address[strings.LastIndexByte(from.Address, '@')+1:]

	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if cfg.CAFile != "" {
		pemBytes, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("smtpsend: read CA file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("smtpsend: CA file %s holds no PEM certificate", cfg.CAFile)
		}
	}

	s := &Sender{cfg: cfg, from: from, domain: domain, log: log, metrics: metrics, status: ErrNotChecked}
	opts := []mail.Option{
		mail.WithPort(cfg.Port),
		mail.WithTimeout(cfg.Timeout),
		mail.WithTLSConfig(&tls.Config{
			RootCAs:    roots,
			ServerName: cfg.Host,
			MinVersion: tls.VersionTLS12,
		}),
	}
	switch cfg.TLS {
	case TLSMandatory:
		opts = append(opts, mail.WithTLSPolicy(mail.TLSMandatory))
	case TLSOpportunistic:
		opts = append(opts, mail.WithTLSPolicy(mail.TLSOpportunistic))
	case TLSNone:
		opts = append(opts, mail.WithTLSPolicy(mail.NoTLS))
	case TLSImplicit:
		opts = append(opts, mail.WithSSL())
	default:
		return nil, fmt.Errorf("smtpsend: unknown TLS mode %q", cfg.TLS)
	}
	if cfg.TLS != TLSImplicit {
		// go-mail leaves the socket open when the session setup after the
		// TCP dial fails (no STARTTLS, bad certificate, AUTH refused); this
		// dialer remembers it so that Sender can close it. With implicit
		// TLS go-mail must dial itself, or it would not know the session is
		// encrypted and would refuse PLAIN/LOGIN authentication.
		opts = append(opts, mail.WithDialContextFunc(s.dialTCP))
	}
	if cfg.HELO != "" {
		opts = append(opts, mail.WithHELO(cfg.HELO))
	}
	if cfg.Username != "" {
		opts = append(opts,
			mail.WithSMTPAuth(mail.SMTPAuthAutoDiscover),
			mail.WithUsername(cfg.Username),
			mail.WithPassword(cfg.Password))
	}
	client, err := mail.NewClient(cfg.Host, opts...)
	if err != nil {
		return nil, fmt.Errorf("smtpsend: %w", err)
	}
	s.client = client
	return s, nil
}

// dialTCP is go-mail's dialer; it runs with s.mu held.
func (s *Sender) dialTCP(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err == nil {
		s.dialed = c
	}
	return c, err
}

// Addr describes the relay for logs: host, port and TLS mode.
func (s *Sender) Addr() string {
	return fmt.Sprintf("%s:%d (tls=%s)", s.cfg.Host, s.cfg.Port, s.cfg.TLS)
}

// Check opens a session with the relay (TCP, greeting, TLS, AUTH) and closes
// it again. It updates Status. A failure is a *Error.
func (s *Sender) Check(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return dialError(ErrClosed)
	}
	sc, err := s.dial(ctx)
	if err != nil {
		s.setStatus(err)
		return err
	}
	s.hangUp(sc)
	s.setStatus(nil)
	return nil
}

// Status returns nil when the last check or send reached the relay and it
// answered, ErrNotChecked before the first, else the last transient failure.
// A permanent refusal of one email does not make the relay unhealthy.
func (s *Sender) Status() error {
	s.statusMu.Lock()
	defer s.statusMu.Unlock()
	return s.status
}

func (s *Sender) setStatus(err error) {
	s.statusMu.Lock()
	defer s.statusMu.Unlock()
	s.status = err
}

// Send hands m to the relay and returns once the relay accepted it. A failure
// is a *Error matching ErrTransient or ErrPermanent. ctx bounds dialling; the
// transfer itself is bounded by Config.Timeout.
func (s *Sender) Send(ctx context.Context, m Message) (Receipt, error) {
	msg, err := s.build(m)
	if err != nil {
		s.metrics.attempts.WithLabelValues(OutcomePermanent).Inc()
		return Receipt{}, err
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	start := time.Now()
	err = s.send(ctx, msg)
	s.metrics.duration.Observe(time.Since(start).Seconds())

	var classified *Error
	switch {
	case err == nil:
		now := time.Now()
		s.metrics.attempts.WithLabelValues(OutcomeSuccess).Inc()
		s.metrics.lastSuccess.Set(float64(now.UnixNano()) / 1e9)
		s.setStatus(nil)
		s.touch(now)
		return Receipt{MessageID: msg.GetMessageID(), AcceptedAt: now}, nil
	case errors.As(err, &classified) && !classified.Transient:
		s.metrics.attempts.WithLabelValues(OutcomePermanent).Inc()
		s.setStatus(nil) // the relay answered
	default:
		s.metrics.attempts.WithLabelValues(OutcomeTransient).Inc()
		s.setStatus(err)
	}
	return Receipt{}, err
}

// send runs with s.mu held. It returns nil once the server accepted msg.
func (s *Sender) send(ctx context.Context, msg *mail.Msg) error {
	if s.closed {
		return dialError(ErrClosed)
	}
	reused := s.conn != nil
	if !reused {
		sc, err := s.dial(ctx)
		if err != nil {
			return err
		}
		s.conn = sc
	}
	err := s.client.SendWithSMTPClient(s.conn, msg)
	var se *mail.SendError
	if err != nil && reused && errors.As(err, &se) && se.Reason == mail.ErrConnCheck {
		// The idle connection went stale (the server timed it out, a proxy
		// dropped it). Nothing was sent on it: dial once more right away.
		s.log.DebugContext(ctx, "smtp connection went stale; redialling", "error", err)
		s.drop(false)
		sc, dErr := s.dial(ctx)
		if dErr != nil {
			return dErr
		}
		s.conn = sc
		err = s.client.SendWithSMTPClient(s.conn, msg)
	}
	if err == nil {
		return nil
	}
	// On any failure the connection is not trusted again. No QUIT: a
	// server that stopped answering would hold us for another Timeout.
	s.drop(false)
	if msg.IsDelivered() {
		// Only the RSET after the accepted DATA failed.
		return nil
	}
	return sendError(err)
}

// dial opens a session; it runs with s.mu held.
func (s *Sender) dial(ctx context.Context) (*smtp.Client, error) {
	s.dialed = nil
	sc, err := s.client.DialToSMTPClientWithContext(ctx)
	if err != nil {
		if s.dialed != nil {
			_ = s.dialed.Close()
		}
		s.dialed = nil
		return nil, dialError(err)
	}
	s.dialed = nil
	s.metrics.connections.Inc()
	return sc, nil
}

// drop closes the current connection, if any, saying QUIT first when
// graceful; it runs with s.mu held.
func (s *Sender) drop(graceful bool) {
	if s.conn == nil {
		return
	}
	if graceful {
		s.hangUp(s.conn)
	} else {
		_ = s.conn.Close()
		s.metrics.connections.Dec()
	}
	s.conn = nil
}

// hangUp says QUIT and closes sc; it runs with s.mu held.
func (s *Sender) hangUp(sc *smtp.Client) {
	_ = sc.UpdateDeadline(s.cfg.Timeout)
	if err := s.client.CloseWithSMTPClient(sc); err != nil {
		_ = sc.Close()
	}
	s.metrics.connections.Dec()
}

// touch records a use and arms the idle timer; it runs with s.mu held.
func (s *Sender) touch(now time.Time) {
	s.lastUsed = now
	if s.idle == nil {
		s.idle = time.AfterFunc(s.cfg.IdleTimeout, s.closeIfIdle)
		return
	}
	s.idle.Reset(s.cfg.IdleTimeout)
}

func (s *Sender) closeIfIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil || s.closed {
		return
	}
	if left := s.cfg.IdleTimeout - time.Since(s.lastUsed); left > 0 {
		s.idle.Reset(left)
		return
	}
	s.log.Debug("closing idle smtp connection", "idle_for", time.Since(s.lastUsed).Round(time.Second).String())
	s.drop(true)
}

// Close says QUIT on the open connection, if any, and makes later sends fail
// with ErrClosed. It waits for a send in progress.
func (s *Sender) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.idle != nil {
		s.idle.Stop()
	}
	s.drop(true)
	return nil
}

// build turns m into a go-mail message.
func (s *Sender) build(m Message) (*mail.Msg, error) {
	if !validEventID(m.EventID) {
		return nil, buildError(fmt.Errorf("event id %q cannot be part of a Message-ID", m.EventID))
	}
	to, err := netmail.ParseAddress(m.ToAddr)
	if err != nil || to.Address != strings.TrimSpace(m.ToAddr) {
		return nil, buildError(errors.New("recipient is not a bare email address"))
	}
	to.Name = displayName(m.ToName)

	msg := mail.NewMsg(mail.WithNoDefaultUserAgent())
	msg.FromMailAddress(s.from)
	msg.ToMailAddress(to)
	msg.Subject(m.Subject)
	msg.SetDate()
	msg.SetMessageIDWithValue(m.EventID + "@" + s.domain)
	msg.SetGenHeader("X-Doorbell-Event-Id", m.EventID)
	msg.SetGenHeader("Auto-Submitted", "auto-generated")
	msg.SetGenHeader(mail.HeaderXAutoResponseSuppress, "All")
	msg.SetBodyString(mail.TypeTextPlain, m.Text)
	msg.AddAlternativeString(mail.TypeTextHTML, m.HTML)
	return msg, nil
}

// validEventID accepts what may stand left of the "@" in a Message-ID and in
// a header without quoting: UUIDs and similar ids.
func validEventID(id string) bool {
	if id == "" || len(id) > 128 || id[0] == '.' || id[len(id)-1] == '.' || strings.Contains(id, "..") {
		return false
	}
	for _, r := range id {
		if !(r < unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '.' || r == '_')) {
			return false
		}
	}
	return true
}

// displayName drops control and format characters from an untrusted name
// and bounds its length; net/mail quotes or encodes what remains.
func displayName(name string) string {
	name = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == '\u2028' || r == '\u2029' {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(name, ""))
	name = strings.Join(strings.Fields(name), " ")
	if r := []rune(name); len(r) > 100 {
		name = string(r[:100])
	}
	return name
}
