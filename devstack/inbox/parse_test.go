package inbox

import (
	"fmt"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	crlf := func(s string) []byte { return []byte(strings.ReplaceAll(s, "\n", "\r\n")) }
	tests := []struct {
		name               string
		raw                string
		subject, text, htm string
		messageID          string
	}{
		{
			name:    "plain message without MIME headers",
			raw:     "Subject: Hi\nMessage-ID:  <1@x> \n\nline one\nline two\n",
			subject: "Hi", text: "line one\nline two\n", messageID: "<1@x>",
		},
		{
			name: "multipart/alternative with quoted-printable text and base64 html",
			raw: "Subject: =?UTF-8?B?V2lsbGtvbW1lbiwgSsO8cmdlbiDwn5GL?=\nMIME-Version: 1.0\n" +
				"Content-Type: multipart/alternative; boundary=\"XYZ\"\n\n" +
				"preamble\n--XYZ\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: quoted-printable\n\n" +
				"Gr=C3=BC=C3=9Fe, J=C3=BCrgen. A long line that was soft-=\nwrapped.\n" +
				"--XYZ\nContent-Type: text/html; charset=UTF-8\nContent-Transfer-Encoding: base64\n\n" +
				"PHA+R3LDvMOfZSwgPGI+SsO8cmdlbjwv\nYj4uPC9wPg==\n--XYZ--\n",
			subject: "Willkommen, Jürgen 👋", text: "Grüße, Jürgen. A long line that was soft-wrapped.", htm: "<p>Grüße, <b>Jürgen</b>.</p>",
		},
		{
			name: "mixed with nested alternative and a text attachment",
			raw: "Subject: =?utf-8?q?New_sign-in_=E2=80=94_check_it?=\nContent-Type: multipart/mixed; boundary=outer\n\n" +
				"--outer\nContent-Type: multipart/alternative; boundary=inner\n\n" +
				"--inner\nContent-Type: text/plain\n\nthe text\n--inner\nContent-Type: text/html\n\n<p>the html</p>\n--inner--\n" +
				"--outer\nContent-Type: text/plain; name=notes.txt\nContent-Disposition: attachment; filename=notes.txt\n\nattached\n--outer--\n",
			subject: "New sign-in — check it", text: "the text", htm: "<p>the html</p>",
		},
		{
			name:    "ISO-8859-1 body and subject",
			raw:     "Subject: =?ISO-8859-1?Q?Gr=FC=DFe?=\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\nGr=FC=DFe\n",
			subject: "Grüße", text: "Grüße\n",
		},
		{
			name:    "undecodable subject is kept as sent",
			raw:     "Subject: =?x-unknown?Q?abc?=\n\nbody\n",
			subject: "=?x-unknown?Q?abc?=", text: "body\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := parse(crlf(tt.raw))
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if m.Subject != tt.subject {
				t.Errorf("subject = %q, want %q", m.Subject, tt.subject)
			}
			if m.Text != tt.text {
				t.Errorf("text = %q, want %q", m.Text, tt.text)
			}
			if m.HTML != tt.htm {
				t.Errorf("html = %q, want %q", m.HTML, tt.htm)
			}
			if m.MessageID != tt.messageID {
				t.Errorf("message id = %q, want %q", m.MessageID, tt.messageID)
			}
			if len(m.Headers["Subject"]) != 1 {
				t.Errorf("headers = %v, want the Subject header", m.Headers)
			}
		})
	}
}

func TestParseRejectsMalformedMessages(t *testing.T) {
	if m, err := parse([]byte(nested(maxDepth))); err != nil || m.Text != "x" {
		t.Fatalf("parse of multiparts nested %d deep = %q, %v; want it read", maxDepth, m.Text, err)
	}
	tests := []struct{ name, raw, reason string }{
		{"no header block", "this is not a message", "headers"},
		{"bad content type", "Content-Type: text/\x00\r\n\r\nx", "content type"},
		{"multipart without boundary", "Content-Type: multipart/mixed\r\n\r\nx", "without a boundary"},
		{"truncated multipart", "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nx", "unexpected EOF"},
		{"unknown transfer encoding", "Content-Transfer-Encoding: uuencode\r\n\r\nx", "unknown Content-Transfer-Encoding"},
		{"broken base64", "Content-Transfer-Encoding: base64\r\n\r\n!!!notbase64", "decode base64"},
		{"nesting too deep", nested(12), "nested deeper"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse([]byte(tt.raw))
			if err == nil || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("parse error = %v, want one mentioning %q", err, tt.reason)
			}
		})
	}
}

// nested is a message of depth multiparts, each the only part of the one
// around it.
func nested(depth int) string {
	var open, closing strings.Builder
	for d := range depth {
		fmt.Fprintf(&open, "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n", d, d)
		fmt.Fprintf(&closing, "\r\n--b%d--\r\n", depth-1-d)
	}
	return open.String() + "Content-Type: text/plain\r\n\r\nx" + closing.String()
}
