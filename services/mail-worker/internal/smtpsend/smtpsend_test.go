package smtpsend

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/doorbell/doorbell/services/mail-worker/internal/smtptest"
)

const waitLong = 30 * time.Second

func newSender(t *testing.T, srv *smtptest.Server, mutate func(*Config)) (*Sender, *Metrics) {
	t.Helper()
	cfg := Config{
		Host:    srv.Host,
		Port:    srv.Port,
		TLS:     TLSMandatory,
		CAFile:  srv.CAFile,
		Timeout: 10 * time.Second,
		From:    "Doorbell <doorbell@example.com>",
		HELO:    "worker.test",
	}
	if mutate != nil {
		mutate(&cfg)
	}
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, m
}

func message(eventID string) Message {
	return Message{
		EventID: eventID,
		ToName:  "Ann Example",
		ToAddr:  "ann@example.com",
		Subject: "Welcome to Doorbell",
		Text:    "Hello Ann, plain text.",
		HTML:    "<p>Hello Ann, <b>html</b>.</p>",
	}
}

func TestSendOverSTARTTLS(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.RequireStartTLS})
	s, m := newSender(t, srv, nil)

	rcpt, err := s.Send(context.Background(), message("0190c4b2-7d3e-7abc-8def-0123456789ab"))
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if want := "<0190c4b2-7d3e-7abc-8def-0123456789ab@example.com>"; rcpt.MessageID != want {
		t.Errorf("receipt Message-ID = %q, want %q", rcpt.MessageID, want)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("server holds %d messages, want 1", len(msgs))
	}
	got := msgs[0]
	if !got.TLS {
		t.Error("the message travelled unencrypted")
	}
	if got.From != "doorbell@example.com" || len(got.To) != 1 || got.To[0] != "ann@example.com" {
		t.Errorf("envelope from %q to %v", got.From, got.To)
	}
	h := got.Header(t)
	wantHeaders := map[string]string{
		"Message-Id":          "<0190c4b2-7d3e-7abc-8def-0123456789ab@example.com>",
		"X-Doorbell-Event-Id": "0190c4b2-7d3e-7abc-8def-0123456789ab",
		"Auto-Submitted":      "auto-generated",
		"Subject":             "Welcome to Doorbell",
	}
	for k, want := range wantHeaders {
		if v := h.Get(k); v != want {
			t.Errorf("header %s = %q, want %q", k, v, want)
		}
	}
	to, err := h.AddressList("To")
	if err != nil || len(to) != 1 || to[0].Name != "Ann Example" || to[0].Address != "ann@example.com" {
		t.Errorf("To = %v (%v), want Ann Example <ann@example.com>", to, err)
	}
	from, err := h.AddressList("From")
	if err != nil || len(from) != 1 || from[0].Address != "doorbell@example.com" {
		t.Errorf("From = %v (%v)", from, err)
	}
	if _, err := h.Date(); err != nil {
		t.Errorf("Date header: %v", err)
	}
	parts := alternatives(t, got.Data)
	if !strings.Contains(parts["text/plain"], "plain text") || !strings.Contains(parts["text/html"], "<b>html</b>") {
		t.Errorf("alternatives = %v, want text/plain and text/html bodies", parts)
	}

	if v := testutil.ToFloat64(m.attempts.WithLabelValues(OutcomeSuccess)); v != 1 {
		t.Errorf("send_attempts_total{outcome=success} = %v, want 1", v)
	}
	if v := testutil.ToFloat64(m.lastSuccess); v <= 0 {
		t.Errorf("last_success_timestamp_seconds = %v, want a time", v)
	}
	if err := s.Status(); err != nil {
		t.Errorf("Status after a send = %v, want nil", err)
	}
}

func TestSendTLSModes(t *testing.T) {
	tests := []struct {
		name      string
		server    smtptest.TLS
		mode      TLSMode
		noCA      bool
		wantErr   bool
		wantTLS   bool
		wantInErr string
	}{
		{name: "mandatory refuses a server without STARTTLS", server: smtptest.NoTLS, mode: TLSMandatory,
			wantErr: true, wantInErr: "STARTTLS"},
		{name: "mandatory refuses a certificate it does not trust", server: smtptest.StartTLS, mode: TLSMandatory,
			noCA: true, wantErr: true, wantInErr: "tls certificate not trusted"},
		{name: "opportunistic uses STARTTLS when offered", server: smtptest.StartTLS, mode: TLSOpportunistic, wantTLS: true},
		{name: "opportunistic sends in plain text when not offered", server: smtptest.NoTLS, mode: TLSOpportunistic},
		{name: "opportunistic still verifies the certificate", server: smtptest.StartTLS, mode: TLSOpportunistic,
			noCA: true, wantErr: true, wantInErr: "tls certificate not trusted"},
		{name: "implicit speaks TLS from the first byte", server: smtptest.Implicit, mode: TLSImplicit, wantTLS: true},
		{name: "implicit refuses a certificate it does not trust", server: smtptest.Implicit, mode: TLSImplicit,
			noCA: true, wantErr: true, wantInErr: "tls certificate not trusted"},
		{name: "none never starts TLS", server: smtptest.StartTLS, mode: TLSNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := smtptest.Start(t, smtptest.Options{TLS: tt.server})
			s, m := newSender(t, srv, func(c *Config) {
				c.TLS = tt.mode
				if tt.noCA {
					c.CAFile = ""
				}
			})
			_, err := s.Send(context.Background(), message("evt-1"))
			if tt.wantErr {
				if err == nil {
					t.Fatal("Send succeeded, want an error")
				}
				if !errors.Is(err, ErrTransient) {
					t.Errorf("a failure to set up the session should be transient, got %v", err)
				}
				if !strings.Contains(err.Error(), tt.wantInErr) {
					t.Errorf("error %q does not mention %q", err, tt.wantInErr)
				}
				if n := len(srv.Messages()); n != 0 {
					t.Errorf("server accepted %d messages, want 0", n)
				}
				if s.Status() == nil {
					t.Error("Status is healthy after a failed session")
				}
				if v := testutil.ToFloat64(m.connections); v != 0 {
					t.Errorf("smtp_connections_open = %v after a failed dial, want 0", v)
				}
				return
			}
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			msgs := srv.Messages()
			if len(msgs) != 1 {
				t.Fatalf("server holds %d messages, want 1", len(msgs))
			}
			if msgs[0].TLS != tt.wantTLS {
				t.Errorf("message encrypted = %v, want %v", msgs[0].TLS, tt.wantTLS)
			}
		})
	}
}

func TestSendClassifiesFailures(t *testing.T) {
	tests := []struct {
		name          string
		code          int  // scripted reply to RCPT TO; 0 for none
		refused       bool // nothing listens on the port
		wantTransient bool
		wantCode      int
		wantReason    string
		wantOutcome   string
	}{
		{name: "451 is transient", code: 451, wantTransient: true, wantCode: 451, wantReason: "smtp 451", wantOutcome: OutcomeTransient},
		{name: "421 is transient", code: 421, wantTransient: true, wantCode: 421, wantReason: "smtp 421", wantOutcome: OutcomeTransient},
		{name: "550 is permanent", code: 550, wantTransient: false, wantCode: 550, wantReason: "smtp 550", wantOutcome: OutcomePermanent},
		{name: "553 is permanent", code: 553, wantTransient: false, wantCode: 553, wantReason: "smtp 553", wantOutcome: OutcomePermanent},
		{name: "connection refused is transient", refused: true, wantTransient: true, wantReason: "connection refused", wantOutcome: OutcomeTransient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
			s, m := newSender(t, srv, func(c *Config) {
				if tt.refused {
					c.Port = smtptest.ClosedPort(t)
				}
			})
			if tt.code != 0 {
				srv.FailNext(1, tt.code)
			}
			_, err := s.Send(context.Background(), message("evt-1"))
			var se *Error
			if !errors.As(err, &se) {
				t.Fatalf("Send error = %v, want a *smtpsend.Error", err)
			}
			if se.Transient != tt.wantTransient {
				t.Errorf("Transient = %v, want %v (%v)", se.Transient, tt.wantTransient, err)
			}
			if errors.Is(err, ErrTransient) != tt.wantTransient || errors.Is(err, ErrPermanent) == tt.wantTransient {
				t.Errorf("sentinels do not match the classification: %v", err)
			}
			if se.Code != tt.wantCode {
				t.Errorf("Code = %d, want %d", se.Code, tt.wantCode)
			}
			if se.Reason != tt.wantReason {
				t.Errorf("Reason = %q, want %q", se.Reason, tt.wantReason)
			}
			if v := testutil.ToFloat64(m.attempts.WithLabelValues(tt.wantOutcome)); v != 1 {
				t.Errorf("send_attempts_total{outcome=%s} = %v, want 1", tt.wantOutcome, v)
			}
			if n := len(srv.Messages()); n != 0 {
				t.Errorf("server accepted %d messages, want 0", n)
			}
			if !tt.refused {
				// The relay answers again: the next send goes through.
				if _, err := s.Send(context.Background(), message("evt-2")); err != nil {
					t.Fatalf("second Send: %v", err)
				}
			}
		})
	}
}

func TestSendReusesOneConnection(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.RequireStartTLS})
	s, m := newSender(t, srv, nil)
	for _, id := range []string{"evt-1", "evt-2", "evt-3"} {
		if _, err := s.Send(context.Background(), message(id)); err != nil {
			t.Fatalf("Send %s: %v", id, err)
		}
	}
	if n := len(srv.Messages()); n != 3 {
		t.Fatalf("server holds %d messages, want 3", n)
	}
	if n := srv.Connections(); n != 1 {
		t.Errorf("three sends used %d connections, want 1", n)
	}
	if v := testutil.ToFloat64(m.connections); v != 1 {
		t.Errorf("smtp_connections_open = %v, want 1", v)
	}
}

func TestSendRedialsAfterAFailure(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
	s, _ := newSender(t, srv, nil)
	srv.FailNext(1, 550)
	if _, err := s.Send(context.Background(), message("evt-1")); !errors.Is(err, ErrPermanent) {
		t.Fatalf("first Send error = %v, want permanent", err)
	}
	if _, err := s.Send(context.Background(), message("evt-2")); err != nil {
		t.Fatalf("second Send: %v", err)
	}
	if n := srv.Connections(); n != 2 {
		t.Errorf("connections = %d, want 2 (one closed after the failure, one new)", n)
	}
}

func TestIdleConnectionIsClosed(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
	s, m := newSender(t, srv, func(c *Config) { c.IdleTimeout = 50 * time.Millisecond })
	if _, err := s.Send(context.Background(), message("evt-1")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitLong)
	for testutil.ToFloat64(m.connections) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the idle connection was never closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := s.Send(context.Background(), message("evt-2")); err != nil {
		t.Fatal(err)
	}
	if n := srv.Connections(); n != 2 {
		t.Errorf("connections = %d, want 2 (a new one after the idle close)", n)
	}
}

func TestSendWithAuth(t *testing.T) {
	tests := []struct {
		name     string
		password string
		wantErr  bool
	}{
		{"the right password sends", "s3cret", false},
		{"a wrong password is a transient relay problem", "wrong", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.RequireStartTLS, Username: "worker", Password: "s3cret"})
			s, _ := newSender(t, srv, func(c *Config) { c.Username, c.Password = "worker", tt.password })
			_, err := s.Send(context.Background(), message("evt-1"))
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("Send: %v", err)
				}
				if n := len(srv.Messages()); n != 1 {
					t.Errorf("server holds %d messages, want 1", n)
				}
				return
			}
			if !errors.Is(err, ErrTransient) {
				t.Fatalf("Send error = %v, want transient", err)
			}
			if strings.Contains(err.Error(), tt.password) {
				t.Errorf("error reveals the password: %v", err)
			}
		})
	}
}

func TestSendRefusesBadMessages(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
	tests := []struct {
		name   string
		mutate func(*Message)
	}{
		{"an address with a display name", func(m *Message) { m.ToAddr = "Ann <ann@example.com>" }},
		{"an address with CRLF", func(m *Message) { m.ToAddr = "ann@example.com\r\nBcc: eve@example.com" }},
		{"an empty address", func(m *Message) { m.ToAddr = "" }},
		{"an event id with a space", func(m *Message) { m.EventID = "evt 1" }},
		{"an event id with angle brackets", func(m *Message) { m.EventID = "evt>1<" }},
		{"an empty event id", func(m *Message) { m.EventID = "" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newSender(t, srv, nil)
			msg := message("evt-1")
			tt.mutate(&msg)
			if _, err := s.Send(context.Background(), msg); !errors.Is(err, ErrPermanent) {
				t.Errorf("Send error = %v, want permanent", err)
			}
		})
	}
	if n := len(srv.Messages()); n != 0 {
		t.Errorf("server accepted %d messages, want 0", n)
	}
}

func TestDisplayNameCannotInjectHeaders(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
	s, _ := newSender(t, srv, nil)
	msg := message("evt-1")
	msg.ToName = "Eve \"the\" <Hacker>\r\nBcc: victim@example.com"
	if _, err := s.Send(context.Background(), msg); err != nil {
		t.Fatalf("Send: %v", err)
	}
	got := srv.Messages()[0]
	h := got.Header(t)
	if v := h.Get("Bcc"); v != "" {
		t.Errorf("a display name injected a Bcc header: %q", v)
	}
	if len(got.To) != 1 {
		t.Errorf("envelope recipients = %v, want only the event's address", got.To)
	}
	to, err := h.AddressList("To")
	if err != nil || len(to) != 1 || to[0].Address != "ann@example.com" || !strings.Contains(to[0].Name, `Eve "the" <Hacker>`) {
		t.Errorf("To = %v (%v)", to, err)
	}
}

func TestCheck(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.RequireStartTLS})
	s, m := newSender(t, srv, nil)
	if err := s.Status(); !errors.Is(err, ErrNotChecked) {
		t.Errorf("Status before any check = %v, want ErrNotChecked", err)
	}
	if err := s.Check(context.Background()); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if err := s.Status(); err != nil {
		t.Errorf("Status after a good check = %v", err)
	}
	if v := testutil.ToFloat64(m.connections); v != 0 {
		t.Errorf("Check left %v connections open", v)
	}

	down, _ := newSender(t, srv, func(c *Config) { c.Port = smtptest.ClosedPort(t) })
	err := down.Check(context.Background())
	if !errors.Is(err, ErrTransient) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Check against a closed port = %v, want transient connection refused", err)
	}
	if down.Status() == nil {
		t.Error("Status is healthy after a failed check")
	}
}

func TestSendAfterClose(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
	s, _ := newSender(t, srv, nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Send(context.Background(), message("evt-1")); !errors.Is(err, ErrClosed) || !errors.Is(err, ErrTransient) {
		t.Errorf("Send after Close = %v, want transient ErrClosed", err)
	}
}

// alternatives returns the bodies of a multipart/alternative message by
// content type.
func alternatives(t *testing.T, data []byte) map[string]string {
	t.Helper()
	msg, err := mail.ReadMessage(strings.NewReader(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/alternative" {
		t.Fatalf("Content-Type = %q (%v), want multipart/alternative", msg.Header.Get("Content-Type"), err)
	}
	out := make(map[string]string)
	r := multipart.NewReader(msg.Body, params["boundary"])
	for {
		p, err := r.NextPart()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(p) // quoted-printable is decoded by NextPart
		if err != nil {
			t.Fatal(err)
		}
		ct, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		out[ct] = string(b)
	}
}

func TestSendSurvivesAConnectionTheServerDropped(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
	s, m := newSender(t, srv, nil)
	if _, err := s.Send(context.Background(), message("evt-1")); err != nil {
		t.Fatal(err)
	}
	srv.DropConnections()
	if _, err := s.Send(context.Background(), message("evt-2")); err != nil {
		t.Fatalf("Send on a dropped connection: %v", err)
	}
	if n := len(srv.Messages()); n != 2 {
		t.Errorf("server holds %d messages, want 2", n)
	}
	if n := srv.Connections(); n != 2 {
		t.Errorf("connections = %d, want 2", n)
	}
	if v := testutil.ToFloat64(m.attempts.WithLabelValues(OutcomeTransient)); v != 0 {
		t.Errorf("a stale connection counted as a failed attempt: %v", v)
	}
}
