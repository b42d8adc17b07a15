package login

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"strings"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// attempt is one sign-in in progress, sealed into its own cookie between
// /login and /auth/callback.
type attempt struct {
	State    string `json:"state"`
	Nonce    string `json:"nonce"`
	Verifier string `json:"verifier"`
	// Created is Unix seconds.
	Created int64  `json:"created"`
	Return  string `json:"return"`
}

// attemptCookieName is one cookie per attempt, so that sign-ins started in
// several tabs do not overwrite each other.
func attemptCookieName(state string) string {
	return attemptCookiePrefix + state[:16]
}

// login starts a sign-in: it keeps a fresh state, nonce and PKCE verifier in
// an attempt cookie and sends the browser to the provider.
func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	d, err := h.provider.get(r.Context())
	if err != nil {
		h.metrics.logins.WithLabelValues(h.cfg.ProviderID, resultProviderUnavailable).Inc()
		h.fail(w, r, providerUnavailable(err))
		return
	}
	state, err := randomToken(32)
	if err != nil {
		h.fail(w, r, internalError(err))
		return
	}
	nonce, err := randomToken(32)
	if err != nil {
		h.fail(w, r, internalError(err))
		return
	}
	now := h.cfg.Now()
	a := attempt{
		State:    state,
		Nonce:    nonce,
		Verifier: oauth2.GenerateVerifier(),
		Created:  now.Unix(),
		Return:   safeReturnPath(r.URL.Query().Get("rd")),
	}
	payload, err := json.Marshal(a)
	if err != nil {
		h.fail(w, r, internalError(err))
		return
	}
	name := attemptCookieName(state)
	sealed, err := h.sealer.Seal(name, payload, now.Add(attemptTTL))
	if err != nil {
		h.fail(w, r, internalError(err))
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name:     name,
		Value:    sealed,
		Path:     "/auth/callback",
		MaxAge:   int(attemptTTL.Seconds()),
		HttpOnly: true,
		Secure:   h.secure,
		SameSite: http.SameSiteLaxMode,
	})
	h.metrics.started.WithLabelValues(h.cfg.ProviderID).Inc()
	target := d.oauth2.AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(a.Verifier))
	w.Header().Set("Location", target)
	w.WriteHeader(http.StatusFound)
}

// safeReturnPath returns rd if it is a path on this site, else "/". It
// accepts only a relative path that starts with exactly one "/", so that
// "//evil.example" and "/\evil.example" (which browsers treat as another
// host) and anything with control characters or a backslash are refused.
func safeReturnPath(rd string) string {
	if rd == "" || len(rd) > 1024 || rd[0] != '/' {
		return "/"
	}
	if len(rd) > 1 && (rd[1] == '/' || rd[1] == '\\') {
		return "/"
	}
	// Browsers drop tabs and newlines inside URLs ("/\t/evil" becomes
	// "//evil") and treat "\" as "/".
	if strings.ContainsFunc(rd, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '\\' }) {
		return "/"
	}
	u, err := url.Parse(rd)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" {
		return "/"
	}
	return rd
}

func providerUnavailable(err error) failure {
	return failure{
		status: http.StatusServiceUnavailable, reason: resultProviderUnavailable, level: slog.LevelError,
		title:   "Sign-in is unavailable",
		message: "The identity provider is unreachable right now, so we cannot sign you in. Please try again in a few minutes.",
		logMsg:  "identity provider unreachable", logErr: err.Error(),
	}
}

func internalError(err error) failure {
	return failure{
		status: http.StatusInternalServerError, reason: "internal_error", level: slog.LevelError,
		title:   "Something went wrong",
		message: "We hit an unexpected problem. Please go back and try again.",
		logMsg:  "internal error", logErr: err.Error(),
	}
}
