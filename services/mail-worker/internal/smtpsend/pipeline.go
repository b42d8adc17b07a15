package smtpsend

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/textproto"

	"github.com/wneessen/go-mail/smtp"
)

// pipelines reports whether the relay takes commands in groups (RFC 2920
// PIPELINING).
func pipelines(sc *smtp.Client) bool {
	ok, _ := sc.Extension("PIPELINING")
	return ok
}

// mailCommands are the MAIL FROM, RCPT TO and DATA of one email, sent in
// one write to a relay that pipelines: this saves two round trips per
// email.
func mailCommands(sc *smtp.Client, from, to string) []byte {
	return fmt.Appendf(nil, "MAIL FROM:%s%s\r\nRCPT TO:%s\r\nDATA\r\n", envelope(from), mailParameters(sc), envelope(to))
}

// readMailReplies reads the replies to mailCommands. They are taken in
// order, whatever they say; the first refusal is the failure (a later one
// only follows from it). On failure it says at which stage, and whether
// the session can carry another transaction.
func readMailReplies(sc *smtp.Client) (bool, Stage, *Error) {
	w := sc.Text.W
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
	return true, "", nil
}

// writeContent writes data and its end-of-data mark, then commands (the
// next email's, or none), and flushes the mark and what follows it in one
// write. markOut says whether every byte of the mark went out: until then
// the server cannot have accepted the email. commandsOut says whether all
// of commands did too: commands that would not fit w's buffer with the
// mark are not written. The error is the writer's.
func writeContent(w *bufio.Writer, data, commands []byte) (markOut, commandsOut bool, err error) {
	if len(endOfData)+len(commands) > w.Size() {
		// Written with the mark, they would be flushed in parts, and what
		// is left in the buffer would not tell whether the mark went out.
		commands = nil
	}
	if err := writeData(w, data); err != nil {
		return false, false, err
	}
	if w.Available() < len(endOfData)+len(commands) {
		if err := w.Flush(); err != nil {
			return false, false, err
		}
	}
	_, _ = w.Write(endOfData)
	_, _ = w.Write(commands)
	if err := w.Flush(); err != nil {
		// What is left unwritten is the end of the buffer.
		return w.Buffered() <= len(commands), false, err
	}
	return true, len(commands) > 0, nil
}

var endOfData = []byte(".\r\n")

// writeData writes data, whose lines end in CRLF, as the content of DATA
// (RFC 5321 4.5.2): a line that begins with a period gets another, and a
// last line without CRLF gets one. The end-of-data mark is the caller's.
// It returns w's first error.
func writeData(w *bufio.Writer, data []byte) error {
	for len(data) > 0 {
		if data[0] == '.' {
			if err := w.WriteByte('.'); err != nil {
				return err
			}
		}
		i := bytes.Index(data, crlf)
		if i < 0 {
			if _, err := w.Write(data); err != nil {
				return err
			}
			_, err := w.Write(crlf)
			return err
		}
		if _, err := w.Write(data[:i+2]); err != nil {
			return err
		}
		data = data[i+2:]
	}
	return nil
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
