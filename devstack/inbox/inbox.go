// Package inbox is a development mail server: it accepts every message sent
// to it over SMTP, keeps it in memory and shows it on a web page and through
// a JSON API.
//
// It relays nothing and authenticates nobody; it must not be exposed beyond
// loopback. Memory is bounded: messages are limited to 10 MiB and 100
// recipients, and only the newest 1000 messages are kept.
package inbox

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// Defaults used when the corresponding Config field is empty, and limits.
const (
	DefaultSMTPAddr = "127.0.0.1:1025"
	DefaultHTTPAddr = "127.0.0.1:8025"

	MaxMessageBytes = 10 << 20
	MaxRecipients   = 100
	MaxMessages     = 1000
)

// Config says where the inbox listens.
type Config struct {
	SMTPAddr string // "127.0.0.1:1025"; "127.0.0.1:0" for a random port
	HTTPAddr string // "127.0.0.1:8025"; "127.0.0.1:0" for a random port
	// TLS: when true, the server offers STARTTLS with a self-signed certificate for 127.0.0.1 and
	// localhost generated at start (ECDSA P-256), so clients can run with STARTTLS mandatory.
	// CertPEM returns the certificate for clients to trust.
	TLS bool
}

// Message is one received email as the inbox understood it.
type Message struct {
	ID         string              `json:"id"`         // inbox-local id
	From       string              `json:"from"`       // envelope MAIL FROM
	To         []string            `json:"to"`         // envelope RCPT TO
	Subject    string              `json:"subject"`    // decoded
	MessageID  string              `json:"message_id"` // Message-ID header
	Headers    map[string][]string `json:"headers"`    // as sent, keys in canonical form
	Text       string              `json:"text"`       // decoded text/plain part
	HTML       string              `json:"html"`       // decoded text/html part
	ReceivedAt time.Time           `json:"received_at"`
	TLS        bool                `json:"tls"` // whether the session used STARTTLS
}

func (m Message) clone() Message {
	m.To = slices.Clone(m.To)
	m.Headers = maps.Clone(m.Headers)
	for k, v := range m.Headers {
		m.Headers[k] = slices.Clone(v)
	}
	return m
}

// Inbox is a running development mail server.
type Inbox struct {
	logger   *slog.Logger
	smtp     *smtp.Server
	smtpLn   net.Listener
	http     *http.Server
	smtpAddr string
	httpURL  string
	certPEM  []byte
	served   chan error // one result from each of the two servers

	mu       sync.Mutex
	messages []Message // oldest first
	nextID   int
	conns    map[net.Conn]struct{} // open SMTP connections, to end them at Close

	closeOnce sync.Once
	closeErr  error
}

// Start listens for SMTP and HTTP and serves both until Close.
func Start(cfg Config, logger *slog.Logger) (*Inbox, error) {
	if cfg.SMTPAddr == "" {
		cfg.SMTPAddr = DefaultSMTPAddr
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = DefaultHTTPAddr
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	i := &Inbox{logger: logger, served: make(chan error, 2), nextID: 1, conns: map[net.Conn]struct{}{}}

	var tlsConfig *tls.Config
	if cfg.TLS {
		cert, certPEM, err := selfSigned(time.Now())
		if err != nil {
			return nil, fmt.Errorf("inbox: make certificate: %w", err)
		}
		i.certPEM = certPEM
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	smtpLn, err := net.Listen("tcp", cfg.SMTPAddr)
	if err != nil {
		return nil, fmt.Errorf("inbox: listen for SMTP on %s: %w", cfg.SMTPAddr, err)
	}
	httpLn, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		smtpLn.Close()
		return nil, fmt.Errorf("inbox: listen for HTTP on %s: %w", cfg.HTTPAddr, err)
	}
	i.smtpLn = smtpLn
	i.smtpAddr = smtpLn.Addr().String()
	i.httpURL = "http://" + httpLn.Addr().String()

	i.smtp = smtp.NewServer(backend{i})
	i.smtp.Domain = "localhost"
	i.smtp.MaxMessageBytes = MaxMessageBytes
	i.smtp.MaxRecipients = MaxRecipients
	i.smtp.ReadTimeout = 5 * time.Minute
	i.smtp.WriteTimeout = time.Minute
	i.smtp.TLSConfig = tlsConfig
	i.smtp.ErrorLog = slog.NewLogLogger(logger.Handler(), slog.LevelWarn)

	i.http = &http.Server{
		Handler:           i.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}

	go func() { i.served <- i.smtp.Serve(trackingListener{smtpLn, i}) }()
	go func() {
		err := i.http.Serve(httpLn)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		i.served <- err
	}()
	logger.Info("dev inbox listening", "smtp", i.smtpAddr, "web", i.httpURL, "starttls", cfg.TLS)
	return i, nil
}

// SMTPAddr is the host:port the SMTP server is bound to.
func (i *Inbox) SMTPAddr() string { return i.smtpAddr }

// HTTPURL is the base URL of the web page and API, e.g. http://127.0.0.1:8025.
func (i *Inbox) HTTPURL() string { return i.httpURL }

// CertPEM is the self-signed certificate offered with STARTTLS, PEM-encoded,
// for clients to trust; nil when TLS is off.
func (i *Inbox) CertPEM() []byte { return slices.Clone(i.certPEM) }

// Messages returns a copy of the received messages, oldest first.
func (i *Inbox) Messages() []Message {
	i.mu.Lock()
	defer i.mu.Unlock()
	out := make([]Message, len(i.messages))
	for n, m := range i.messages {
		out[n] = m.clone()
	}
	return out
}

// message returns the message with the given id.
func (i *Inbox) message(id string) (Message, bool) {
	i.mu.Lock()
	defer i.mu.Unlock()
	for _, m := range i.messages {
		if m.ID == id {
			return m.clone(), true
		}
	}
	return Message{}, false
}

// add stores m, giving it an id, and drops the oldest messages beyond
// MaxMessages.
func (i *Inbox) add(m Message) Message {
	i.mu.Lock()
	defer i.mu.Unlock()
	m.ID = strconv.Itoa(i.nextID)
	i.nextID++
	i.messages = append(i.messages, m)
	if over := len(i.messages) - MaxMessages; over > 0 {
		i.messages = slices.Delete(i.messages, 0, over)
	}
	return m
}

// trackingListener keeps every SMTP connection it accepts in Inbox.conns
// until it is closed, so that Close can end the ones still open. It holds
// the socket rather than go-smtp's Conn: a session that switched to TLS
// has ended its first SMTP session but not its connection, and go-smtp's
// Conn.Close reads the socket while STARTTLS replaces it, unlocked.
type trackingListener struct {
	net.Listener
	inbox *Inbox
}

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, inbox: l.inbox}
	l.inbox.mu.Lock()
	l.inbox.conns[tc] = struct{}{}
	l.inbox.mu.Unlock()
	return tc, nil
}

// trackedConn leaves Inbox.conns when it is closed.
type trackedConn struct {
	net.Conn
	inbox *Inbox
}

func (c *trackedConn) Close() error {
	c.inbox.mu.Lock()
	delete(c.inbox.conns, c)
	c.inbox.mu.Unlock()
	return c.Conn.Close()
}

// clear forgets every message. Ids are not reused.
func (i *Inbox) clear() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.messages = nil
}

// Close stops both servers, letting sessions and requests in flight finish
// for up to five seconds, and returns once they have stopped. Later calls
// return the first call's result.
func (i *Inbox) Close() error {
	i.closeOnce.Do(func() { i.closeErr = i.close() })
	return i.closeErr
}

func (i *Inbox) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errs []error
	err := i.smtp.Shutdown(ctx)
	// go-smtp only closes listeners its Serve has registered, which it may
	// not have done yet if Close follows Start closely.
	i.smtpLn.Close()
	if err != nil {
		// go-smtp's Close is a no-op after Shutdown: end the
		// connections still open ourselves. Closing one takes i.mu:
		// collect first.
		i.mu.Lock()
		open := slices.Collect(maps.Keys(i.conns))
		i.mu.Unlock()
		for _, c := range open {
			c.Close()
		}
		errs = append(errs, fmt.Errorf("smtp: %w", err))
	}
	if err := i.http.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("http: %w", err), i.http.Close())
	}
	for range 2 {
		if err := <-i.served; err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("inbox: close: %w", err)
	}
	return nil
}
