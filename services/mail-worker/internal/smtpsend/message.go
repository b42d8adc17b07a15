package smtpsend

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"mime"
	netmail "net/mail"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// build turns m into the bytes of an email, written out before a
// connection is taken, so that a connection carries emails rather than
// waits for their encoding, and its Message-ID. The bytes are in a pooled
// buffer, which release gives back once nothing can read them any more.
func (s *Sender) build(m Message) (data []byte, messageID string, release func(), _ error) {
	b := emailBuffers.Get().(*bytes.Buffer)
	release = func() {
		if b.Cap() <= maxPooledEmail {
			b.Reset()
			emailBuffers.Put(b)
		}
	}
	data, messageID, err := compose(b, s.from, s.domain, m, time.Now())
	if err != nil {
		release()
		return nil, "", nil, err
	}
	return data, messageID, release, nil
}

// emailBuffers holds the buffers emails are built in: an email's bytes were
// the largest allocation per email, and garbage collection costs the worker
// CPU in proportion to its garbage.
var emailBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledEmail bounds the buffers kept: an email far larger than usual
// does not pin its memory.
const maxPooledEmail = 64 << 10

// Compose returns the bytes of m as Send would hand them to a relay, From
// from (MAIL_FROM), for a preview; nothing is sent.
func Compose(from string, m Message) ([]byte, error) {
	addr, err := netmail.ParseAddress(from)
	if err != nil {
		return nil, fmt.Errorf("from address %q: %w", from, err)
	}
	data, _, err := compose(new(bytes.Buffer), addr, addr.Address[strings.LastIndexByte(addr.Address, '@')+1:], m, time.Now())
	return data, err
}

// compose builds the email (RFC 5322, MIME): the headers, then the text
// and the HTML as alternatives, each quoted-printable in UTF-8. Every line
// ends in CRLF and is at most 78 bytes long but for a header word longer
// than that; no header value can hold a line break. The Message-ID is the
// event id at domain. It writes into b, empty, and returns b's bytes.
func compose(b *bytes.Buffer, from *netmail.Address, domain string, m Message, date time.Time) ([]byte, string, error) {
	if !eventsv1.ValidEventID(m.EventID) {
		return nil, "", fmt.Errorf("event id %q cannot be part of a Message-ID", m.EventID)
	}
	to, err := netmail.ParseAddress(m.ToAddr)
	if err != nil || to.Address != m.ToAddr {
		return nil, "", errors.New("recipient is not a bare email address")
	}
	to.Name = displayName(m.ToName)
	messageID := "<" + m.EventID + "@" + domain + ">"
	boundary := boundaryFor(m.EventID)

	b.Grow(len(m.Text) + len(m.HTML) + len(m.HTML)/4 + 1024)
	header(b, "Date", date.Format(time.RFC1123Z))
	header(b, "From", from.String())
	header(b, "To", to.String())
	header(b, "Subject", encodeWords(m.Subject))
	header(b, "Message-ID", messageID)
	header(b, "X-Doorbell-Event-Id", m.EventID)
	header(b, "Auto-Submitted", "auto-generated")
	header(b, "X-Auto-Response-Suppress", "All")
	if m.Lang != "" {
		header(b, "Content-Language", m.Lang) // a language tag
	}
	header(b, "MIME-Version", "1.0")
	header(b, "Content-Type", `multipart/alternative; boundary="`+boundary+`"`)
	for _, p := range []struct{ typ, body string }{{"text/plain", m.Text}, {"text/html", m.HTML}} {
		b.WriteString("\r\n--" + boundary + "\r\n")
		header(b, "Content-Type", p.typ+"; charset=UTF-8")
		header(b, "Content-Transfer-Encoding", "quoted-printable")
		b.WriteString("\r\n")
		writeQuotedPrintable(b, p.body)
	}
	b.WriteString("\r\n--" + boundary + "--\r\n")
	return b.Bytes(), messageID, nil
}

// writeQuotedPrintable writes body quoted-printable (RFC 2045 6.7), byte
// for byte as mime/quotedprintable's Writer would (TestQuotedPrintableIs
// TheStandardEncoding), in one pass that copies runs of bytes needing no
// encoding instead of going through that Writer byte by byte.
func writeQuotedPrintable(b *bytes.Buffer, body string) {
	w := qpWriter{b: b}
	for i := 0; i < len(body); {
		switch c := body[i]; {
		case c == '\n' && w.cr:
			// The LF of a CRLF whose line break is written.
			w.cr = false
			i++
		case c == '\r' || c == '\n':
			w.cr = c == '\r'
			w.lineBreak()
			i++
		case qpLiteral(c):
			j := i + 1
			for j < len(body) && qpLiteral(body[j]) {
				j++
			}
			w.literal(body[i:j])
			i = j
		default:
			w.encode(c)
			i++
		}
	}
	w.spaceAtEnd()
}

// qpLiteral reports whether quoted-printable writes c as it is (unless it
// is a space or tab that ends a line).
func qpLiteral(c byte) bool {
	return c >= '!' && c <= '~' && c != '=' || c == ' ' || c == '\t'
}

// qpWriter writes quoted-printable lines of at most 76 bytes into b.
type qpWriter struct {
	b   *bytes.Buffer
	col int  // bytes on the current line
	cr  bool // the last byte read was a CR (not reset by an encoded byte, as in mime/quotedprintable)
}

// qpMax is the most bytes of text a line holds before a soft line break's
// "=".
const qpMax = 75

func (w *qpWriter) literal(s string) {
	w.cr = false
	for len(s) > 0 {
		if w.col == qpMax {
			w.softBreak()
		}
		n := min(len(s), qpMax-w.col)
		w.b.WriteString(s[:n])
		w.col += n
		s = s[n:]
	}
}

func (w *qpWriter) encode(c byte) {
	if qpMax-w.col < 3 {
		w.softBreak()
	}
	const hex = "0123456789ABCDEF"
	w.b.Write([]byte{'=', hex[c>>4], hex[c&0x0f]})
	w.col += 3
}

func (w *qpWriter) softBreak() {
	w.b.WriteString("=\r\n")
	w.col = 0
}

func (w *qpWriter) lineBreak() {
	w.spaceAtEnd()
	w.b.WriteString("\r\n")
	w.col = 0
}

// spaceAtEnd encodes a space or tab that ends the current line.
func (w *qpWriter) spaceAtEnd() {
	if w.col == 0 {
		return
	}
	last := w.b.Bytes()[w.b.Len()-1]
	if last == ' ' || last == '\t' {
		w.b.Truncate(w.b.Len() - 1)
		w.col--
		w.encode(last)
	}
}

// boundaryFor is the MIME boundary of the email for an event: the same on
// every attempt, and 43 bytes whatever the id's length, within the 70 that
// RFC 2046 allows. "=_" never occurs in quoted-printable text, so no part
// can hold it.
func boundaryFor(eventID string) string {
	sum := sha256.Sum256([]byte(eventID))
	return "=_doorbell_" + hex.EncodeToString(sum[:16])
}

// header writes "name: value" folded at spaces into lines of at most 78
// bytes where the words allow it (RFC 5322 2.2.3). value holds no line
// break.
func header(b *bytes.Buffer, name, value string) {
	b.WriteString(name)
	b.WriteByte(':')
	line := len(name) + 1
	for word := range strings.SplitSeq(value, " ") {
		if line+1+len(word) > 78 && line > 0 {
			b.WriteString("\r\n")
			line = 0
		}
		b.WriteByte(' ')
		b.WriteString(word)
		line += 1 + len(word)
	}
	b.WriteString("\r\n")
}

// encodeWords is s as a header's text: as it is when printable ASCII that
// no reader could take for an encoded word, else RFC 2047 encoded words.
func encodeWords(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return mime.QEncoding.Encode("UTF-8", s)
		}
	}
	if strings.Contains(s, "=?") {
		return base64Words(s) // mime leaves printable ASCII as it is
	}
	return s
}

// base64Words is s as RFC 2047 "B" encoded words of at most 72 bytes,
// split between characters.
func base64Words(s string) string {
	var words []string
	for len(s) > 0 {
		n := min(len(s), 45)
		for n < len(s) && n > 1 && !utf8.RuneStart(s[n]) {
			n--
		}
		words = append(words, "=?UTF-8?b?"+base64.StdEncoding.EncodeToString([]byte(s[:n]))+"?=")
		s = s[n:]
	}
	return strings.Join(words, " ")
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
