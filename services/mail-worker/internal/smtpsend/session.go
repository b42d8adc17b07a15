package smtpsend

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/wneessen/go-mail/smtp"
)

// quitTimeout bounds saying goodbye to a relay; a relay that does not
// answer QUIT quickly is simply disconnected.
const quitTimeout = 2 * time.Second

// dial opens a session with the relay: TCP (and TLS for implicit TLS),
// greeting, EHLO, STARTTLS as the TLS mode says, AUTH. ctx and
// Config.Timeout bound it together. The socket is closed on any failure.
func (s *Sender) dial(ctx context.Context) (*conn, *Error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	raw, err := s.connect(ctx)
	if err != nil {
		return nil, classifyCut(ctx, StageConnect, err)
	}
	// The session set-up is bounded by the same deadline, and given up at
	// once when ctx ends. stop must run before cancel, or the deadline
	// would cut the connection being returned.
	if deadline, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Now()) })
	defer stop()

	sc, err := smtp.NewClient(raw, s.cfg.Host) // closes conn on failure
	if err != nil {
		return nil, classifyCut(ctx, StageGreeting, err)
	}
	if stage, err := s.open(sc); err != nil {
		_ = sc.Close()
		return nil, classifyCut(ctx, stage, err)
	}
	if !stop() {
		// ctx ended just now and may have cut the connection.
		_ = sc.Close()
		return nil, classifyCut(ctx, StageAuth, ctx.Err())
	}
	_ = raw.SetDeadline(time.Time{})
	return &conn{sc: sc, raw: raw}, nil
}

// connect opens the TCP connection, and for implicit TLS the TLS session
// on it.
func (s *Sender) connect(ctx context.Context) (net.Conn, error) {
	addr := net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.Port))
	dialer := &net.Dialer{}
	if s.cfg.TLS == TLSImplicit {
		return (&tls.Dialer{NetDialer: dialer, Config: s.tls}).DialContext(ctx, "tcp", addr)
	}
	return dialer.DialContext(ctx, "tcp", addr)
}

// open takes a greeted session through EHLO, STARTTLS as the TLS mode
// says, and AUTH; on failure it says at which stage.
func (s *Sender) open(sc *smtp.Client) (Stage, error) {
	if err := sc.Hello(s.helo); err != nil {
		return StageHello, err
	}
	encrypted := s.cfg.TLS == TLSImplicit
	if s.cfg.TLS == TLSMandatory || s.cfg.TLS == TLSOpportunistic {
		offered, _ := sc.Extension("STARTTLS")
		switch {
		case offered:
			if err := sc.StartTLS(s.tls); err != nil {
				return StageStartTLS, err
			}
			encrypted = true
		case s.cfg.TLS == TLSMandatory:
			return StageStartTLS, errNoStartTLS
		}
	}
	auth, err := s.authenticator(sc, encrypted)
	if err != nil {
		return StageAuth, err
	}
	if auth != nil {
		if err := sc.Auth(auth); err != nil {
			return StageAuth, err
		}
	}
	return "", nil
}

// classifyCut classifies a failure of the session set-up, which ctx bounds
// (with Config.Timeout): when ctx ended, its cause (the caller stopping,
// or the timeout) is the failure, not the i/o error it provoked.
func classifyCut(ctx context.Context, stage Stage, err error) *Error {
	if ctx.Err() != nil {
		return Classify(stage, context.Cause(ctx))
	}
	return Classify(stage, err)
}

// transact sends msg on c, one SMTP transaction. It returns nil once the
// server accepted the email. healthy says whether c can carry another
// transaction.
//
// Config.Timeout bounds everything up to and including the content, none
// of which can have delivered the email; when ctx ends meanwhile the
// session is cut at once. The reply to the final "." gets
// Config.FinalTimeout and is awaited whatever ctx does: the server may be
// scanning a message it already stored (RFC 5321 4.5.3.2.6), and giving
// up on it would send the email twice.
func (s *Sender) transact(ctx context.Context, c *conn, data []byte, from, to string) (healthy bool, _ *Error) {
	if err := c.raw.SetDeadline(time.Now().Add(s.cfg.Timeout)); err != nil {
		return false, Classify(StageMail, err)
	}
	cut := context.AfterFunc(ctx, func() { _ = c.raw.SetDeadline(time.Now()) })
	w, healthy, stage, err := transfer(c.sc, data, from, to)
	if !cut() || (err != nil && ctx.Err() != nil) {
		// Stopped before the end-of-data mark: nothing was delivered, and
		// the session is in an unknown state.
		return false, Classify(stage, context.Cause(ctx))
	}
	if err != nil {
		return healthy, err
	}
	if err := c.raw.SetDeadline(time.Now().Add(s.cfg.FinalTimeout)); err != nil {
		return false, Classify(StageEndOfData, err)
	}
	if err := w.Close(); err != nil {
		e := Classify(StageEndOfData, err)
		// After a reply the transaction is over and the session usable.
		return e.Code != 0 && e.Code != 421, e
	}
	return true, nil
}

// transfer runs a transaction up to, not including, the end-of-data mark:
// MAIL FROM, RCPT TO, DATA and the content, flushed. It returns a Closer
// whose Close sends the mark and reads the reply. On failure it
// returns the stage and whether the session can carry another transaction.
func transfer(sc *smtp.Client, data []byte, from, to string) (io.Closer, bool, Stage, *Error) {
	if ok, _ := sc.Extension("PIPELINING"); ok {
		return transferPipelined(sc, data, from, to)
	}
	// A refused command leaves the session usable after RSET; a broken
	// connection or a 421 does not.
	refused := func(stage Stage, err error) (io.Closer, bool, Stage, *Error) {
		e := Classify(stage, err)
		if e.Code == 0 || e.Code == 421 {
			return nil, false, stage, e
		}
		return nil, sc.Reset() == nil, stage, e
	}
	if err := sc.Mail(envelope(from)); err != nil {
		return refused(StageMail, err)
	}
	if err := sc.Rcpt(envelope(to)); err != nil {
		return refused(StageRcpt, err)
	}
	w, err := sc.Data()
	if err != nil {
		return refused(StageData, err)
	}
	if _, err := w.Write(data); err != nil {
		return nil, false, StageData, Classify(StageData, err)
	}
	// Push the content out before the end-of-data mark: a failure up to
	// here means the server cannot have accepted the email, while one
	// after the mark leaves it unknown.
	if err := sc.Text.W.Flush(); err != nil {
		return nil, false, StageData, Classify(StageData, err)
	}
	return w, true, StageData, nil
}

// quit says QUIT, briefly, and closes sc.
func quit(sc *smtp.Client) {
	_ = sc.UpdateDeadline(quitTimeout)
	if err := sc.Quit(); err != nil {
		_ = sc.Close()
	}
}

// envelope is addr as MAIL FROM and RCPT TO take it: in angle brackets
// (RFC 5321 4.1.2). go-mail's smtp client sends its argument as it is, and
// strict servers (Mailpit among them) refuse a bare address with 501.
// addr is a bare address net/mail parsed, so it holds no <, > or line break.
func envelope(addr string) string {
	return "<" + addr + ">"
}
