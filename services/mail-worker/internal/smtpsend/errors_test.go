package smtpsend

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"strings"
	"syscall"
	"testing"
)

func reply(code int, text string) error { return &textproto.Error{Code: code, Msg: text} }

func netErr(op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: "tcp", Err: os.NewSyscallError(op, errno)}
}

// want is what Classify should say; zero fields must be zero.
type want struct {
	relay, permanent, config, maybeSent bool
	code                                int
	enhanced, reason                    string
}

func TestClassify(t *testing.T) {
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	tests := []struct {
		name  string
		stage Stage
		err   error
		want  want
	}{
		// Replies during the transaction: the email's own fate.
		{"450 at RCPT is transient for the email", StageRcpt, reply(450, "4.2.0 Greylisted"),
			want{code: 450, enhanced: "4.2.0", reason: "smtp 450 4.2.0"}},
		{"451 at RCPT is transient for the email", StageRcpt, reply(451, "4.3.0 Try again"),
			want{code: 451, enhanced: "4.3.0", reason: "smtp 451 4.3.0"}},
		{"452 at RCPT is transient for the email", StageRcpt, reply(452, "4.5.3 Too many recipients"),
			want{code: 452, enhanced: "4.5.3", reason: "smtp 452 4.5.3"}},
		{"451 after the data is transient and not sent", StageEndOfData, reply(451, "4.3.0 Queue trouble"),
			want{code: 451, enhanced: "4.3.0", reason: "smtp 451 4.3.0"}},
		{"550 at RCPT is permanent", StageRcpt, reply(550, "5.1.1 No such user"),
			want{permanent: true, code: 550, enhanced: "5.1.1", reason: "smtp 550 5.1.1"}},
		{"552 after the data is permanent", StageEndOfData, reply(552, "5.3.4 Message too big"),
			want{permanent: true, code: 552, enhanced: "5.3.4", reason: "smtp 552 5.3.4"}},
		{"553 at RCPT is permanent", StageRcpt, reply(553, "5.1.3 Bad address syntax"),
			want{permanent: true, code: 553, enhanced: "5.1.3", reason: "smtp 553 5.1.3"}},
		{"554 after the data is permanent", StageEndOfData, reply(554, "5.6.0 Content rejected"),
			want{permanent: true, code: 554, enhanced: "5.6.0", reason: "smtp 554 5.6.0"}},
		{"500 at DATA without an enhanced code is permanent", StageData, reply(500, "Syntax error"),
			want{permanent: true, code: 500, reason: "smtp 500"}},
		{"an enhanced code of another class is ignored", StageRcpt, reply(550, "4.1.1 odd server"),
			want{permanent: true, code: 550, reason: "smtp 550"}},
		{"5.7.1 at RCPT is a configuration problem, retried", StageRcpt, reply(550, "5.7.1 Relaying denied"),
			want{config: true, code: 550, enhanced: "5.7.1", reason: "smtp 550 5.7.1"}},
		{"5.7.26 after the data (DMARC) is a configuration problem", StageEndOfData, reply(550, "5.7.26 Unauthenticated email"),
			want{config: true, code: 550, enhanced: "5.7.26", reason: "smtp 550 5.7.26"}},
		{"530 at RCPT (auth required) is a configuration problem", StageRcpt, reply(530, "Authentication required"),
			want{config: true, code: 530, reason: "smtp 530"}},
		{"4.7.1 at RCPT (greylisting) is only transient", StageRcpt, reply(451, "4.7.1 Greylisted, try later"),
			want{code: 451, enhanced: "4.7.1", reason: "smtp 451 4.7.1"}},

		// 421 anywhere, and anything before RCPT TO: the relay.
		{"421 at RCPT means the relay is going away", StageRcpt, reply(421, "4.3.2 Shutting down"),
			want{relay: true, code: 421, enhanced: "4.3.2", reason: "smtp 421 4.3.2"}},
		{"421 after the data is not sent, relay going away", StageEndOfData, reply(421, "4.4.2 Timeout"),
			want{relay: true, code: 421, enhanced: "4.4.2", reason: "smtp 421 4.4.2"}},
		{"421 at the greeting", StageGreeting, reply(421, "4.3.2 Too busy"),
			want{relay: true, code: 421, enhanced: "4.3.2", reason: "smtp 421 4.3.2"}},
		{"451 at MAIL FROM is the relay's problem", StageMail, reply(451, "4.3.0 Local error"),
			want{relay: true, code: 451, enhanced: "4.3.0", reason: "smtp 451 4.3.0"}},
		{"454 at STARTTLS is the relay's problem", StageStartTLS, reply(454, "4.7.0 TLS not available"),
			want{relay: true, code: 454, enhanced: "4.7.0", reason: "smtp 454 4.7.0"}},
		{"535 at AUTH is a configuration problem", StageAuth, reply(535, "5.7.8 Bad credentials"),
			want{relay: true, config: true, code: 535, enhanced: "5.7.8", reason: "smtp 535 5.7.8"}},
		{"5.7.1 at MAIL FROM is a configuration problem", StageMail, reply(550, "5.7.1 Sender not allowed"),
			want{relay: true, config: true, code: 550, enhanced: "5.7.1", reason: "smtp 550 5.7.1"}},
		{"553 at MAIL FROM never dead-letters mail", StageMail, reply(553, "5.1.8 Bad sender domain"),
			want{relay: true, config: true, code: 553, enhanced: "5.1.8", reason: "smtp 553 5.1.8"}},
		{"554 at the greeting is a configuration problem", StageGreeting, reply(554, "No SMTP service for you"),
			want{relay: true, config: true, code: 554, reason: "smtp 554"}},

		// No reply at all.
		{"EOF at MAIL FROM", StageMail, io.EOF,
			want{relay: true, reason: "connection closed by server"}},
		{"ECONNRESET during the data is this email's failure", StageData, netErr("write", syscall.ECONNRESET),
			want{reason: "connection reset"}},
		{"EPIPE during the data is this email's failure", StageData, netErr("write", syscall.EPIPE),
			want{reason: "connection reset"}},
		{"ECONNREFUSED at connect", StageConnect, netErr("dial", syscall.ECONNREFUSED),
			want{relay: true, reason: "connection refused"}},
		{"i/o timeout at RCPT is this email's failure", StageRcpt, timeout,
			want{reason: "timeout"}},
		{"i/o timeout at MAIL FROM is the relay's", StageMail, timeout,
			want{relay: true, reason: "timeout"}},
		{"context deadline at connect", StageConnect, fmt.Errorf("dial: %w", context.DeadlineExceeded),
			want{relay: true, reason: "timeout"}},
		{"DNS failure at connect", StageConnect, &net.DNSError{Err: "no such host", Name: "relay.invalid"},
			want{relay: true, reason: "dns lookup failed"}},
		{"EOF after the end of data: the email may be sent", StageEndOfData, io.EOF,
			want{maybeSent: true, reason: "connection closed by server"}},
		{"timeout after the end of data: the email may be sent", StageEndOfData, timeout,
			want{maybeSent: true, reason: "timeout"}},
		{"ECONNRESET after the end of data: the email may be sent", StageEndOfData, netErr("read", syscall.ECONNRESET),
			want{maybeSent: true, reason: "connection reset"}},

		// TLS and settings.
		{"TLS handshake failure", StageStartTLS, tls.AlertError(40),
			want{relay: true, config: true, reason: "tls handshake failed"}},
		{"implicit TLS against a plain-text port", StageConnect, tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"},
			want{relay: true, config: true, reason: "not a tls server"}},
		{"untrusted certificate", StageStartTLS, &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}},
			want{relay: true, config: true, reason: "tls certificate not trusted"}},
		{"no STARTTLS offered", StageStartTLS, errNoStartTLS,
			want{relay: true, config: true, reason: "no STARTTLS offered"}},
		{"token file missing", StageAuth, fmt.Errorf("%w: %w", errTokenFile, os.ErrNotExist),
			want{relay: true, config: true, reason: "oauth2 token file unreadable"}},
		{"sender closed", StageConnect, ErrClosed,
			want{relay: true, reason: "sender closed"}},
		{"an unbuildable message is permanent", StageBuild, errors.New("bad address"),
			want{permanent: true, reason: "invalid message"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := Classify(tt.stage, tt.err)
			got := want{e.Relay, e.Permanent, e.Config, e.MaybeSent, e.Code, e.Enhanced, e.Reason}
			if got != tt.want {
				t.Errorf("Classify(%s, %v)\n got %+v\nwant %+v", tt.stage, tt.err, got, tt.want)
			}
			if e.Stage != tt.stage || !errors.Is(e, tt.err) {
				t.Errorf("stage %q or cause lost: %v", e.Stage, e)
			}
			// The sentinels say the same as the fields.
			sentinels := []struct {
				name string
				is   bool
				want bool
			}{
				{"ErrPermanent", errors.Is(e, ErrPermanent), tt.want.permanent},
				{"ErrTransient", errors.Is(e, ErrTransient), !tt.want.permanent},
				{"ErrRelay", errors.Is(e, ErrRelay), tt.want.relay},
				{"ErrConfig", errors.Is(e, ErrConfig), tt.want.config},
				{"ErrMaybeSent", errors.Is(e, ErrMaybeSent), tt.want.maybeSent},
			}
			for _, s := range sentinels {
				if s.is != s.want {
					t.Errorf("errors.Is(err, %s) = %v, want %v", s.name, s.is, s.want)
				}
			}
			// Classifying again keeps the first classification.
			if again := Classify(StageData, e); again != e {
				t.Errorf("a classified error was classified again: %v", again)
			}
		})
	}
}

func TestSummaryDoesNotQuoteTheServer(t *testing.T) {
	e := Classify(StageRcpt, reply(550, "5.7.1 <ann@example.com>: Relay access denied"))
	if s := e.Summary(); s != "smtp configuration problem at rcpt to (smtp 550 5.7.1)" {
		t.Errorf("Summary = %q", s)
	}
}

// A hint is chosen by what the failure is (its sentinel or type, its
// stage), never by the words of its message.
func TestHintSaysWhatToCheck(t *testing.T) {
	tests := []struct {
		name  string
		stage Stage
		err   error
		want  string
	}{
		{"nothing listens", StageConnect, netErr("dial", syscall.ECONNREFUSED), "nothing listens on SMTP_HOST:SMTP_PORT"},
		{"no STARTTLS", StageStartTLS, errNoStartTLS, "SMTP_TLS=implicit is for a port"},
		{"TLS against a plain port", StageConnect, tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, "use SMTP_TLS=mandatory (STARTTLS)"},
		{"untrusted certificate", StageStartTLS, x509.UnknownAuthorityError{}, "set SMTP_CA_FILE"},
		{"credentials in clear", StageAuth, fmt.Errorf("auth: %w", errClearTextPassword), "credentials are only sent encrypted"},
		{"no AUTH", StageAuth, errNoAuth, "unset SMTP_USERNAME"},
		{"mechanism", StageAuth, errMechNotOffered, "set SMTP_AUTH=auto"},
		{"token file", StageAuth, errTokenFile, "check SMTP_OAUTH2_TOKEN_FILE"},
		{"wrong password", StageAuth, reply(535, "5.7.8 Authentication credentials invalid"), "check SMTP_USERNAME, SMTP_PASSWORD"},
		{"sender refused", StageMail, reply(550, "5.7.1 Sender not allowed"), "check MAIL_FROM"},
		{"no greeting", StageGreeting, os.ErrDeadlineExceeded, "set SMTP_TLS=implicit"},
		{"no answer later", StageHello, os.ErrDeadlineExceeded, "the relay does not answer"},
		{"unknown host", StageConnect, &net.DNSError{Err: "no such host", Name: "relay.invalid"}, "check SMTP_HOST"},
		{"a recipient refused", StageRcpt, reply(550, "5.1.1 no such user"), ""},
		{"words that merely look like a cause", StageStartTLS, errors.New("no STARTTLS offered"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Classify(tt.stage, tt.err).Hint()
			if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
				t.Errorf("Hint() = %q, want one saying %q", got, tt.want)
			}
		})
	}
}
