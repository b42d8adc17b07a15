package smtpsend

import (
	"context"
	"crypto/tls"
	"net"
	"strconv"
	"sync"
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

// transact runs email job j on c, one SMTP transaction; j.err is nil once
// the server accepted the email. ahead says j's MAIL FROM, RCPT TO and
// DATA are already out, behind the end-of-data mark of the email before.
// When the relay pipelines, transact takes the first queued email to
// follow j and sends its commands behind j's mark: it returns that job
// with whether they went out, and whether c can carry another transaction.
//
// Config.Timeout bounds everything up to and including j's content and
// its end-of-data mark; when j's context ends meanwhile the session is cut
// at once. Until the mark's last byte is written nothing can have been
// delivered. Once it is, the reply to it gets Config.FinalTimeout and is
// awaited whatever the context does: the server may be scanning a message
// it already stored (RFC 5321 4.5.3.2.6), and giving up on it would send
// the email twice.
func (s *Sender) transact(c *conn, j *job, ahead bool) (healthy bool, next *job, nextOut bool) {
	if err := c.raw.SetDeadline(time.Now().Add(s.cfg.Timeout)); err != nil {
		j.err = Classify(StageMail, err)
		return false, nil, false
	}
	cut := cutWhenDone(j.ctx, c.raw)
	healthy, stage, e := begin(c.sc, s.from.Address, j.to, ahead)
	if e == nil && (j.ctx.Err() != nil || !j.write()) {
		// The caller gave up while the relay answered (an email whose
		// commands went out behind another's mark waits for that one's
		// reply): no content, and a session waiting for it is unusable.
		healthy, stage, e = false, StageData, Classify(StageData, context.Cause(j.ctx))
	}
	markOut := false
	if e == nil {
		if pipelines(c.sc) {
			next = s.pool.follow()
		}
		var commands []byte
		if next != nil {
			commands = mailCommands(c.sc, s.from.Address, next.to)
		}
		var err error
		markOut, nextOut, err = writeContent(c.sc.Text.W, j.data, commands)
		if err != nil {
			healthy, stage, e = false, StageData, Classify(StageData, err)
		}
	}
	// After the mark, the session stays usable only if every byte written
	// went out.
	wrote := e == nil
	cut.stop(markOut)
	if !markOut {
		if j.ctx.Err() != nil {
			// Stopped before the end-of-data mark was out: nothing was
			// delivered, and the session is in an unknown state.
			e, healthy = Classify(stage, context.Cause(j.ctx)), false
		}
		j.err = e
		return healthy, next, false
	}
	// The mark is out (a cut that came after it changes nothing).
	if err := c.raw.SetDeadline(time.Now().Add(s.cfg.FinalTimeout)); err != nil {
		j.err = Classify(StageEndOfData, err)
		return false, next, false
	}
	if _, _, err := c.sc.Text.ReadResponse(250); err != nil {
		j.err = Classify(StageEndOfData, err)
		// After a reply the transaction is over and the session usable.
		healthy = wrote && j.err.Code != 0 && j.err.Code != 421
		return healthy, next, healthy && nextOut
	}
	return wrote, next, wrote && nextOut
}

// cutter cuts a connection when a context ends, until the end-of-data mark
// is out.
type cutter struct {
	mu      sync.Mutex
	markOut bool
	after   func() bool
}

func cutWhenDone(ctx context.Context, raw net.Conn) *cutter {
	c := &cutter{}
	c.after = context.AfterFunc(ctx, func() {
		// This runs in a goroutine of its own, perhaps after the mark is
		// out and the final deadline set: it cuts only while it is not.
		c.mu.Lock()
		defer c.mu.Unlock()
		if !c.markOut {
			_ = raw.SetDeadline(time.Now())
		}
	})
	return c
}

// stop ends the watch; markOut says whether the mark is out, after which a
// cut that is late to run leaves the connection alone.
func (c *cutter) stop(markOut bool) {
	c.mu.Lock()
	c.markOut = markOut
	c.mu.Unlock()
	c.after()
}

// begin runs a transaction up to the relay's 354 to DATA: MAIL FROM, RCPT
// TO and DATA in one write when the relay pipelines (unless ahead says
// they are out already) with their replies read afterwards, else one
// command at a time. On failure it says at which stage, and whether the
// session can carry another transaction.
func begin(sc *smtp.Client, from, to string, ahead bool) (bool, Stage, *Error) {
	if pipelines(sc) {
		if !ahead {
			_, _ = sc.Text.W.Write(mailCommands(sc, from, to))
			if err := sc.Text.W.Flush(); err != nil {
				return false, StageMail, Classify(StageMail, err)
			}
		}
		return readMailReplies(sc)
	}
	// A refused command leaves the session usable after RSET; a broken
	// connection or a 421 does not.
	refused := func(stage Stage, err error) (bool, Stage, *Error) {
		e := Classify(stage, err)
		if e.Code == 0 || e.Code == 421 {
			return false, stage, e
		}
		return sc.Reset() == nil, stage, e
	}
	if err := sc.Mail(envelope(from)); err != nil {
		return refused(StageMail, err)
	}
	if err := sc.Rcpt(envelope(to)); err != nil {
		return refused(StageRcpt, err)
	}
	// DATA is written and its reply read as with pipelining, not through
	// sc.Text.Cmd, whose request and response sequence the client's later
	// commands would wait on.
	if _, err := sc.Text.W.WriteString("DATA\r\n"); err != nil {
		return false, StageData, Classify(StageData, err)
	}
	if err := sc.Text.W.Flush(); err != nil {
		return false, StageData, Classify(StageData, err)
	}
	if _, _, err := sc.Text.ReadResponse(354); err != nil {
		return refused(StageData, err)
	}
	return true, "", nil
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
