package smtpsend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/doorbell/doorbell/services/mail-worker/internal/smtptest"
)

const waitLong = 30 * time.Second

func newSender(t testing.TB, srv *smtptest.Server, mutate func(*Config)) (*Sender, *Metrics) {
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

func counter(m *Metrics, outcome string) float64 {
	return testutil.ToFloat64(m.attempts.WithLabelValues(outcome))
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

	if v := counter(m, OutcomeSuccess); v != 1 {
		t.Errorf("send_attempts_total{outcome=success} = %v, want 1", v)
	}
	if v := testutil.ToFloat64(m.lastSuccess); v <= 0 {
		t.Errorf("last_success_timestamp_seconds = %v, want a time", v)
	}
	if n := testutil.CollectAndCount(m.poolWait); n != 1 {
		t.Errorf("smtp_pool_wait_seconds has %d series, want 1", n)
	}
	if err := s.Status(); err != nil {
		t.Errorf("Status after a send = %v, want nil", err)
	}
}

func TestSendTLSModes(t *testing.T) {
	tests := []struct {
		name       string
		server     smtptest.TLS
		mode       TLSMode
		noCA       bool
		timeout    time.Duration
		wantErr    bool
		wantConfig bool
		wantTLS    bool
		wantReason string
	}{
		{name: "mandatory refuses a server without STARTTLS", server: smtptest.NoTLS, mode: TLSMandatory,
			wantErr: true, wantConfig: true, wantReason: "no STARTTLS offered"},
		{name: "mandatory refuses a certificate it does not trust", server: smtptest.StartTLS, mode: TLSMandatory,
			noCA: true, wantErr: true, wantConfig: true, wantReason: "tls certificate not trusted"},
		{name: "mandatory against an implicit-TLS port gets no greeting", server: smtptest.Implicit, mode: TLSMandatory,
			timeout: 300 * time.Millisecond, wantErr: true, wantReason: "timeout"},
		{name: "opportunistic uses STARTTLS when offered", server: smtptest.StartTLS, mode: TLSOpportunistic, wantTLS: true},
		{name: "opportunistic sends in plain text when not offered", server: smtptest.NoTLS, mode: TLSOpportunistic},
		{name: "opportunistic still verifies the certificate", server: smtptest.StartTLS, mode: TLSOpportunistic,
			noCA: true, wantErr: true, wantConfig: true, wantReason: "tls certificate not trusted"},
		{name: "implicit speaks TLS from the first byte", server: smtptest.Implicit, mode: TLSImplicit, wantTLS: true},
		{name: "implicit refuses a certificate it does not trust", server: smtptest.Implicit, mode: TLSImplicit,
			noCA: true, wantErr: true, wantConfig: true, wantReason: "tls certificate not trusted"},
		{name: "implicit against a plain-text port says so", server: smtptest.StartTLS, mode: TLSImplicit,
			wantErr: true, wantConfig: true, wantReason: "not a tls server"},
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
				if tt.timeout > 0 {
					c.Timeout = tt.timeout
				}
			})
			_, err := s.Send(context.Background(), message("evt-1"))
			if tt.wantErr {
				var se *Error
				if !errors.As(err, &se) {
					t.Fatalf("Send error = %v, want a *Error", err)
				}
				if !se.Relay || se.Config != tt.wantConfig || se.Reason != tt.wantReason {
					t.Errorf("got relay=%v config=%v reason=%q, want relay, config=%v, reason %q (%v)",
						se.Relay, se.Config, se.Reason, tt.wantConfig, tt.wantReason, err)
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

// TestSendClassifiesWhatTheRelaySays drives each kind of failure through a
// real session and checks what an operator and the consumer see: the
// class, the outcome counter, /readyz, and whether the connection is kept.
func TestSendClassifiesWhatTheRelaySays(t *testing.T) {
	tests := []struct {
		name        string
		script      func(*smtptest.Server)
		refused     bool
		wantRelay   bool
		wantPerm    bool
		wantConfig  bool
		wantMaybe   bool
		wantReason  string
		wantOutcome string
		wantHealthy bool // Status after the failure
		wantConns   int  // connections after the failure and one more send
	}{
		{name: "451 at RCPT is retried later, connection kept",
			script:     func(s *smtptest.Server) { s.FailNext(1, 451) },
			wantReason: "smtp 451 4.0.0", wantOutcome: OutcomeTransient, wantHealthy: true, wantConns: 1},
		{name: "550 at RCPT is permanent, connection kept",
			script:   func(s *smtptest.Server) { s.FailNext(1, 550) },
			wantPerm: true, wantReason: "smtp 550 5.0.0", wantOutcome: OutcomePermanent, wantHealthy: true, wantConns: 1},
		{name: "554 after the data is permanent",
			script:   func(s *smtptest.Server) { s.FailNextAt(smtptest.AtEndOfData, 1, 554, "5.6.0") },
			wantPerm: true, wantReason: "smtp 554 5.6.0", wantOutcome: OutcomePermanent, wantHealthy: true, wantConns: 1},
		{name: "5.7.1 at RCPT alerts and is retried",
			script:     func(s *smtptest.Server) { s.FailNextAt(smtptest.AtRcpt, 1, 550, "5.7.1") },
			wantConfig: true, wantReason: "smtp 550 5.7.1", wantOutcome: OutcomeConfig, wantConns: 1},
		{name: "421 at RCPT replaces the connection",
			script:    func(s *smtptest.Server) { s.FailNextAt(smtptest.AtRcpt, 1, 421, "4.3.2") },
			wantRelay: true, wantReason: "smtp 421 4.3.2", wantOutcome: OutcomeTransient, wantConns: 2},
		{name: "421 at the greeting is the relay's",
			script:    func(s *smtptest.Server) { s.FailNextAt(smtptest.AtGreeting, 1, 421, "4.3.2") },
			wantRelay: true, wantReason: "smtp 421 4.3.2", wantOutcome: OutcomeTransient, wantConns: 1},
		{name: "5.7.1 at MAIL FROM is a relay configuration problem",
			script:    func(s *smtptest.Server) { s.FailNextAt(smtptest.AtMail, 1, 550, "5.7.1") },
			wantRelay: true, wantConfig: true, wantReason: "smtp 550 5.7.1", wantOutcome: OutcomeConfig, wantConns: 1},
		{name: "a drop after the data leaves the outcome unknown, connection replaced",
			script:    func(s *smtptest.Server) { s.DropNextMidData(1) },
			wantMaybe: true, wantReason: "connection closed by server", wantOutcome: OutcomeMaybeSent, wantConns: 2},
		{name: "connection refused is the relay's", refused: true,
			wantRelay: true, wantReason: "connection refused", wantOutcome: OutcomeTransient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
			s, m := newSender(t, srv, func(c *Config) {
				if tt.refused {
					c.Port = smtptest.ClosedPort(t)
				}
			})
			if tt.script != nil {
				tt.script(srv)
			}
			_, err := s.Send(context.Background(), message("evt-1"))
			var se *Error
			if !errors.As(err, &se) {
				t.Fatalf("Send error = %v, want a *Error", err)
			}
			if se.Relay != tt.wantRelay || se.Permanent != tt.wantPerm || se.Config != tt.wantConfig || se.MaybeSent != tt.wantMaybe {
				t.Errorf("relay=%v permanent=%v config=%v maybe sent=%v, want %v %v %v %v (%v)",
					se.Relay, se.Permanent, se.Config, se.MaybeSent, tt.wantRelay, tt.wantPerm, tt.wantConfig, tt.wantMaybe, err)
			}
			if tt.wantReason != "" && se.Reason != tt.wantReason {
				t.Errorf("Reason = %q, want %q", se.Reason, tt.wantReason)
			}
			if tt.wantOutcome != "" {
				if v := counter(m, tt.wantOutcome); v != 1 {
					t.Errorf("send_attempts_total{outcome=%s} = %v, want 1", tt.wantOutcome, v)
				}
			}
			if healthy := s.Status() == nil; healthy != tt.wantHealthy {
				t.Errorf("Status healthy = %v, want %v (%v)", healthy, tt.wantHealthy, s.Status())
			}
			if n := len(srv.Messages()); n != 0 {
				t.Errorf("server accepted %d messages, want 0", n)
			}
			if tt.refused {
				return
			}
			// The relay answers again: the next send goes through.
			if _, err := s.Send(context.Background(), message("evt-2")); err != nil {
				t.Fatalf("second Send: %v", err)
			}
			if n := srv.Connections(); n != tt.wantConns {
				t.Errorf("connections = %d, want %d", n, tt.wantConns)
			}
			if s.Status() != nil {
				t.Errorf("Status after a good send = %v", s.Status())
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

func TestPoolBoundsConcurrentSends(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
	srv.SetDelay(20 * time.Millisecond)
	s, m := newSender(t, srv, func(c *Config) { c.PoolSize = 3 })
	var wg sync.WaitGroup
	errs := make(chan error, 24)
	for i := range 24 {
		wg.Go(func() {
			if _, err := s.Send(context.Background(), message(fmt.Sprintf("evt-%d", i))); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Send: %v", err)
	}
	if n := len(srv.CountByMessageID()); n != 24 {
		t.Errorf("server holds %d distinct messages, want 24", n)
	}
	if n := srv.MaxActive(); n > 3 {
		t.Errorf("%d connections were open at once, want at most the pool size 3", n)
	}
	if n := srv.Connections(); n > 3 {
		t.Errorf("%d connections were opened for 24 emails, want them reused (at most 3)", n)
	}
	if v := testutil.ToFloat64(m.connections); v != float64(srv.Active()) {
		t.Errorf("smtp_connections_open = %v, server sees %d", v, srv.Active())
	}
}

func TestIdleConnectionIsClosed(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
	s, m := newSender(t, srv, func(c *Config) { c.IdleTimeout = 50 * time.Millisecond })
	if _, err := s.Send(context.Background(), message("evt-1")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitLong)
	for testutil.ToFloat64(m.connections) != 0 || srv.Active() != 0 {
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
	if v := counter(m, OutcomeTransient); v != 0 {
		t.Errorf("a stale connection counted as a failed attempt: %v", v)
	}
}

func TestSendRetriesOnceWhenAPooledConnectionSays421(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
	s, _ := newSender(t, srv, nil)
	if _, err := s.Send(context.Background(), message("evt-1")); err != nil {
		t.Fatal(err)
	}
	srv.FailNextAt(smtptest.AtMail, 1, 421, "4.4.2")
	if _, err := s.Send(context.Background(), message("evt-2")); err != nil {
		t.Fatalf("Send after an idle timeout 421: %v", err)
	}
	// Only once: two 421 in a row are the relay's problem.
	srv.FailNextAt(smtptest.AtMail, 2, 421, "4.3.2")
	if _, err := s.Send(context.Background(), message("evt-3")); !errors.Is(err, ErrRelay) {
		t.Fatalf("Send after two 421 = %v, want a relay failure", err)
	}
	if n := len(srv.Messages()); n != 2 {
		t.Errorf("server holds %d messages, want 2", n)
	}
}

func TestStalledRelayTimesOut(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
	// The timeout bounds the session set-up too (TCP, greeting, EHLO,
	// STARTTLS): short enough for the test, long enough that a slow
	// handshake on a busy machine does not end the session before MAIL
	// FROM (a timeout at another stage) or fail the send after the stall.
	s, _ := newSender(t, srv, func(c *Config) { c.Timeout = 5 * time.Second })
	srv.StallNext(1, waitLong) // or until the test ends
	_, err := s.Send(context.Background(), message("evt-1"))
	var se *Error
	if !errors.As(err, &se) || !se.Relay || se.Reason != "timeout" || se.Stage != StageMail {
		t.Fatalf("Send to a stalled relay = %v, want a relay timeout at MAIL FROM", err)
	}
	if _, err := s.Send(context.Background(), message("evt-2")); err != nil {
		t.Fatalf("Send after the stall: %v", err)
	}
}

// A relay that stores the message and answers the final "." only after a
// content scan longer than Timeout: the reply gets FinalTimeout, and the
// email is accepted once.
func TestTheFinalReplyGetsItsOwnTimeout(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
	s, _ := newSender(t, srv, func(c *Config) { c.Timeout = time.Second; c.FinalTimeout = waitLong })
	srv.SetReplyDelay(3 * time.Second)
	if _, err := s.Send(context.Background(), message("evt-slow")); err != nil {
		t.Fatalf("Send to a slow content filter = %v, want accepted", err)
	}
	if n := len(srv.Messages()); n != 1 {
		t.Errorf("server holds %d messages, want 1", n)
	}
}

// When the reply to the final "." does not come within FinalTimeout, the
// outcome is unknown: the relay may hold the email.
func TestNoFinalReplyIsMaybeSent(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
	s, m := newSender(t, srv, func(c *Config) { c.FinalTimeout = 200 * time.Millisecond })
	srv.SetReplyDelay(waitLong)
	_, err := s.Send(context.Background(), message("evt-unknown"))
	var se *Error
	if !errors.As(err, &se) || !se.MaybeSent || se.Relay || se.Stage != StageEndOfData || se.Reason != "timeout" {
		t.Fatalf("Send without a final reply = %v, want maybe sent (timeout at end of data)", err)
	}
	if v := counter(m, OutcomeMaybeSent); v != 1 {
		t.Errorf("send_attempts_total{maybe_sent} = %v, want 1", v)
	}
}

// A send cut by its context before the end-of-data mark delivers nothing
// and returns at once; one past the mark is finished whatever the context
// does.
func TestSendStopsBeforeTheFinalDotButNotAfter(t *testing.T) {
	t.Run("before the mark", func(t *testing.T) {
		srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
		s, _ := newSender(t, srv, func(c *Config) { c.Timeout = waitLong })
		srv.StallNext(1, waitLong) // MAIL FROM hangs
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			for srv.Active() == 0 {
				time.Sleep(5 * time.Millisecond)
			}
			cancel()
		}()
		_, err := s.Send(ctx, message("evt-cut"))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Send cut before the mark = %v, want context.Canceled", err)
		}
		if n := len(srv.Messages()); n != 0 {
			t.Errorf("server holds %d messages, want 0", n)
		}
	})
	t.Run("after the mark", func(t *testing.T) {
		srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
		s, _ := newSender(t, srv, func(c *Config) { c.FinalTimeout = waitLong })
		srv.SetReplyDelay(2 * time.Second)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			srv.WaitForMessages(t, 1, waitLong) // the relay stored it; the reply is pending
			cancel()
		}()
		if _, err := s.Send(ctx, message("evt-finish")); err != nil {
			t.Fatalf("Send cancelled after the mark = %v, want it finished and accepted", err)
		}
		if n := len(srv.Messages()); n != 1 {
			t.Errorf("server holds %d messages, want 1", n)
		}
	})
}

func TestSendWithAuth(t *testing.T) {
	tests := []struct {
		name       string
		offered    []string
		mode       AuthMode
		password   string
		wantMech   string
		wantReason string // empty: success
	}{
		{name: "auto prefers PLAIN over TLS", offered: []string{"CRAM-MD5", "LOGIN", "PLAIN"}, mode: AuthAuto, password: "s3cret", wantMech: "PLAIN"},
		{name: "auto takes LOGIN when it is all there is", offered: []string{"LOGIN"}, mode: AuthAuto, password: "s3cret", wantMech: "LOGIN"},
		{name: "auto takes CRAM-MD5 when it is all there is", offered: []string{"CRAM-MD5"}, mode: AuthAuto, password: "s3cret", wantMech: "CRAM-MD5"},
		{name: "plain", offered: []string{"PLAIN", "LOGIN"}, mode: AuthPlain, password: "s3cret", wantMech: "PLAIN"},
		{name: "login", offered: []string{"PLAIN", "LOGIN"}, mode: AuthLogin, password: "s3cret", wantMech: "LOGIN"},
		{name: "cram-md5", offered: []string{"PLAIN", "CRAM-MD5"}, mode: AuthCRAMMD5, password: "s3cret", wantMech: "CRAM-MD5"},
		{name: "a wrong password is a configuration problem", offered: []string{"PLAIN"}, mode: AuthAuto, password: "wrong",
			wantReason: "smtp 535 5.7.8"},
		{name: "a wrong CRAM-MD5 secret is a configuration problem", offered: []string{"CRAM-MD5"}, mode: AuthCRAMMD5, password: "wrong",
			wantReason: "smtp 535 5.7.8"},
		{name: "a mechanism the relay does not offer is a configuration problem", offered: []string{"PLAIN"}, mode: AuthLogin, password: "s3cret",
			wantReason: "auth mechanism not offered"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.RequireStartTLS, Username: "worker", Password: "s3cret", AuthMechanisms: tt.offered})
			s, m := newSender(t, srv, func(c *Config) { c.Username, c.Password, c.Auth = "worker", tt.password, tt.mode })
			_, err := s.Send(context.Background(), message("evt-1"))
			if tt.wantReason == "" {
				if err != nil {
					t.Fatalf("Send: %v", err)
				}
				if msgs := srv.Messages(); len(msgs) != 1 || msgs[0].Auth != tt.wantMech {
					t.Errorf("messages %d, authenticated with %q, want 1 with %s", len(msgs), msgs[0].Auth, tt.wantMech)
				}
				return
			}
			var se *Error
			if !errors.As(err, &se) || !se.Relay || !se.Config || se.Stage != StageAuth || se.Reason != tt.wantReason {
				t.Fatalf("Send error = %v, want a configuration problem at auth (%s)", err, tt.wantReason)
			}
			if strings.Contains(err.Error(), tt.password) {
				t.Errorf("error reveals the password: %v", err)
			}
			if v := counter(m, OutcomeConfig); v != 1 {
				t.Errorf("send_attempts_total{outcome=config} = %v, want 1", v)
			}
			if st := s.Status(); st == nil || !strings.Contains(st.Error(), "configuration problem at auth") {
				t.Errorf("Status = %v, want the configuration problem", st)
			}
		})
	}
}

func TestXOAUTH2ReadsTheTokenOnEveryConnect(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.Implicit, Username: "worker@example.com",
		AuthMechanisms: []string{"XOAUTH2"}, OAuth2Token: "token-2"})
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("token-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, _ := newSender(t, srv, func(c *Config) {
		c.TLS, c.Username, c.Auth, c.OAuth2TokenFile = TLSImplicit, "worker@example.com", AuthXOAUTH2, tokenFile
	})
	_, err := s.Send(context.Background(), message("evt-1"))
	if !errors.Is(err, ErrConfig) || strings.Contains(err.Error(), "token-1") {
		t.Fatalf("Send with an expired token = %v, want a configuration problem that does not show the token", err)
	}
	// A sidecar refreshes the file; the running sender picks it up.
	if err := os.WriteFile(tokenFile, []byte("token-2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Send(context.Background(), message("evt-2")); err != nil {
		t.Fatalf("Send with the refreshed token: %v", err)
	}
	if msgs := srv.Messages(); len(msgs) != 1 || msgs[0].Auth != "XOAUTH2" {
		t.Errorf("want one message authenticated with XOAUTH2, got %+v", msgs)
	}
	if err := os.Remove(tokenFile); err != nil {
		t.Fatal(err)
	}
	srv.DropConnections()
	_, err = s.Send(context.Background(), message("evt-3"))
	var se *Error
	if !errors.As(err, &se) || se.Reason != "oauth2 token file unreadable" {
		t.Errorf("Send without a token file = %v, want oauth2 token file unreadable", err)
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
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.RequireStartTLS, Username: "worker", Password: "s3cret"})
	s, m := newSender(t, srv, func(c *Config) { c.Username, c.Password = "worker", "s3cret" })
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
	if n := len(srv.Messages()); n != 0 {
		t.Errorf("Check sent %d messages", n)
	}

	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"nothing listens", func(c *Config) { c.Port = smtptest.ClosedPort(t) }, "smtp relay unusable at connect (connection refused)"},
		{"wrong password", func(c *Config) { c.Password = "wrong" }, "smtp configuration problem at auth (smtp 535 5.7.8)"},
		{"no credentials where the relay wants them", func(c *Config) { c.Username, c.Password = "", "" },
			"smtp configuration problem at mail from (smtp 502 5.7.0)"},
		{"no TLS where the relay wants it", func(c *Config) { c.TLS, c.Username, c.Password = TLSNone, "", "" },
			"smtp configuration problem at mail from (smtp 530 5.7.0)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad, _ := newSender(t, srv, func(c *Config) {
				c.Username, c.Password = "worker", "s3cret"
				tt.mutate(c)
			})
			err := bad.Check(context.Background())
			if err == nil || !errors.Is(err, ErrRelay) || !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("Check = %v, want %q", err, tt.want)
			}
			if st := bad.Status(); st == nil || st.Error() != tt.want {
				t.Errorf("Status = %v, want %q", st, tt.want)
			}
		})
	}
}

func TestRateLimitWaitsWithTheContext(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
	s, _ := newSender(t, srv, func(c *Config) { c.RateLimit = 0.001 }) // one email, then one every 1000 s
	if _, err := s.Send(context.Background(), message("evt-1")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := s.Send(ctx, message("evt-2"))
	if !errors.Is(err, ErrRelay) {
		t.Errorf("Send beyond the rate = %v, want it to give up with the context", err)
	}
	if n := len(srv.Messages()); n != 1 {
		t.Errorf("server holds %d messages, want 1", n)
	}
}

func TestSendAfterClose(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.StartTLS})
	s, m := newSender(t, srv, nil)
	if _, err := s.Send(context.Background(), message("evt-1")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(m.connections); v != 0 {
		t.Errorf("smtp_connections_open = %v after Close, want 0", v)
	}
	if _, err := s.Send(context.Background(), message("evt-2")); !errors.Is(err, ErrClosed) || !errors.Is(err, ErrRelay) {
		t.Errorf("Send after Close = %v, want a relay failure ErrClosed", err)
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

// BenchmarkSend measures one email at a time over one reused connection
// to the test server on loopback (STARTTLS).
func BenchmarkSend(b *testing.B) {
	srv := smtptest.Start(b, smtptest.Options{TLS: smtptest.StartTLS})
	s, _ := newSender(b, srv, func(c *Config) { c.PoolSize = 1 })
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := s.Send(ctx, message(fmt.Sprintf("evt-%d", i))); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBuild measures building one email's bytes (multipart text and
// HTML, quoted-printable) from parts the size of the
// real new-device alert (the worker's largest: 0.5 KiB text, 1.5 KiB HTML).
func BenchmarkBuild(b *testing.B) {
	s, _ := newSender(b, smtptest.Start(b, smtptest.Options{}), nil)
	m := message("0190c4b2-7d3e-7abc-8def-0123456789ab")
	m.Text = strings.Repeat("A new sign-in to your account, from Firefox on Linux.\n", 10)
	m.HTML = strings.Repeat("<p>A new sign-in to your account, from <b>Firefox</b> on Linux.</p>\n", 22)
	data, id, release, err := s.build(m)
	if err != nil || !bytes.Contains(data, []byte("Message-ID: "+id)) || !bytes.Contains(data, []byte("text/html")) {
		b.Fatalf("build: %v, Message-ID %q, %d bytes", err, id, len(data))
	}
	release()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		_, _, release, err := s.build(m)
		if err != nil {
			b.Fatal(err)
		}
		release()
	}
}

// BenchmarkSendPool measures emails sent concurrently through a pool of 4
// connections.
func BenchmarkSendPool(b *testing.B) {
	srv := smtptest.Start(b, smtptest.Options{TLS: smtptest.StartTLS})
	s, _ := newSender(b, srv, func(c *Config) { c.PoolSize = 4 })
	ctx := context.Background()
	var mu sync.Mutex
	n := 0
	b.ReportAllocs()
	b.SetParallelism(2) // 2×GOMAXPROCS goroutines share the 4 connections
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			n++
			id := fmt.Sprintf("evt-%d", n)
			mu.Unlock()
			if _, err := s.Send(ctx, message(id)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// Envelope addresses go in angle brackets (RFC 5321 4.1.2): go-mail's
// client sends MAIL FROM and RCPT TO arguments as given, and strict relays
// such as Mailpit answer a bare address with 501.
func TestEnvelopeAddressesAreInAngleBrackets(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{TLS: smtptest.NoTLS, Transcript: true})
	s, _ := newSender(t, srv, func(c *Config) { c.TLS = TLSNone })
	if err := s.Check(context.Background()); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if _, err := s.Send(context.Background(), message("evt-1")); err != nil {
		t.Fatalf("Send: %v", err)
	}
	var mail, rcpt []string
	for _, line := range strings.Split(srv.Transcript(), "\r\n") {
		switch upper := strings.ToUpper(line); {
		case strings.HasPrefix(upper, "MAIL FROM:"):
			mail = append(mail, line)
		case strings.HasPrefix(upper, "RCPT TO:"):
			rcpt = append(rcpt, line)
		}
	}
	if len(mail) != 2 || len(rcpt) != 1 {
		t.Fatalf("want 2 MAIL FROM (check, send) and 1 RCPT TO, got %q and %q", mail, rcpt)
	}
	// Optional ESMTP parameters (BODY=8BITMIME, SMTPUTF8) may follow.
	for _, line := range mail {
		if !strings.HasPrefix(line, "MAIL FROM:<doorbell@example.com>") {
			t.Errorf("%q, want MAIL FROM:<doorbell@example.com>", line)
		}
	}
	if !strings.HasPrefix(rcpt[0], "RCPT TO:<ann@example.com>") {
		t.Errorf("%q, want RCPT TO:<ann@example.com>", rcpt[0])
	}
}

// writeQuotedPrintable's output is mime/quotedprintable's, byte for byte,
// whatever the text: line breaks of every kind, "=", spaces at the ends of
// lines, long lines, lines just short of a soft break, non-ASCII.
func TestQuotedPrintableIsTheStandardEncoding(t *testing.T) {
	standard := func(s string) string {
		var b bytes.Buffer
		qp := quotedprintable.NewWriter(&b)
		_, _ = qp.Write([]byte(s))
		_ = qp.Close()
		return b.String()
	}
	pieces := []string{"a", "word", " ", "\t", "=", "\r", "\n", "\r\n", "é", "한", ".", "<p>", "\x00", "\x7f", "\t\r\n", " \r",
		strings.Repeat("x", 74), strings.Repeat("y", 75), strings.Repeat("z", 76), strings.Repeat("w ", 40)}
	rng := rand.New(rand.NewPCG(1, 2))
	inputs := []string{"", "plain", "trailing space \nnext", "ends with a space ", "lone\rcr", "a\n\rb", "a\r\r\nb"}
	for range 20000 {
		var b strings.Builder
		for range rng.IntN(12) {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		inputs = append(inputs, b.String())
	}
	for _, in := range inputs {
		var b bytes.Buffer
		writeQuotedPrintable(&b, in)
		if got, want := b.String(), standard(in); got != want {
			t.Fatalf("writeQuotedPrintable(%q)\n = %q\nwant %q", in, got, want)
		}
	}
}
