package smtpsend

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/textproto"

	"github.com/wneessen/go-mail/smtp"
)

// transferPipelined is transfer for a relay that offers PIPELINING (RFC
// 2920): MAIL FROM, RCPT TO and DATA go out in one write and their three
// replies are read afterwards, which saves two round trips per email. The
// replies are taken in order, whatever they say; the first refusal is the
// failure (a later one only follows from it).
func transferPipelined(sc *smtp.Client, data []byte, from, to string) (bool, Stage, *Error) {
	w := sc.Text.W
	fmt.Fprintf(w, "MAIL FROM:%s%s\r\nRCPT TO:%s\r\nDATA\r\n", envelope(from), mailParameters(sc), envelope(to))
	if err := w.Flush(); err != nil {
		return false, StageMail, Classify(StageMail, err)
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
				return false, failed.Stage, failed
			}
			if _, _, err := sc.Text.ReadResponse(250); err != nil && !isReply(err) {
				return false, failed.Stage, failed
			}
		case err == nil:
		case !isReply(err):
			// No reply: the connection broke.
			return false, r.stage, firstOf(failed, Classify(r.stage, err))
		case failed == nil:
			failed = Classify(r.stage, err)
		}
	}
	if failed != nil {
		usable := failed.Code != 421 && sc.Reset() == nil
		return usable, failed.Stage, failed
	}
	return writeContent(w, data)
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
