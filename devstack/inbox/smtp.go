package inbox

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/emersion/go-smtp"
)

// backend hands each SMTP connection a session that stores into the inbox.
type backend struct{ inbox *Inbox }

func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &session{inbox: b.inbox, conn: c}, nil
}

// session is one SMTP session. go-smtp calls its methods from the
// connection's goroutine only.
type session struct {
	inbox *Inbox
	conn  *smtp.Conn
	from  string
	to    []string
}

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	s.from, s.to = from, nil
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.to = append(s.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	var raw bytes.Buffer
	if _, err := raw.ReadFrom(r); err != nil {
		if errors.Is(err, smtp.ErrDataTooLarge) {
			return err
		}
		return fmt.Errorf("read message: %w", err)
	}
	m, err := parse(raw.Bytes())
	if err != nil {
		s.inbox.logger.Warn("inbox rejected a malformed message", "reason", err.Error())
		return &smtp.SMTPError{
			Code:         554,
			EnhancedCode: smtp.EnhancedCode{5, 6, 0},
			Message:      "Malformed message: " + err.Error(),
		}
	}
	m.From = s.from
	m.To = append([]string(nil), s.to...)
	m.ReceivedAt = time.Now().UTC()
	_, m.TLS = s.conn.TLSConnectionState()
	stored := s.inbox.add(m)
	s.inbox.logger.Info("inbox received a message",
		"id", stored.ID, "recipients", len(stored.To), "bytes", raw.Len(), "tls", stored.TLS)
	return nil
}

func (s *session) Reset() { s.from, s.to = "", nil }

func (s *session) Logout() error { return nil }
