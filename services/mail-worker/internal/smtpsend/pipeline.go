package smtpsend

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/textproto"

	"github.com/wneessen/go-mail/smtp"
)

// transferPipelined is transfer for a relay that offers PIPELINING (RFC
// 2920): MAIL FROM, RCPT TO and DATA go out in one write and their three
// replies are read afterwards, which saves two round trips per email. The
// replies are taken in order, whatever they say; the first refusal is the
// failure (a later one only follows from it).
func transferPipelined(sc *smtp.Client, data []byte, from, to string) (io.Closer, bool, Stage, *Error) {
	w := sc.Text.W
	fmt.Fprintf(w, "MAIL FROM:%s%s\r\nRCPT TO:%s\r\nDATA\r\n", envelope(from), mailParameters(sc), envelope(to))
	if err := w.Flush(); err != nil {
		return nil, false, StageMail, Classify(StageMail, err)
	}
	var failed *Error
	for _, r := range []struct {
		stage Stage
		code  int
	}{{StageMail, 250}, {StageRcpt, 25}, {StageData, 354}} {
		_, _, err := sc.Text.ReadResponse(r.code)
		switch {
		case err == nil && r.stage == StageData && failed != nil:
			// A relay that takes the data of a refused transaction: end
			// it empty, so that nothing is delivered.
			_, _ = w.WriteString(".\r\n")
			if err := w.Flush(); err != nil {
				return nil, false, failed.Stage, failed
			}
			if _, _, err := sc.Text.ReadResponse(250); err != nil && !isReply(err) {
				return nil, false, failed.Stage, failed
			}
		case err == nil:
		case !isReply(err):
			// No reply: the connection broke.
			return nil, false, r.stage, firstOf(failed, Classify(r.stage, err))
		case failed == nil:
			failed = Classify(r.stage, err)
		}
	}
	if failed != nil {
		usable := failed.Code != 421 && sc.Reset() == nil
		return nil, usable, failed.Stage, failed
	}
	writeData(w, data)
	// Push the content out before the end-of-data mark (see transfer).
	if err := w.Flush(); err != nil {
		return nil, false, StageData, Classify(StageData, err)
	}
	return &pipelinedData{text: sc.Text}, true, StageData, nil
}

// writeData writes data, whose lines end in CRLF, as the content of DATA
// (RFC 5321 4.5.2): a line that begins with a period gets another, and a
// last line without CRLF gets one. The end-of-data mark is the caller's.
// Errors are w's, seen at its Flush.
func writeData(w *bufio.Writer, data []byte) {
	for len(data) > 0 {
		if data[0] == '.' {
			_ = w.WriteByte('.')
		}
		i := bytes.Index(data, crlf)
		if i < 0 {
			_, _ = w.Write(data)
			_, _ = w.Write(crlf)
			return
		}
		_, _ = w.Write(data[:i+2])
		data = data[i+2:]
	}
}

var crlf = []byte("\r\n")

// pipelinedData sends the end-of-data mark and reads the final reply.
type pipelinedData struct {
	text *textproto.Conn
}

func (p *pipelinedData) Close() error {
	if _, err := p.text.W.WriteString(".\r\n"); err != nil {
		return err
	}
	if err := p.text.W.Flush(); err != nil {
		return err
	}
	_, _, err := p.text.ReadResponse(250)
	return err
}

// mailParameters are the MAIL FROM parameters go-mail's client would send
// to this relay.
func mailParameters(sc *smtp.Client) string {
	params := ""
	if ok, _ := sc.Extension("8BITMIME"); ok {
		params += " BODY=8BITMIME"
	}
	if ok, _ := sc.Extension("SMTPUTF8"); ok {
		params += " SMTPUTF8"
	}
	return params
}

// isReply reports whether err is an SMTP reply (the relay answered).
func isReply(err error) bool {
	var reply *textproto.Error
	return errors.As(err, &reply)
}

func firstOf(a, b *Error) *Error {
	if a != nil {
		return a
	}
	return b
}
