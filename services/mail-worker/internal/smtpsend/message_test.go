package smtpsend

import (
	"bufio"
	"bytes"
	"context"
	"mime"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/doorbell/doorbell/services/mail-worker/internal/smtptest"
)

// What compose writes is read back, by the standard library's readers, as
// what went in: the headers, the name, both alternatives to the byte.
func TestComposeIsReadBackAsWritten(t *testing.T) {
	from := &mail.Address{Name: "Doorbell", Address: "doorbell@example.com"}
	long := strings.Repeat("word ", 40)
	tests := []struct {
		name string
		m    Message
	}{
		{"plain ASCII", message("evt-1")},
		{"Korean subject and name, a language", Message{EventID: "evt-2", ToName: "김민수", ToAddr: "minsu@example.com",
			Subject: "새 기기에서 Doorbell에 로그인했습니다 — 새 기기에서 Doorbell에 로그인했습니다", Text: "민수님, 안녕하세요.\n", HTML: "<p>민수님</p>\n", Lang: "ko"}},
		{"a name with quotes and brackets", Message{EventID: "evt-3", ToName: `Eve "the" <Hacker>, Esq.`, ToAddr: "eve@example.com",
			Subject: "Hello", Text: "x", HTML: "y"}},
		{"a subject that looks encoded", Message{EventID: "evt-4", ToAddr: "ann@example.com",
			Subject: "=?UTF-8?q?not_an_encoded_word?= " + strings.Repeat("잘 ", 30) + "=?", Text: "x", HTML: "y"}},
		{"lines that begin with a period, long lines, trailing spaces", Message{EventID: "evt-5", ToAddr: "ann@example.com",
			Subject: "Long " + strings.TrimSpace(long), Text: ".\n..hidden\n.\r\nend with spaces   \n" + long + long + "\n",
			HTML: "<p>" + long + long + "</p>\n.<p>x</p>"}},
		{"the longest event id", message(strings.Repeat("e", 128))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, id, err := compose(new(bytes.Buffer), from, "example.com", tt.m, time.Date(2026, 12, 6, 7, 0, 0, 0, time.UTC))
			if err != nil {
				t.Fatal(err)
			}
			for i, line := range strings.Split(strings.TrimSuffix(string(data), "\r\n"), "\r\n") {
				if strings.ContainsAny(line, "\r\n") {
					t.Errorf("line %d holds a bare CR or LF: %q", i+1, line)
				}
				if len(line) > 78 && strings.Contains(strings.TrimSpace(line), " ") { // one long word may not fold
					t.Errorf("line %d is %d bytes long: %q", i+1, len(line), line)
				}
			}
			msg, err := mail.ReadMessage(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			dec := new(mime.WordDecoder)
			subject, err := dec.DecodeHeader(msg.Header.Get("Subject"))
			if err != nil || subject != tt.m.Subject {
				t.Errorf("Subject read back as %q (%v), want %q", subject, err, tt.m.Subject)
			}
			to, err := msg.Header.AddressList("To")
			if err != nil || len(to) != 1 || to[0].Name != displayName(tt.m.ToName) || to[0].Address != tt.m.ToAddr {
				t.Errorf("To read back as %v (%v), want %q <%s>", to, err, displayName(tt.m.ToName), tt.m.ToAddr)
			}
			if got := msg.Header.Get("Message-Id"); got != id || id != "<"+tt.m.EventID+"@example.com>" {
				t.Errorf("Message-ID %q, returned %q", got, id)
			}
			if got := msg.Header.Get("Content-Language"); got != tt.m.Lang {
				t.Errorf("Content-Language %q, want %q", got, tt.m.Lang)
			}
			if d, err := msg.Header.Date(); err != nil || !d.Equal(time.Date(2026, 12, 6, 7, 0, 0, 0, time.UTC)) {
				t.Errorf("Date read back as %v (%v)", d, err)
			}
			if _, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type")); err != nil || len(params["boundary"]) > 70 {
				t.Errorf("boundary %q (%v): RFC 2046 allows at most 70 characters", params["boundary"], err)
			}
			parts := alternatives(t, data)
			crlf := strings.NewReplacer("\r\n", "\r\n", "\n", "\r\n")
			if got, want := parts["text/plain"], crlf.Replace(tt.m.Text); got != want {
				t.Errorf("text read back as %q, want %q", got, want)
			}
			if got, want := parts["text/html"], crlf.Replace(tt.m.HTML); got != want {
				t.Errorf("HTML read back as %q, want %q", got, want)
			}
		})
	}
}

// The content of DATA is dot-stuffed, and a relay gives back the lines
// that begin with a period as they were written.
func TestLinesThatBeginWithAPeriodArriveIntact(t *testing.T) {
	var b bytes.Buffer
	w := bufio.NewWriter(&b)
	_ = writeData(w, []byte(".\r\n..x\r\na.b\r\n.last"))
	_ = w.Flush()
	if got, want := b.String(), "..\r\n...x\r\na.b\r\n..last\r\n"; got != want {
		t.Errorf("writeData wrote %q, want %q", got, want)
	}

	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
	s, _ := newSender(t, srv, nil)
	m := message("evt-dots")
	m.Text = ".\n.. two\nmiddle\n."
	if _, err := s.Send(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if got := alternatives(t, srv.Messages()[0].Data)["text/plain"]; got != ".\r\n.. two\r\nmiddle\r\n." {
		t.Errorf("the relay stored the text as %q", got)
	}
}
