package login

import (
	"fmt"
	"log/slog"
	"net/http"
)

// reason names one way a request can fail. What the gateway says about
// each, to the person, to machines, to operators and to Prometheus, is its
// entry in failures.
type reason int

// The reasons, roughly in the order a request meets them.
const (
	reasonNotFound reason = iota
	reasonInternal
	reasonRateLimited
	reasonRequestTooLarge
	reasonProviderUnknown
	reasonProviderUnavailable
	reasonStateInvalid
	reasonCallbackMismatch
	reasonIssuerMismatch
	reasonAccessDenied
	reasonProviderError
	reasonCodeMissing
	reasonExchangeFailed
	reasonUserInfoFailed
	reasonGitHubAPIFailed
	reasonTokenInvalid
	reasonNonceMismatch
	reasonEmailMissing
	reasonGitHubEmailsHidden
	reasonGitHubNoPrimaryEmail
	reasonEmailUnverified
	reasonGitHubEmailUnverified
	reasonEmailInvalid
	reasonEmailDomainNotAllowed
	reasonPublishFailed
	reasonLogoutRejected
	reasonCount
)

// failureKind is what the gateway says about every failure of one reason.
type failureKind struct {
	status int
	// label is the JSON error code and, on the sign-in endpoints, the
	// result label of logins_total (one of results there). Several reasons
	// may share one.
	label string
	level slog.Level
	title string
	// message says why and what to do, in one or two sentences; a format
	// when the reason's failures carry args.
	message string
	// logMsg is the operators' log message.
	logMsg string
	// link and linkText are the page's way on; empty means back to /.
	link, linkText string
}

// failures is the one table of failures, indexed by reason. It is never
// written to.
var failures = [reasonCount]failureKind{
	reasonNotFound: {
		status: http.StatusNotFound, label: "not_found", level: slog.LevelDebug,
		title:   "Page not found",
		message: "There is no page at this address. Check the link, or go back to the start page.",
		logMsg:  "Page not found",
	},
	reasonInternal: {
		status: http.StatusInternalServerError, label: "internal_error", level: slog.LevelError,
		title:   "Something went wrong",
		message: "We hit an unexpected problem. Please go back and try again.",
		logMsg:  "internal error",
	},
	// args: how long to wait, in words.
	reasonRateLimited: {
		status: http.StatusTooManyRequests, label: resultRateLimited, level: slog.LevelWarn,
		title:   "Too many sign-in attempts",
		message: "There were too many sign-in attempts from your network in a short time. Please wait %s and try again.",
		logMsg:  "sign-in rate limited",
	},
	reasonRequestTooLarge: {
		status: http.StatusBadRequest, label: resultRequestTooLarge, level: slog.LevelWarn,
		title:   "Request too large",
		message: "This link is longer than any sign-in link should be, so we did not follow it. Start again from the sign-in page.",
		logMsg:  "request refused: too large",
	},
	reasonProviderUnknown: {
		status: http.StatusBadRequest, label: resultProviderUnknown, level: slog.LevelInfo,
		title:   "Unknown sign-in option",
		message: "This sign-in link names an identity provider this site does not offer. Choose one on the sign-in page.",
		logMsg:  "sign-in refused: unknown provider",
	},
	reasonProviderUnavailable: {
		status: http.StatusServiceUnavailable, label: resultProviderUnavailable, level: slog.LevelError,
		title:   "Sign-in is unavailable",
		message: "The identity provider is unreachable right now, so we cannot sign you in. Please try again in a few minutes.",
		logMsg:  "identity provider unreachable",
	},
	reasonStateInvalid: {
		status: http.StatusBadRequest, label: resultStateInvalid, level: slog.LevelWarn,
		title:   "This sign-in link has expired",
		message: "This sign-in link has expired or was already used. Start again.",
		logMsg:  "callback rejected: sign-in attempt not valid",
	},
	reasonCallbackMismatch: {
		status: http.StatusBadRequest, label: resultIssuerMismatch, level: slog.LevelWarn,
		title:   "Sign-in answer from the wrong provider",
		message: "The answer to this sign-in did not come from the identity provider we asked. Start again from the sign-in page.",
		logMsg:  "callback rejected: answer arrived at another provider's callback (mix-up)",
	},
	reasonIssuerMismatch: {
		status: http.StatusBadRequest, label: resultIssuerMismatch, level: slog.LevelWarn,
		title:   "Sign-in answer from the wrong provider",
		message: "The answer to this sign-in did not come from the identity provider we asked. Start again from the sign-in page.",
		logMsg:  "callback rejected: iss parameter does not name the provider",
	},
	reasonAccessDenied: {
		status: http.StatusForbidden, label: resultAccessDenied, level: slog.LevelInfo,
		title:   "Sign-in cancelled",
		message: "You declined to share your account with Doorbell, so you are not signed in. You can start again whenever you like.",
		logMsg:  "provider reported access_denied",
	},
	reasonProviderError: {
		status: http.StatusBadRequest, label: resultProviderError, level: slog.LevelWarn,
		title:   "The identity provider reported a problem",
		message: "Your identity provider could not sign you in. Please try again; if it keeps happening, tell whoever runs Doorbell for you.",
		logMsg:  "provider reported an error",
	},
	reasonCodeMissing: {
		status: http.StatusBadRequest, label: resultProviderError, level: slog.LevelWarn,
		title:   "Incomplete answer from the identity provider",
		message: "The identity provider's answer had no authorization code. Please start again.",
		logMsg:  "callback rejected: no code parameter",
	},
	reasonExchangeFailed: {
		status: http.StatusBadGateway, label: resultExchangeFailed, level: slog.LevelError,
		title:   "The identity provider did not answer properly",
		message: "We could not complete the sign-in with your identity provider. Please try again in a moment.",
		logMsg:  "code exchange failed",
	},
	reasonUserInfoFailed: {
		status: http.StatusBadGateway, label: resultExchangeFailed, level: slog.LevelError,
		title:   "The identity provider did not answer properly",
		message: "We could not get your account details from your identity provider. Please try again in a moment.",
		logMsg:  "userinfo request failed",
	},
	reasonGitHubAPIFailed: {
		status: http.StatusBadGateway, label: resultExchangeFailed, level: slog.LevelError,
		title:   "GitHub did not answer properly",
		message: "We could not get your account details from GitHub. Please try again in a moment.",
		logMsg:  "GitHub API request failed",
	},
	reasonTokenInvalid: {
		status: http.StatusUnauthorized, label: resultTokenInvalid, level: slog.LevelWarn,
		title:   "Sign-in could not be verified",
		message: "The identity provider's answer failed our security checks (invalid token). Please start again.",
		logMsg:  "id token rejected",
	},
	reasonNonceMismatch: {
		status: http.StatusUnauthorized, label: resultNonceMismatch, level: slog.LevelWarn,
		title:   "Sign-in could not be verified",
		message: "The identity provider's answer does not belong to this sign-in. Please start again.",
		logMsg:  "id token rejected: nonce does not match the attempt",
	},
	reasonEmailMissing: {
		status: http.StatusForbidden, label: resultEmailMissing, level: slog.LevelWarn,
		title:   "No email address",
		message: "Your identity provider did not share an email address, and Doorbell needs one to sign you in. Allow access to your email address, then sign in again.",
		logMsg:  "sign-in refused: provider shared no usable email",
	},
	reasonGitHubEmailsHidden: {
		status: http.StatusForbidden, label: resultEmailMissing, level: slog.LevelWarn,
		title:   "No email address",
		message: "GitHub did not let us read your email addresses, and Doorbell needs your verified primary address to sign you in. Sign in again and allow access to your email addresses.",
		logMsg:  "sign-in refused: provider shared no usable email",
	},
	reasonGitHubNoPrimaryEmail: {
		status: http.StatusForbidden, label: resultEmailMissing, level: slog.LevelWarn,
		title:   "No email address",
		message: "Your GitHub account has no primary email address we can use. Add and verify one in your GitHub email settings, then sign in again.",
		logMsg:  "sign-in refused: provider shared no usable email",
	},
	// args: the email address, the provider's name.
	reasonEmailUnverified: {
		status: http.StatusForbidden, label: resultEmailUnverified, level: slog.LevelWarn,
		title:   "Email address not verified",
		message: "Your email address %s is not verified by %s. Verify it there, then sign in again.",
		logMsg:  "sign-in refused: email not verified by the provider",
	},
	// args: the email address.
	reasonGitHubEmailUnverified: {
		status: http.StatusForbidden, label: resultEmailUnverified, level: slog.LevelWarn,
		title:   "Primary email address not verified on GitHub",
		message: "Your primary email address on GitHub, %s, is not verified. Verify it in your GitHub email settings (Settings, then Emails), then sign in again.",
		logMsg:  "sign-in refused: GitHub primary email not verified",
	},
	reasonEmailInvalid: {
		status: http.StatusForbidden, label: resultEmailInvalid, level: slog.LevelWarn,
		title:   "Email address not usable",
		message: "Your identity provider vouched for an email address that is not one we can send to. Check the address in your account there, then sign in again.",
		logMsg:  "sign-in refused: provider's email address is malformed",
	},
	// args: the email address, the provider's name.
	reasonEmailDomainNotAllowed: {
		status: http.StatusForbidden, label: resultEmailDomainNotAllowed, level: slog.LevelInfo,
		title:   "This address is not allowed",
		message: "This address is not allowed: %s cannot sign in with %s here. Sign in with your work account, or ask whoever runs this site.",
		logMsg:  "sign-in refused: email domain not allowed for this provider",
	},
	reasonPublishFailed: {
		status: http.StatusServiceUnavailable, label: resultPublishFailed, level: slog.LevelError,
		title:   "We could not finish signing you in",
		message: "We could not finish signing you in. Please try again in a moment.",
		logMsg:  "sign-in not completed: event not published",
	},
	reasonLogoutRejected: {
		status: http.StatusForbidden, label: "logout_rejected", level: slog.LevelWarn,
		title:    "Sign-out not confirmed",
		message:  "You are still signed in: this sign-out request did not come from this site's sign-out button, or the page was too old. Use the button on the sign-out page.",
		link:     "/logout",
		linkText: "Go to the sign-out page",
		logMsg:   "sign-out refused",
	},
}

// failure is one failed request: its reason, and what this request adds
// to the reason's entry in failures.
type failure struct {
	reason reason
	// why is for operators (the log line's err); it must already be
	// redacted. Empty means the reason says it all.
	why string
	// args fill the verbs of the reason's message.
	args []any
	// detail is untrusted text from the provider, shown escaped.
	detail string
}

// failed is the failure of reason r, with why for the log (already
// redacted, or "") and the args of the reason's message.
func failed(r reason, why string, args ...any) *failure {
	return &failure{reason: r, why: why, args: args}
}

func (f *failure) kind() failureKind { return failures[f.reason] }
func (f *failure) status() int       { return f.kind().status }
func (f *failure) label() string     { return f.kind().label }

// message is the reason's message with the failure's args.
func (f *failure) message() string {
	if len(f.args) == 0 {
		return f.kind().message
	}
	return fmt.Sprintf(f.kind().message, f.args...)
}

// fail answers with f as a page, or as JSON when the client asked for JSON,
// and logs it once.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, f *failure) {
	k := f.kind()
	attrs := []any{"reason", k.label, "status", k.status, "method", r.Method, "path", r.URL.Path}
	if f.why != "" {
		attrs = append(attrs, "error", f.why)
	}
	h.log.Log(r.Context(), k.level, k.logMsg, attrs...)

	if wantsJSON(r) {
		writeJSON(w, k.status, map[string]string{"error": k.label, "message": f.message()})
		return
	}
	link, linkText := k.link, k.linkText
	if link == "" {
		link, linkText = "/", "Back to Doorbell"
	}
	h.render(w, k.status, h.pages.error, errorData{
		Title: k.title, Error: true, Message: f.message(), Detail: f.detail, Status: k.status, Code: k.label,
		Link: link, LinkText: linkText,
	})
}
