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
	"syscall"

	"github.com/wneessen/go-mail"
)

// Sentinels for the two ways a send can fail; test with errors.Is. Every
// error Send returns matches exactly one of them.
var (
	// ErrTransient: trying the same email again later may work (the server
	// answered 4xx, the connection failed or timed out, the relay or its TLS
	// or AUTH is not usable right now).
	ErrTransient = errors.New("transient smtp failure")
	// ErrPermanent: this email will never be accepted as it is (the server
	// answered 5xx to it, or it cannot be built, e.g. a malformed address).
	ErrPermanent = errors.New("permanent smtp failure")
)

// ErrClosed is returned (as a transient failure) by Send after Close.
var ErrClosed = errors.New("sender is closed")

// Error is a classified send failure. Reason is a short, bounded phrase for
// logs ("smtp 451", "connection refused", "tls"); Code is the SMTP reply
// code when the server gave one, else 0.
type Error struct {
	Transient bool
	Code      int
	Stage     string // "build", "dial" or "send"
	Reason    string
	Err       error
}

func (e *Error) Error() string {
	kind := "permanent"
	if e.Transient {
		kind = "transient"
	}
	return fmt.Sprintf("%s smtp failure at %s (%s): %v", kind, e.Stage, e.Reason, e.Err)
}

// Unwrap exposes the cause and the matching sentinel.
func (e *Error) Unwrap() []error {
	if e.Transient {
		return []error{e.Err, ErrTransient}
	}
	return []error{e.Err, ErrPermanent}
}

// Classification happens here and only here.
//
// Before MAIL FROM (dialling, EHLO, STARTTLS, AUTH) every failure is
// transient, whatever the reply code: it concerns the relay or this worker's
// settings, not the email, and every email would fail the same way. Giving
// them up would lose all mail during a relay outage or until a wrong password
// is fixed; retrying keeps them in JetStream while /readyz reports the cause.
//
// During the transaction a 4xx reply is transient and a 5xx reply permanent.
// go-mail's SendError.IsTemp only looks for a leading "4", so a lost
// connection, EOF, reset or timeout (no reply code at all) would count as
// permanent there; here they are transient.

func buildError(err error) *Error {
	return &Error{Transient: false, Stage: "build", Reason: "invalid message", Err: err}
}

func dialError(err error) *Error {
	e := &Error{Transient: true, Stage: "dial", Reason: reason(err), Err: err}
	var tp *textproto.Error
	if errors.As(err, &tp) {
		e.Code = tp.Code
	}
	return e
}

func sendError(err error) *Error {
	e := &Error{Stage: "send", Err: err}
	var se *mail.SendError
	if !errors.As(err, &se) {
		// Not from the SMTP transaction itself: treat like a network failure.
		e.Transient, e.Reason = true, reason(err)
		return e
	}
	e.Code = se.ErrorCode()
	switch {
	case e.Code >= 500:
		e.Transient, e.Reason = false, fmt.Sprintf("smtp %d", e.Code)
	case e.Code >= 400:
		e.Transient, e.Reason = true, fmt.Sprintf("smtp %d", e.Code)
	case se.Reason == mail.ErrGetSender || se.Reason == mail.ErrGetRcpts || se.Reason == mail.ErrNoUnencoded:
		// The message itself could not be put on the wire.
		e.Transient, e.Reason = false, se.Reason.String()
	default:
		// No reply code: the connection broke (EOF, reset, timeout, NOOP
		// failed). go-mail does not wrap the cause, so it cannot be
		// inspected further; the message may be retried safely because the
		// Message-ID stays the same.
		e.Transient, e.Reason = true, "connection lost during "+se.Reason.String()
	}
	return e
}

// reason names the cause of a failure outside an SMTP transaction in a few
// words. It never includes addresses or credentials.
func reason(err error) string {
	var (
		tp      *textproto.Error
		netErr  net.Error
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		invalid x509.CertificateInvalidError
		alert   tls.AlertError
		record  tls.RecordHeaderError
	)
	switch {
	case errors.Is(err, ErrClosed):
		return "sender closed"
	case errors.As(err, &tp):
		return fmt.Sprintf("smtp %d", tp.Code)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed by server"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.As(err, &unknown), errors.As(err, &host), errors.As(err, &invalid):
		return "tls certificate not trusted"
	case errors.As(err, &alert), errors.As(err, &record):
		return "tls handshake failed"
	default:
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) {
			return "dns lookup failed"
		}
		return "smtp session failed"
	}
}
