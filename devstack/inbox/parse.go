package inbox

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"strings"
	"unicode/utf8"
)

// maxDepth bounds how deeply multipart bodies may nest.
const maxDepth = 10

// parse reads a raw RFC 5322 message into the fields of a Message: headers,
// the decoded subject and Message-ID, and the first text/plain and text/html
// parts that are not attachments. It fails on messages a careful client
// would never send (unreadable headers, broken multipart structure, unknown
// transfer encodings), so the sender learns about them.
func parse(raw []byte) (Message, error) {
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return Message{}, fmt.Errorf("headers: %w", err)
	}
	m := Message{
		Headers:   map[string][]string(msg.Header),
		MessageID: strings.TrimSpace(msg.Header.Get("Message-Id")),
		Subject:   decodeHeader(msg.Header.Get("Subject")),
	}
	if err := m.readPart(textproto.MIMEHeader(msg.Header), msg.Body, 0); err != nil {
		return Message{}, err
	}
	return m, nil
}

// decodeHeader decodes RFC 2047 encoded-words, keeping the raw value when
// they cannot be decoded.
func decodeHeader(v string) string {
	var dec mime.WordDecoder // knows UTF-8, US-ASCII and ISO-8859-1
	s, err := dec.DecodeHeader(v)
	if err != nil {
		return v
	}
	return s
}

// readPart walks one MIME entity, recursing into multipart bodies.
func (m *Message) readPart(h textproto.MIMEHeader, body io.Reader, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("multipart nested deeper than %d levels", maxDepth)
	}
	mediaType, params := "text/plain", map[string]string{"charset": "us-ascii"}
	if ct := h.Get("Content-Type"); ct != "" {
		var err error
		mediaType, params, err = mime.ParseMediaType(ct)
		if err != nil {
			return fmt.Errorf("content type %q: %w", ct, err)
		}
	}

	if strings.HasPrefix(mediaType, "multipart/") {
		boundary := params["boundary"]
		if boundary == "" {
			return fmt.Errorf("%s without a boundary", mediaType)
		}
		mr := multipart.NewReader(body, boundary)
		for {
			part, err := mr.NextRawPart()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("%s: %w", mediaType, err)
			}
			if err := m.readPart(part.Header, part, depth+1); err != nil {
				return err
			}
		}
	}

	decoded, err := decodeTransfer(h.Get("Content-Transfer-Encoding"), body)
	if err != nil {
		return fmt.Errorf("%s part: %w", mediaType, err)
	}
	if isAttachment(h) {
		return nil
	}
	switch {
	case mediaType == "text/plain" && m.Text == "":
		m.Text = toText(decoded, params["charset"])
	case mediaType == "text/html" && m.HTML == "":
		m.HTML = toText(decoded, params["charset"])
	}
	return nil
}

func isAttachment(h textproto.MIMEHeader) bool {
	cd := h.Get("Content-Disposition")
	if cd == "" {
		return false
	}
	disposition, _, err := mime.ParseMediaType(cd)
	return err == nil && disposition == "attachment"
}

// decodeTransfer undoes a Content-Transfer-Encoding.
func decodeTransfer(encoding string, body io.Reader) ([]byte, error) {
	switch strings.ToLower(strings.TrimSpace(encoding)) {
	case "", "7bit", "8bit", "binary":
	case "quoted-printable":
		body = quotedprintable.NewReader(body)
	case "base64":
		body = base64.NewDecoder(base64.StdEncoding, &base64Filter{r: body})
	default:
		return nil, fmt.Errorf("unknown Content-Transfer-Encoding %q", encoding)
	}
	b, err := io.ReadAll(body)
	if err != nil {
		if encoding == "" {
			return nil, fmt.Errorf("read body: %w", err)
		}
		return nil, fmt.Errorf("decode %s body: %w", encoding, err)
	}
	return b, nil
}

// base64Filter drops the whitespace senders put into base64 bodies besides
// the line breaks encoding/base64 already skips.
type base64Filter struct{ r io.Reader }

func (f *base64Filter) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	kept := 0
	for _, c := range p[:n] {
		if c != ' ' && c != '\t' {
			p[kept] = c
			kept++
		}
	}
	return kept, err
}

// toText turns a decoded body into UTF-8 text with \n line ends. UTF-8,
// US-ASCII and ISO-8859-1 are converted; other charsets are kept byte for
// byte, with invalid UTF-8 replaced.
func toText(b []byte, charset string) string {
	var s string
	switch strings.ToLower(charset) {
	case "iso-8859-1", "latin1":
		s = latin1(b)
	default:
		s = strings.ToValidUTF8(string(b), string(utf8.RuneError))
	}
	return strings.ReplaceAll(s, "\r\n", "\n")
}

func latin1(b []byte) string {
	var sb strings.Builder
	sb.Grow(len(b))
	for _, c := range b {
		sb.WriteRune(rune(c))
	}
	return sb.String()
}
