package inbox_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/smtp"
	"net/textproto"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/doorbell/doorbell/devstack/inbox"
)

func startInbox(t *testing.T, withTLS bool) *inbox.Inbox {
	t.Helper()
	in, err := inbox.Start(inbox.Config{SMTPAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", TLS: withTLS}, nil)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := in.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return in
}

type envelope struct {
	from string
	to   []string
	body string // with \n line ends
}

// send delivers one message with net/smtp, over STARTTLS when tlsConfig is
// not nil.
func send(in *inbox.Inbox, tlsConfig *tls.Config, e envelope) error {
	c, err := smtp.Dial(in.SMTPAddr())
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		return err
	}
	if tlsConfig != nil {
		if err := c.StartTLS(tlsConfig); err != nil {
			return err
		}
	}
	if err := c.Mail(e.from); err != nil {
		return err
	}
	for _, to := range e.to {
		if err := c.Rcpt(to); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, strings.ReplaceAll(e.body, "\n", "\r\n")); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

func trusting(t *testing.T, in *inbox.Inbox, serverName string) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(in.CertPEM()) {
		t.Fatalf("CertPEM is not a PEM certificate: %q", in.CertPEM())
	}
	return &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12}
}

const simple = "From: Doorbell <doorbell@localhost>\nTo: ada@example.test\nSubject: Hello\nMessage-ID: <abc@doorbell>\n\nHi Ada.\n"

func TestReceivesMail(t *testing.T) {
	tests := []struct {
		name       string
		inboxTLS   bool
		serverName string // STARTTLS with this name when not empty
	}{
		{"over STARTTLS, trusting CertPEM for 127.0.0.1", true, "127.0.0.1"},
		{"over STARTTLS, trusting CertPEM for localhost", true, "localhost"},
		{"in plain text when TLS is off", false, ""},
		{"in plain text even when TLS is offered", true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := startInbox(t, tt.inboxTLS)
			if (in.CertPEM() != nil) != tt.inboxTLS {
				t.Fatalf("CertPEM() = %q with TLS %v", in.CertPEM(), tt.inboxTLS)
			}
			var tlsConfig *tls.Config
			if tt.serverName != "" {
				tlsConfig = trusting(t, in, tt.serverName)
			}
			before := time.Now().Add(-time.Second)
			err := send(in, tlsConfig, envelope{from: "doorbell@localhost", to: []string{"ada@example.test", "bob@example.test"}, body: simple})
			if err != nil {
				t.Fatalf("send: %v", err)
			}
			msgs := in.Messages()
			if len(msgs) != 1 {
				t.Fatalf("inbox holds %d messages, want 1", len(msgs))
			}
			m := msgs[0]
			if m.ID == "" || m.From != "doorbell@localhost" || strings.Join(m.To, ",") != "ada@example.test,bob@example.test" {
				t.Errorf("envelope = id %q from %q to %v", m.ID, m.From, m.To)
			}
			if m.Subject != "Hello" || m.MessageID != "<abc@doorbell>" || m.Text != "Hi Ada.\n" {
				t.Errorf("message = subject %q id %q text %q", m.Subject, m.MessageID, m.Text)
			}
			if m.TLS != (tlsConfig != nil) {
				t.Errorf("TLS = %v, want %v", m.TLS, tlsConfig != nil)
			}
			if m.ReceivedAt.Before(before) {
				t.Errorf("ReceivedAt = %v, before the message was sent", m.ReceivedAt)
			}
		})
	}
}

func TestSTARTTLSIsNotOfferedWhenTLSIsOff(t *testing.T) {
	in := startInbox(t, false)
	c, err := smtp.Dial(in.SMTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS offered with TLS off")
	}
}

func TestCertificateIsTrustedOnlyWhenTrusted(t *testing.T) {
	in := startInbox(t, true)
	other := startInbox(t, true)
	// Trusting another inbox's certificate must not be enough.
	err := send(in, trusting(t, other, "127.0.0.1"), envelope{from: "a@b.test", to: []string{"c@d.test"}, body: simple})
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("send trusting the wrong certificate: %v, want an unknown-authority error", err)
	}
	if n := len(in.Messages()); n != 0 {
		t.Errorf("inbox holds %d messages after a failed handshake", n)
	}
}

func TestRefuses(t *testing.T) {
	in := startInbox(t, false)
	many := make([]string, inbox.MaxRecipients+1)
	for i := range many {
		many[i] = "r@example.test"
	}
	tests := []struct {
		name     string
		envelope envelope
		code     int
	}{
		{"too many recipients", envelope{from: "a@b.test", to: many, body: simple}, 452},
		{"a message over the size limit", envelope{from: "a@b.test", to: []string{"c@d.test"},
			body: simple + strings.Repeat(strings.Repeat("x", 76)+"\n", inbox.MaxMessageBytes/77+10)}, 552},
		{"a multipart message without boundary", envelope{from: "a@b.test", to: []string{"c@d.test"},
			body: "Subject: x\nContent-Type: multipart/alternative\n\nbody\n"}, 554},
		{"an unknown transfer encoding", envelope{from: "a@b.test", to: []string{"c@d.test"},
			body: "Subject: x\nContent-Transfer-Encoding: rot13\n\nobql\n"}, 554},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := send(in, nil, tt.envelope)
			var perr *textproto.Error
			if !errors.As(err, &perr) || perr.Code != tt.code {
				t.Fatalf("send: %v, want SMTP code %d", err, tt.code)
			}
		})
	}
	if n := len(in.Messages()); n != 0 {
		t.Errorf("inbox holds %d refused messages", n)
	}
}

func getJSON(t *testing.T, rawURL string, v any) int {
	t.Helper()
	resp, err := http.Get(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q", rawURL, ct)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("%s: %v", rawURL, err)
	}
	return resp.StatusCode
}

func TestJSONAPI(t *testing.T) {
	in := startInbox(t, false)
	for _, to := range []string{"ada@example.test", "bob@example.test", "Ada@Example.test"} {
		if err := send(in, nil, envelope{from: "doorbell@localhost", to: []string{to}, body: simple}); err != nil {
			t.Fatal(err)
		}
	}
	api := in.HTTPURL() + "/api/messages"

	tests := []struct {
		name  string
		query string
		want  []string // recipients, in order
	}{
		{"everything, oldest first", "", []string{"ada@example.test", "bob@example.test", "Ada@Example.test"}},
		{"filtered by recipient, ignoring case", "?to=" + url.QueryEscape("ADA@example.test"), []string{"ada@example.test", "Ada@Example.test"}},
		{"filtered to nobody is an empty array", "?to=nobody@example.test", []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []inbox.Message
			if status := getJSON(t, api+tt.query, &got); status != http.StatusOK {
				t.Fatalf("status %d", status)
			}
			if got == nil {
				t.Fatal("API returned null, want an array")
			}
			var to []string
			for _, m := range got {
				to = append(to, m.To...)
			}
			if strings.Join(to, " ") != strings.Join(tt.want, " ") {
				t.Errorf("recipients = %v, want %v", to, tt.want)
			}
		})
	}

	first := in.Messages()[0]
	var one inbox.Message
	if status := getJSON(t, api+"/"+first.ID, &one); status != http.StatusOK || one.ID != first.ID || one.Subject != "Hello" {
		t.Errorf("GET one: status %d message %+v", status, one)
	}
	var notFound map[string]string
	if status := getJSON(t, api+"/nope", &notFound); status != http.StatusNotFound {
		t.Errorf("GET unknown id: status %d", status)
	}

	req, _ := http.NewRequest(http.MethodDelete, api, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("DELETE status %d", resp.StatusCode)
	}
	if n := len(in.Messages()); n != 0 {
		t.Errorf("after DELETE the inbox holds %d messages", n)
	}
	var after []inbox.Message
	getJSON(t, api, &after)
	if after == nil || len(after) != 0 {
		t.Errorf("after DELETE the API lists %v, want []", after)
	}
}

func TestMessagesIsASnapshot(t *testing.T) {
	in := startInbox(t, false)
	if err := send(in, nil, envelope{from: "a@b.test", to: []string{"c@d.test"}, body: simple}); err != nil {
		t.Fatal(err)
	}
	m := in.Messages()
	m[0].To[0] = "changed"
	m[0].Headers["Subject"][0] = "changed"
	again := in.Messages()[0]
	if again.To[0] != "c@d.test" || again.Headers["Subject"][0] != "Hello" {
		t.Errorf("changing a snapshot changed the inbox: %+v", again)
	}
}

func fetchPage(t *testing.T, rawURL string) (int, string) {
	t.Helper()
	resp, err := http.Get(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// srcdoc returns the srcdoc attribute of the page's sandboxed iframe as a
// browser would read it, failing if the iframe is not sandboxed.
func srcdoc(t *testing.T, page string) string {
	t.Helper()
	doc, err := html.Parse(strings.NewReader(page))
	if err != nil {
		t.Fatal(err)
	}
	var found *html.Node
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode && n.Data == "iframe" && found == nil {
			found = n
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	if found == nil {
		t.Fatalf("no iframe on the page:\n%s", page)
	}
	var sandboxed bool
	var value string
	for _, a := range found.Attr {
		switch a.Key {
		case "sandbox":
			sandboxed = a.Val == ""
		case "srcdoc":
			value = a.Val
		}
	}
	if !sandboxed {
		t.Errorf("iframe is not fully sandboxed: %v", found.Attr)
	}
	return value
}

func TestWebPagesEscapeEverything(t *testing.T) {
	in := startInbox(t, false)
	const hostileHTML = `<p>Hi</p>"><script>alert(1)</script><img src=x onerror=alert(2)>`
	body := "From: x@y.test\nTo: ada@example.test\nSubject: <script>alert('subject')</script>\n" +
		"Message-ID: <\"><script>alert(3)</script>@x>\nMIME-Version: 1.0\n" +
		"Content-Type: multipart/alternative; boundary=b\n\n" +
		"--b\nContent-Type: text/plain; charset=utf-8\n\n</pre><script>alert(4)</script>\n" +
		"--b\nContent-Type: text/html; charset=utf-8\n\n" + hostileHTML + "\n--b--\n"
	if err := send(in, nil, envelope{from: "x@y.test", to: []string{`"<script>alert(5)</script>"@example.test`}, body: body}); err != nil {
		t.Fatal(err)
	}
	m := in.Messages()[0]

	status, list := fetchPage(t, in.HTTPURL()+"/")
	if status != http.StatusOK || !strings.Contains(list, "&lt;script&gt;alert(&#39;subject&#39;)&lt;/script&gt;") {
		t.Errorf("list page: status %d, want the escaped subject:\n%s", status, list)
	}
	status, page := fetchPage(t, in.HTTPURL()+"/messages/"+m.ID)
	if status != http.StatusOK {
		t.Fatalf("message page status %d", status)
	}
	for name, p := range map[string]string{"list page": list, "message page": page} {
		if strings.Contains(p, "<script") || strings.Contains(p, "<img") {
			t.Errorf("%s has unescaped markup:\n%s", name, p)
		}
	}
	if got := srcdoc(t, page); got != m.HTML || !strings.Contains(got, "<script>alert(1)") {
		t.Errorf("iframe srcdoc = %q, want the HTML part %q", got, m.HTML)
	}
	if status, _ := fetchPage(t, in.HTTPURL()+"/messages/999"); status != http.StatusNotFound {
		t.Errorf("unknown message: status %d", status)
	}
}

func TestCloseFreesThePortsAndStartReportsTakenOnes(t *testing.T) {
	in, err := inbox.Start(inbox.Config{SMTPAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	smtpAddr := in.SMTPAddr()
	httpAddr := strings.TrimPrefix(in.HTTPURL(), "http://")

	if _, err := inbox.Start(inbox.Config{SMTPAddr: smtpAddr, HTTPAddr: "127.0.0.1:0"}, nil); err == nil ||
		!strings.Contains(err.Error(), "SMTP on "+smtpAddr) || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("Start on a taken SMTP port: %v", err)
	}
	if _, err := inbox.Start(inbox.Config{SMTPAddr: "127.0.0.1:0", HTTPAddr: httpAddr}, nil); err == nil ||
		!strings.Contains(err.Error(), "HTTP on "+httpAddr) {
		t.Errorf("Start on a taken HTTP port: %v", err)
	}

	if err := in.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := in.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	again, err := inbox.Start(inbox.Config{SMTPAddr: smtpAddr, HTTPAddr: httpAddr}, nil)
	if err != nil {
		t.Fatalf("Start on the ports of a closed inbox: %v", err)
	}
	if err := again.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestCloseEndsIdleSessions(t *testing.T) {
	in, err := inbox.Start(inbox.Config{SMTPAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dialAndSay(t, in, "EHLO idle.test")
	// The client now sits idle; Close must not wait for it forever.
	done := make(chan error, 1)
	go func() { done <- in.Close() }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Close hangs on an idle SMTP session")
	}
}

// A client that switched to TLS and then sits idle is ended by Close too:
// STARTTLS ends the SMTP session it began with, and the connection must
// not drop out of what Close ends with it.
func TestCloseEndsIdleSessionsAfterSTARTTLS(t *testing.T) {
	in, err := inbox.Start(inbox.Config{SMTPAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", TLS: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn := dialAndSay(t, in, "EHLO idle.test", "STARTTLS")
	tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // the inbox's throwaway certificate
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	// The client now sits idle inside TLS.
	if err := in.Close(); err != nil {
		t.Logf("Close: %v", err) // it reports the session it had to cut
	}
	_ = tc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := tc.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after Close the session is still open: read = %v", err)
	}
}

// dialAndSay opens an SMTP session with the inbox and sends each command,
// checking that it succeeds; the connection closes when the test ends.
func dialAndSay(t *testing.T, in *inbox.Inbox, cmds ...string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", in.SMTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := textproto.NewConn(conn)
	if _, _, err := c.ReadResponse(220); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range cmds {
		if _, err := c.Cmd("%s", cmd); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.ReadResponse(2); err != nil { // 250 or 220
			t.Fatalf("%s: %v", cmd, err)
		}
	}
	return conn
}
