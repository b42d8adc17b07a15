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
	"regexp"
	"strconv"
	"syscall"

	"github.com/wneessen/go-mail/smtp"
)

// Sentinels for classified send failures; test with errors.Is. Every error
// Send and Check return matches ErrPermanent or ErrTransient, and may match
// ErrRelay, ErrConfig and ErrMaybeSent as well.
var (
	// ErrTransient: trying the same email again later may work. Every
	// ErrRelay failure is also transient.
	ErrTransient = errors.New("transient smtp failure")
	// ErrPermanent: this email will never be accepted as it is (the server
	// answered 5xx to it, or it cannot be built, e.g. a malformed address).
	ErrPermanent = errors.New("permanent smtp failure")
	// ErrRelay: the relay is not usable right now (refused, reset or
	// timed out before RCPT TO, TLS, AUTH, 421, any refusal before RCPT
	// TO). The failure is not the email's: every email would fail the same
	// way, so it must not count against the email.
	ErrRelay = errors.New("smtp relay unusable")
	// ErrConfig: the relay refuses on authentication or policy grounds
	// (5.7.x, 530/534/535/538) or its TLS cannot be used as configured. An
	// operator has to act; retrying alone will not help.
	ErrConfig = errors.New("smtp configuration problem")
	// ErrMaybeSent: the connection broke, or the reply did not come within
	// Config.FinalTimeout, after the end of the message data was sent. The
	// server may have accepted the email.
	ErrMaybeSent = errors.New("smtp outcome unknown")
)

// ErrClosed is returned (as a relay failure) by Send and Check after Close.
var ErrClosed = errors.New("sender is closed")

// Stage is the step of an SMTP session at which a failure happened.
type Stage string

// Stages, in session order.
const (
	StageBuild     Stage = "build"       // the message could not be built
	StageConnect   Stage = "connect"     // TCP, and the TLS handshake of implicit TLS
	StageGreeting  Stage = "greeting"    // the server's 220
	StageHello     Stage = "ehlo"        // EHLO/HELO
	StageStartTLS  Stage = "starttls"    // STARTTLS and the handshake after it
	StageAuth      Stage = "auth"        // SMTP AUTH
	StageMail      Stage = "mail from"   // MAIL FROM
	StageRcpt      Stage = "rcpt to"     // RCPT TO
	StageData      Stage = "data"        // DATA and the message content, before the end-of-data mark
	StageEndOfData Stage = "end of data" // the reply to the final "."
)

// beforeRecipient reports whether stage concerns the session or the sender,
// which every email shares, rather than this email's recipient or content.
func (s Stage) beforeRecipient() bool {
	switch s {
	case StageConnect, StageGreeting, StageHello, StageStartTLS, StageAuth, StageMail:
		return true
	}
	return false
}

// Error is a classified send failure.
type Error struct {
	// Relay: the relay, not the email, is the problem (see ErrRelay).
	Relay bool
	// Permanent: the email will never be accepted as it is.
	Permanent bool
	// Config: an operator has to act (see ErrConfig).
	Config bool
	// MaybeSent: the server may have accepted the email (see ErrMaybeSent).
	MaybeSent bool
	Stage     Stage
	// Code is the SMTP reply code when the server gave one, else 0;
	// Enhanced the RFC 3463 status code ("5.7.1") when it sent one.
	Code     int
	Enhanced string
	// Reason is a short, bounded phrase for logs, metrics and dead letters
	// ("smtp 550 5.1.1", "connection refused", "tls certificate not
	// trusted"). It never holds addresses or credentials.
	Reason string
	Err    error

	cause *failureCause // for a failure without a reply code
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s at %s (%s): %v", e.kind(), e.Stage, e.Reason, e.Err)
}

// Summary is Error without the underlying error's text, which may quote
// the server and so an address. It suits /readyz.
func (e *Error) Summary() string {
	return fmt.Sprintf("%s at %s (%s)", e.kind(), e.Stage, e.Reason)
}

func (e *Error) kind() string {
	switch {
	case e.Config:
		return "smtp configuration problem"
	case e.MaybeSent:
		return "smtp relay unusable, email may have been accepted"
	case e.Relay:
		return "smtp relay unusable"
	case e.Permanent:
		return "permanent smtp failure"
	default:
		return "transient smtp failure"
	}
}

// Unwrap exposes the cause and the matching sentinels.
func (e *Error) Unwrap() []error {
	errs := []error{e.Err}
	if e.Permanent {
		errs = append(errs, ErrPermanent)
	} else {
		errs = append(errs, ErrTransient)
	}
	if e.Relay {
		errs = append(errs, ErrRelay)
	}
	if e.Config {
		errs = append(errs, ErrConfig)
	}
	if e.MaybeSent {
		errs = append(errs, ErrMaybeSent)
	}
	return errs
}

// Classify turns a failure at stage into an *Error. Classification happens
// here and only here:
//
//   - A reply 421 at any stage: the server is closing the connection; the
//     relay is unusable.
//   - Anything that goes wrong before RCPT TO (connecting, greeting, EHLO,
//     TLS, AUTH, MAIL FROM): the relay is unusable, whatever the reply
//     code; every email would fail the same way. 5xx replies, 5.7.x, AUTH
//     codes (530, 534, 535, 538), certificate and TLS problems are also
//     configuration problems.
//   - At RCPT TO, DATA or the end of data: 4xx is transient for this email,
//     5xx permanent, except that 5.7.x (policy, authentication) is a
//     configuration problem that is retried like a 4xx rather than given up.
//   - No reply at all (EOF, reset, timeout) before RCPT TO: the relay is
//     unusable. During this email's transaction (RCPT TO, DATA, the
//     content) it is this email's transient failure: the session worked
//     until then, and a relay that is really down fails the next session
//     before RCPT TO. After the end-of-data mark was sent the server may
//     already hold the email: MaybeSent.
//
// go-mail's SendError.IsTemp only looks for a leading "4", so it calls a
// lost connection permanent; this function does not use it.
func Classify(stage Stage, err error) *Error {
	var classified *Error
	if errors.As(err, &classified) {
		return classified
	}
	e := &Error{Stage: stage, Err: err}
	if stage == StageBuild {
		e.Permanent, e.Reason = true, "invalid message"
		return e
	}
	var tp *textproto.Error
	if errors.As(err, &tp) {
		e.Code = tp.Code
		e.Enhanced = enhancedCode(tp.Code, tp.Msg)
		e.Reason = "smtp " + strconv.Itoa(tp.Code)
		if e.Enhanced != "" {
			e.Reason += " " + e.Enhanced
		}
		policy := authCode(tp.Code) || (e.Code >= 500 && len(e.Enhanced) > 2 && e.Enhanced[:3] == "5.7")
		switch {
		case tp.Code == 421:
			e.Relay = true
		case stage.beforeRecipient():
			e.Relay = true
			e.Config = tp.Code >= 500 || policy
		case policy:
			e.Config = true // retried, never given up: see the doc comment
		case tp.Code >= 500:
			e.Permanent = true
		}
		return e
	}
	e.cause = causeOf(err)
	e.Reason, e.Config = e.cause.reason, e.cause.config
	switch stage {
	case StageEndOfData:
		e.MaybeSent = true
	case StageRcpt, StageData:
	default:
		e.Relay = true
	}
	return e
}

// authCode reports reply codes that mean "authentication needed or
// refused" (RFC 4954).
func authCode(code int) bool {
	return code == 530 || code == 534 || code == 535 || code == 538
}

// enhancedRE matches an RFC 3463 status code at the start of a reply text.
var enhancedRE = regexp.MustCompile(`^([245])\.(\d{1,3})\.(\d{1,3})\b`)

// enhancedCode returns the enhanced status code at the start of msg when its
// class matches the reply code's.
func enhancedCode(code int, msg string) string {
	m := enhancedRE.FindStringSubmatch(msg)
	if m == nil || m[1] != strconv.Itoa(code/100) {
		return ""
	}
	return m[0]
}

// Failures found by this package rather than reported by the server.
var (
	errNoStartTLS        = errors.New("the server does not offer STARTTLS")
	errNoAuth            = errors.New("the server does not offer AUTH")
	errMechNotOffered    = errors.New("the server does not offer the configured AUTH mechanism")
	errClearTextPassword = errors.New("refusing to send credentials over an unencrypted connection")
	errTokenFile         = errors.New("cannot read the OAuth2 token file")
)

// A failureCause is a kind of failure without a reply code: a few words
// for logs, metrics and dead letters (never addresses or credentials),
// whether an operator must act, and what to check, in terms of the
// worker's SMTP_* settings.
type failureCause struct {
	reason string
	config bool
	hint   string
	// atGreeting replaces hint at StageGreeting.
	atGreeting string
}

// The failures without a reply code, by what they are.
var (
	causeClosed       = &failureCause{reason: "sender closed"}
	causeNoStartTLS   = &failureCause{reason: "no STARTTLS offered", config: true, hint: "the relay does not offer STARTTLS: SMTP_TLS=implicit is for a port that speaks TLS from the first byte (usually 465); opportunistic or none only for a relay on this host"}
	causeNoAuth       = &failureCause{reason: "no AUTH offered", config: true, hint: "the relay offers no AUTH on this connection: unset SMTP_USERNAME, or encrypt first (many relays offer AUTH only after STARTTLS)"}
	causeMech         = &failureCause{reason: "auth mechanism not offered", config: true, hint: "set SMTP_AUTH=auto or to a mechanism the relay offers"}
	causeClearText    = &failureCause{reason: "clear-text auth refused", config: true, hint: "credentials are only sent encrypted: use SMTP_TLS=mandatory or implicit"}
	causeTokenFile    = &failureCause{reason: "oauth2 token file unreadable", config: true, hint: "check SMTP_OAUTH2_TOKEN_FILE (read on every connect)"}
	causeUntrusted    = &failureCause{reason: "tls certificate not trusted", config: true, hint: "set SMTP_CA_FILE to the relay's CA, or make SMTP_HOST match its certificate"}
	causeNotTLS       = &failureCause{reason: "not a tls server", config: true, hint: "the relay does not speak TLS on this port: use SMTP_TLS=mandatory (STARTTLS) for 587 or 25, implicit for 465"}
	causeHandshake    = &failureCause{reason: "tls handshake failed", config: true}
	causeRefused      = &failureCause{reason: "connection refused", hint: "nothing listens on SMTP_HOST:SMTP_PORT"}
	causeReset        = &failureCause{reason: "connection reset"}
	causeClosedByPeer = &failureCause{reason: "connection closed by server"}
	causeTimeout      = &failureCause{reason: "timeout", hint: "the relay does not answer: check SMTP_HOST, SMTP_PORT and firewalls",
		atGreeting: "no greeting: if the port speaks TLS from the first byte (465), set SMTP_TLS=implicit"}
	causeCanceled = &failureCause{reason: "canceled"}
	causeDNS      = &failureCause{reason: "dns lookup failed", hint: "check SMTP_HOST"}
	causeOther    = &failureCause{reason: "smtp session failed"}
)

// causeOf recognises the failure without a reply code that err is.
func causeOf(err error) *failureCause {
	var (
		netErr  net.Error
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		invalid x509.CertificateInvalidError
		verify  *tls.CertificateVerificationError
		alert   tls.AlertError
		record  tls.RecordHeaderError
		dnsErr  *net.DNSError
	)
	switch {
	case errors.Is(err, ErrClosed):
		return causeClosed
	case errors.Is(err, errNoStartTLS):
		return causeNoStartTLS
	case errors.Is(err, errNoAuth):
		return causeNoAuth
	case errors.Is(err, errMechNotOffered):
		return causeMech
	case errors.Is(err, errClearTextPassword), errors.Is(err, smtp.ErrUnencrypted):
		return causeClearText
	case errors.Is(err, errTokenFile):
		return causeTokenFile
	case errors.As(err, &unknown), errors.As(err, &host), errors.As(err, &invalid), errors.As(err, &verify):
		return causeUntrusted
	case errors.As(err, &record):
		return causeNotTLS
	case errors.As(err, &alert):
		return causeHandshake
	case errors.Is(err, syscall.ECONNREFUSED):
		return causeRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, net.ErrClosed):
		return causeReset
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return causeClosedByPeer
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &netErr) && netErr.Timeout():
		return causeTimeout
	case errors.Is(err, context.Canceled):
		return causeCanceled
	case errors.As(err, &dnsErr):
		return causeDNS
	default:
		return causeOther
	}
}

// Hint says what an operator should check for e, in terms of the worker's
// SMTP_* settings and MAIL_FROM; "" when there is nothing specific to say.
func (e *Error) Hint() string {
	if c := e.cause; c != nil {
		if c.atGreeting != "" && e.Stage == StageGreeting {
			return c.atGreeting
		}
		if c.hint != "" {
			return c.hint
		}
	}
	switch {
	case e.Stage == StageAuth && e.Config:
		return "the relay refused the credentials: check SMTP_USERNAME, SMTP_PASSWORD (or SMTP_OAUTH2_TOKEN_FILE) and SMTP_AUTH"
	case e.Stage == StageMail && e.Config:
		return "the relay refuses the sender: check MAIL_FROM, SMTP_USERNAME, SMTP_TLS and the relay's sender policy"
	}
	return ""
}
