// Package smtpsend delivers rendered emails over SMTP.
//
// A Sender keeps a bounded pool of long-lived SMTP connections and reuses
// them across emails, so that up to Config.PoolSize emails travel at once.
// A connection is replaced after a broken connection or a 421, and closed
// once it has been idle for Config.IdleTimeout. Emails are built with the
// standard library's MIME encoders (message.go); the SMTP session is
// driven with go-mail's smtp client directly, so that every failure is
// known with its stage and cause and classified once (see Classify,
// ErrTransient, ErrPermanent, ErrRelay, ErrConfig, ErrMaybeSent).
//
// Send returns only after the server accepted the message data. It sends
// no NOOP before reusing a connection; a pooled connection found dead at
// MAIL FROM is replaced and the email tried once more on a fresh one. With
// a relay that offers PIPELINING, an email waiting for a busy connection
// has its commands sent behind the end-of-data mark of the one before
// (sendQueued).
package smtpsend

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	netmail "net/mail"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/doorbell/doorbell/platform/telemetry"
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

// Defaults for zero Config fields.
const (
	DefaultPoolSize    = 4
	DefaultIdleTimeout = 30 * time.Second
	// DefaultFinalTimeout is RFC 5321's minimum for the reply to the
	// final ".".
	DefaultFinalTimeout = 10 * time.Minute
)

// Config describes the relay, the pool and the sender address.
type Config struct {
	Host string
	Port int
	// Username enables SMTP AUTH when not empty; Auth picks the mechanism
	// (AuthAuto when empty). Password is the secret for PLAIN, LOGIN and
	// CRAM-MD5; XOAUTH2 reads its token from OAuth2TokenFile on every
	// connect instead.
	Username, Password string
	Auth               AuthMode
	OAuth2TokenFile    string
	TLS                TLSMode
	// CAFile optionally names a PEM file of roots trusted in addition to
	// the system's. Certificates are always verified, against Host.
	CAFile string
	// Timeout bounds opening a session (TCP, greeting, TLS, AUTH) and,
	// separately, one email's transaction up to the last byte of its final
	// ".": everything that cannot have delivered it.
	Timeout time.Duration
	// FinalTimeout bounds the wait for the reply to the final "." of an
	// email, which the server may send only after scanning a message it
	// already stored; RFC 5321 4.5.3.2.6 asks for 10 minutes.
	// DefaultFinalTimeout when zero.
	FinalTimeout time.Duration
	// From is the From header, e.g. "Doorbell <doorbell@example.com>". Its
	// domain also ends every Message-ID.
	From string
	// PoolSize bounds the connections open at once, and so the emails in
	// flight; DefaultPoolSize when zero.
	PoolSize int
	// IdleTimeout closes a connection after this long without a send;
	// DefaultIdleTimeout when zero. Keep it below the relay's own idle
	// timeout (commonly 60–300 s).
	IdleTimeout time.Duration
	// RateLimit caps emails per second for this Sender (a token bucket);
	// 0 means no limit.
	RateLimit float64
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
	// Lang is the BCP 47 tag of the language the email is written in
	// (Content-Language); none when empty.
	Lang string
}

// Receipt describes an accepted email.
type Receipt struct {
	MessageID  string // with angle brackets
	AcceptedAt time.Time
}

// Sender sends emails over a pool of reused connections. It is safe for
// concurrent use; at most Config.PoolSize emails are in flight, further
// callers wait for a connection.
type Sender struct {
	cfg     Config
	from    *netmail.Address
	domain  string
	helo    string
	tls     *tls.Config
	limiter *rate.Limiter // nil: no limit
	log     *slog.Logger
	metrics *Metrics
	pool    *pool

	statusMu sync.Mutex
	status   error // nil when the last check or send reached the relay
}

// ErrNotChecked is the Status before the first check or send.
var ErrNotChecked = errors.New("smtp not checked yet")

// New builds a Sender. It does not connect; see Check.
func New(cfg Config, metrics *Metrics, log *slog.Logger) (*Sender, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	from, err := netmail.ParseAddress(cfg.From)
	if err != nil {
		return nil, fmt.Errorf("smtpsend: from address %q: %w", cfg.From, err)
	}
	roots, err := cfg.roots()
	if err != nil {
		return nil, err
	}
	s := &Sender{
		cfg:     cfg,
		from:    from,
		domain:  from.Address[strings.LastIndexByte(from.Address, '@')+1:],
		helo:    cfg.hello(),
		tls:     &tls.Config{RootCAs: roots, ServerName: cfg.Host, MinVersion: tls.VersionTLS12},
		log:     log,
		metrics: metrics,
		status:  ErrNotChecked,
	}
	if cfg.RateLimit > 0 {
		s.limiter = rate.NewLimiter(rate.Limit(cfg.RateLimit), max(1, int(cfg.RateLimit)))
	}
	s.pool = newPool(cfg.PoolSize, s.sendQueued, cfg.IdleTimeout, metrics, log)
	return s, nil
}

// withDefaults fills in the zero fields that have a default.
func (cfg Config) withDefaults() Config {
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.PoolSize <= 0 {
		cfg.PoolSize = DefaultPoolSize
	}
	if cfg.Auth == "" {
		cfg.Auth = AuthAuto
	}
	if cfg.FinalTimeout <= 0 {
		cfg.FinalTimeout = DefaultFinalTimeout
	}
	return cfg
}

// validate checks the settings New cannot default.
func (cfg Config) validate() error {
	if cfg.Timeout <= 0 {
		return errors.New("smtpsend: timeout must be positive")
	}
	switch cfg.TLS {
	case TLSMandatory, TLSOpportunistic, TLSImplicit, TLSNone:
	default:
		return fmt.Errorf("smtpsend: unknown TLS mode %q", cfg.TLS)
	}
	switch cfg.Auth {
	case AuthAuto, AuthPlain, AuthLogin, AuthCRAMMD5:
	case AuthXOAUTH2:
		if cfg.OAuth2TokenFile == "" {
			return errors.New("smtpsend: XOAUTH2 needs a token file")
		}
	default:
		return fmt.Errorf("smtpsend: unknown AUTH mode %q", cfg.Auth)
	}
	if cfg.RateLimit < 0 {
		return errors.New("smtpsend: rate limit must not be negative")
	}
	return nil
}

// roots are the certificate authorities the relay's certificate is
// checked against: the system's, and CAFile's.
func (cfg Config) roots() (*x509.CertPool, error) {
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
	return roots, nil
}

// hello is the name given in EHLO: HELO, else the host's name.
func (cfg Config) hello() string {
	if cfg.HELO != "" {
		return cfg.HELO
	}
	if name, err := os.Hostname(); err == nil && name != "" {
		return name
	}
	return "localhost"
}

// Addr describes the relay for logs: host, port and TLS mode.
func (s *Sender) Addr() string {
	return fmt.Sprintf("%s:%d (tls=%s)", s.cfg.Host, s.cfg.Port, s.cfg.TLS)
}

// PoolSize is the most emails this Sender has in flight at once.
func (s *Sender) PoolSize() int { return s.cfg.PoolSize }

// Check opens a session with the relay (TCP, greeting, TLS, AUTH), asks it
// to accept mail from the sender address (MAIL FROM, then RSET, so nothing
// is sent) and closes the session. It is the start-up check and the probe
// while the relay is down. It updates Status. A failure is a *Error.
func (s *Sender) Check(ctx context.Context) error {
	var e *Error
	if err := s.pool.do(ctx, func(c *conn) *conn {
		e = s.check(ctx)
		return c
	}); err != nil {
		return Classify(StageConnect, err)
	}
	if e != nil {
		return e
	}
	return nil
}

// check is Check on a connection worker, on a session of its own.
func (s *Sender) check(ctx context.Context) *Error {
	c, e := s.dial(ctx)
	if e != nil {
		s.setStatus(e)
		return e
	}
	sc := c.sc
	defer quit(sc)
	if err := sc.UpdateDeadline(s.cfg.Timeout); err != nil {
		e := Classify(StageMail, err)
		s.setStatus(e)
		return e
	}
	if err := sc.Mail(envelope(s.from.Address)); err != nil {
		e := Classify(StageMail, err)
		s.setStatus(e)
		return e
	}
	if err := sc.Reset(); err != nil {
		e := Classify(StageMail, err)
		s.setStatus(e)
		return e
	}
	s.setStatus(nil)
	return nil
}

// Status returns nil when the last check or send reached the relay and it
// answered, ErrNotChecked before the first, else the last relay or
// configuration failure. A refusal of one email alone does not make the
// relay unhealthy. The error text never quotes the server.
func (s *Sender) Status() error {
	s.statusMu.Lock()
	defer s.statusMu.Unlock()
	return s.status
}

func (s *Sender) setStatus(e *Error) {
	s.statusMu.Lock()
	defer s.statusMu.Unlock()
	if e == nil {
		s.status = nil
		return
	}
	s.status = errors.New(e.Summary())
}

// Send hands m to the relay and returns once the relay accepted it. A
// failure is a *Error (see Classify).
//
// When ctx ends, Send gives up at once unless the end-of-data mark is
// already sent: waiting for the rate limit, for a connection, opening a
// session, the commands and the content are cut, with nothing delivered.
// Once the mark is sent Send waits for the reply (Config.FinalTimeout)
// whatever ctx does, so that an email in flight at shutdown is finished
// rather than left for a retry that could deliver it twice.
func (s *Sender) Send(ctx context.Context, m Message) (Receipt, error) {
	data, messageID, release, err := s.build(m)
	if err != nil {
		e := Classify(StageBuild, err)
		s.count(e)
		return Receipt{}, e
	}
	if s.limiter != nil {
		if err := s.limiter.Wait(ctx); err != nil {
			release()
			if ctx.Err() == nil { // the wait would pass ctx's deadline
				err = fmt.Errorf("%w: rate limit: %v", context.DeadlineExceeded, err)
			}
			return Receipt{}, s.count(Classify(StageConnect, err))
		}
	}
	j := &job{ctx: ctx, data: data, to: m.ToAddr, queued: time.Now()}
	if err := s.pool.run(ctx, j); err != nil {
		// The data stays with the garbage collector: a job its caller
		// gave up on may still be in a worker's hands.
		return Receipt{}, s.count(Classify(StageConnect, err))
	}
	release() // the job is done: no worker reads its data any more
	if j.err != nil {
		return Receipt{}, s.count(j.err)
	}
	now := time.Now()
	s.metrics.attempts.WithLabelValues(OutcomeSuccess).Inc()
	s.metrics.lastSuccess.Set(float64(now.UnixNano()) / 1e9)
	s.setStatus(nil)
	return Receipt{MessageID: messageID, AcceptedAt: now}, nil
}

// sendQueued runs on a connection worker: it sends email job j on the
// worker's session c (nil: it has none, and one is opened), then each
// email the worker takes to follow it. RFC 2920 lets an email's content
// and end-of-data mark begin a group of commands, so the next email's MAIL
// FROM, RCPT TO and DATA go out in the same write and the replies to both
// come back together: one round trip per email instead of two. It returns
// the session to keep, nil once it cannot carry another email, and the
// last job, whose caller the worker tells; it tells the others' callers
// as their emails end.
func (s *Sender) sendQueued(c *conn, j *job) (*conn, *job) {
	ahead := false // j's commands went out behind the mark of the email before
	for {
		s.metrics.poolWait.Observe(time.Since(j.queued).Seconds())
		start := time.Now()
		var next *job
		c, next, ahead = s.send(c, j, ahead)
		telemetry.Observe(j.ctx, s.metrics.duration, time.Since(start).Seconds())
		if next == nil {
			return c, j
		}
		close(j.done)
		j = next
	}
}

// send sends email job j on session c (nil: none, and one is opened),
// whose MAIL FROM, RCPT TO and DATA are already out when ahead. It returns
// the session to keep (nil once it cannot carry another email) and the
// email taken to follow j, if any, with whether that one's commands went
// out; when they did not, it starts afresh on a new session.
func (s *Sender) send(c *conn, j *job, ahead bool) (_ *conn, next *job, nextAhead bool) {
	if !ahead && j.ctx.Err() != nil {
		// Its caller has gone, and nothing of it is out: the session is
		// kept for the next.
		j.err = Classify(StageConnect, context.Cause(j.ctx))
		return c, nil, false
	}
	reused := c != nil
	if !reused {
		dc, e := s.dial(j.ctx)
		if e != nil {
			j.err = e
			return nil, nil, false
		}
		c = s.pool.opened(dc)
	}
	healthy, next, nextAhead := s.transact(c, j, ahead)
	if e := j.err; e != nil && reused && j.ctx.Err() == nil && e.Stage == StageMail && (e.Code == 0 || e.Code == 421) {
		// The pooled connection died (the server timed it out while idle,
		// a proxy dropped it, or the server takes no more emails on it).
		// Nothing was sent on it: once more on a new connection.
		s.log.DebugContext(j.ctx, "pooled smtp connection is dead; redialling", "reason", e.Reason)
		s.pool.drop(c)
		dc, de := s.dial(j.ctx)
		if de != nil {
			j.err = de
			return nil, nil, false
		}
		c = s.pool.opened(dc)
		j.err = nil
		healthy, next, nextAhead = s.transact(c, j, false)
	}
	if !healthy {
		s.pool.drop(c)
		return nil, next, false
	}
	return c, next, nextAhead
}

// OutcomeOf classifies the result of Send as one of the Outcome*
// constants, as send_attempts_total counts it: OutcomeSuccess for nil.
// An error that is not a *Error counts as transient.
func OutcomeOf(err error) string {
	var e *Error
	switch {
	case err == nil:
		return OutcomeSuccess
	case !errors.As(err, &e):
		return OutcomeTransient
	case e.Config:
		return OutcomeConfig
	case e.MaybeSent:
		return OutcomeMaybeSent
	case e.Relay:
		return OutcomeTransient
	case e.Permanent:
		return OutcomePermanent
	default:
		return OutcomeTransient
	}
}

// count records the outcome of a failed attempt and updates Status.
func (s *Sender) count(e *Error) *Error {
	s.metrics.attempts.WithLabelValues(OutcomeOf(e)).Inc()
	switch {
	case e.Config:
		s.setStatus(e)
	case e.Relay:
		if !errors.Is(e, ErrClosed) && !errors.Is(e, context.Canceled) && !(e.Stage == StageConnect && errors.Is(e, context.DeadlineExceeded)) {
			// Not when this side gave up waiting (shutdown, the caller's
			// deadline, the rate limit): that says nothing about the relay.
			s.setStatus(e)
		}
	case e.Code != 0:
		s.setStatus(nil) // the relay answered
	}
	// No reply during one email's transaction (or an email that cannot be
	// built) says nothing about the relay as a whole.
	return e
}

// Close says QUIT on the idle connections and makes later sends fail with
// ErrClosed. Connections in use are closed when their send ends (Close
// waits a moment for them).
func (s *Sender) Close() error {
	s.pool.close()
	return nil
}
