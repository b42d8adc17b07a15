package smtpsend

import (
	"context"
	"crypto/tls"
	"net"
	"strconv"
	"time"

	"github.com/wneessen/go-mail"
	"github.com/wneessen/go-mail/smtp"
)

// quitTimeout bounds saying goodbye to a relay; a relay that does not
// answer QUIT quickly is simply disconnected.
const quitTimeout = 2 * time.Second

// dial opens a session with the relay: TCP (and TLS for implicit TLS),
// greeting, EHLO, STARTTLS as the TLS mode says, AUTH. ctx and
// Config.Timeout bound it together. The socket is closed on any failure.
func (s *Sender) dial(ctx context.Context) (*smtp.Client, *Error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	addr := net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.Port))
	dialer := &net.Dialer{}
	var (
		conn net.Conn
		err  error
	)
	if s.cfg.TLS == TLSImplicit {
		conn, err = (&tls.Dialer{NetDialer: dialer, Config: s.tls}).DialContext(ctx, "tcp", addr)
	} else {
		conn, err = dialer.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return nil, Classify(StageConnect, err)
	}
	// The session set-up is bounded by the same deadline, and given up at
	// once when ctx ends. stop must run before cancel, or the deadline
	// would cut the connection being returned.
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()

	sc, err := smtp.NewClient(conn, s.cfg.Host) // closes conn on failure
	if err != nil {
		return nil, Classify(StageGreeting, err)
	}
	fail := func(stage Stage, err error) (*smtp.Client, *Error) {
		_ = sc.Close()
		return nil, Classify(stage, err)
	}
	if err := sc.Hello(s.helo); err != nil {
		return fail(StageHello, err)
	}
	encrypted := s.cfg.TLS == TLSImplicit
	if s.cfg.TLS == TLSMandatory || s.cfg.TLS == TLSOpportunistic {
		offered, _ := sc.Extension("STARTTLS")
		switch {
		case offered:
			if err := sc.StartTLS(s.tls); err != nil {
				return fail(StageStartTLS, err)
			}
			encrypted = true
		case s.cfg.TLS == TLSMandatory:
			return fail(StageStartTLS, errNoStartTLS)
		}
	}
	auth, err := s.authenticator(sc, encrypted)
	if err != nil {
		return fail(StageAuth, err)
	}
	if auth != nil {
		if err := sc.Auth(auth); err != nil {
			return fail(StageAuth, err)
		}
	}
	if !stop() {
		// ctx ended just now and may have cut the connection.
		return fail(StageAuth, ctx.Err())
	}
	_ = conn.SetDeadline(time.Time{})
	return sc, nil
}

// transact sends msg on sc, one SMTP transaction. It returns nil once the
// server accepted the email. healthy says whether sc can carry another
// transaction. Config.Timeout bounds the whole transaction.
func (s *Sender) transact(sc *smtp.Client, msg *mail.Msg, from, to string) (healthy bool, _ *Error) {
	if err := sc.UpdateDeadline(s.cfg.Timeout); err != nil {
		return false, Classify(StageMail, err)
	}
	// A refused command leaves the session usable after RSET; a broken
	// connection or a 421 does not.
	refused := func(stage Stage, err error) (bool, *Error) {
		e := Classify(stage, err)
		if e.Code == 0 || e.Code == 421 {
			return false, e
		}
		return sc.Reset() == nil, e
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
	if _, err := msg.WriteTo(w); err != nil {
		return false, Classify(StageData, err)
	}
	// Push the content out before the end-of-data mark: a failure up to
	// here means the server cannot have accepted the email, while one
	// after the mark leaves it unknown.
	if err := sc.Text.W.Flush(); err != nil {
		return false, Classify(StageData, err)
	}
	if err := w.Close(); err != nil {
		e := Classify(StageEndOfData, err)
		// After a reply the transaction is over and the session usable.
		return e.Code != 0 && e.Code != 421, e
	}
	return true, nil
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
