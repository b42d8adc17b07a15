package login

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"net/http"
	"time"
)

// logoutTimeout bounds looking up the provider's logout endpoint.
const logoutTimeout = 5 * time.Second

// logoutHintCookie keeps the ID token of the session's sign-in for
// signing out at the provider (id_token_hint). It is sent only to /logout
// and only from this site, and lives as long as the session.
const logoutHintCookie = "doorbell_logout"

// logoutHint is what the logout hint cookie holds.
type logoutHint struct {
	// Session is the id of the session whose sign-in IDToken is.
	Session string `json:"session"`
	IDToken string `json:"id_token"`
}

// keepLogoutHint stores the ID token of the sign-in that started session,
// for the provider's end-session endpoint. When there is none (GitHub), or
// it would make the cookie larger than maxCookieBytes, an older one is
// deleted instead and signing out goes without the hint.
func (h *Handler) keepLogoutHint(w http.ResponseWriter, session, idToken string, now time.Time) error {
	sealed := ""
	if idToken != "" {
		payload, err := json.Marshal(logoutHint{Session: session, IDToken: idToken})
		if err != nil {
			return err
		}
		if sealed, err = h.sealer.Seal(logoutHintCookie, payload, now.Add(h.cfg.SessionTTL)); err != nil {
			return err
		}
	}
	if sealed == "" || len(logoutHintCookie)+len(sealed) > maxCookieBytes {
		if sealed != "" {
			h.log.Debug("ID token too large to keep for signing out at the provider; it goes without id_token_hint", "bytes", len(idToken))
		}
		h.clearCookie(w, logoutHintCookie, "/logout", "")
		return nil
	}
	http.SetCookie(w, &http.Cookie{
		Name: logoutHintCookie, Value: sealed, Path: "/logout", MaxAge: int(h.cfg.SessionTTL.Seconds()),
		HttpOnly: true, Secure: h.secure, SameSite: http.SameSiteStrictMode,
	})
	return nil
}

// takeLogoutHint deletes the logout hint cookie and returns the ID token
// it holds for session s, or "".
func (h *Handler) takeLogoutHint(w http.ResponseWriter, r *http.Request, s *Session) string {
	c, err := r.Cookie(logoutHintCookie)
	if err != nil {
		return ""
	}
	h.clearCookie(w, logoutHintCookie, "/logout", "")
	payload, err := h.sealer.Open(logoutHintCookie, c.Value, h.cfg.Now())
	if err != nil {
		return ""
	}
	var hint logoutHint
	if json.Unmarshal(payload, &hint) != nil || !hmac.Equal([]byte(hint.Session), []byte(s.ID)) {
		return ""
	}
	return hint.IDToken
}

// logoutPage asks the person to confirm signing out: a GET never signs
// anyone out, so a link or an image cannot do it.
func (h *Handler) logoutPage(w http.ResponseWriter, r *http.Request) {
	s := h.session(r)
	title := "Sign out"
	if s == nil {
		title = "Signed out"
	}
	h.render(w, http.StatusOK, h.pages.logout, logoutData{Title: title, Session: s, CSRF: h.csrfToken(s)})
}

// logout ends the session when the sign-out form of this site sent the
// request: the browser must not call it cross-origin (Sec-Fetch-Site or
// Origin) and the form's token must match the session. When the provider
// has an end_session_endpoint (RP-initiated logout, with the sign-in's
// id_token_hint when kept, back to the public URL afterwards), the answer
// is a page that sends the browser on there (see leaveFor); otherwise a
// redirect to /.
func (h *Handler) logout(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := h.origin.Check(r); err != nil {
		h.refuseLogout(w, r, "cross-origin request: "+err.Error())
		return
	}
	if err := r.ParseForm(); err != nil {
		h.refuseLogout(w, r, "form does not parse")
		return
	}
	s := h.session(r)
	if s == nil {
		// Nothing to protect: forget whatever the browser holds.
		h.clearCookie(w, h.sessionCookie, "/", h.cfg.CookieDomain)
		h.clearCookie(w, logoutHintCookie, "/logout", "")
		h.metrics.logouts.WithLabelValues(logoutNoSession).Inc()
		w.Header().Set("Location", "/")
		w.WriteHeader(http.StatusSeeOther)
		return
	}
	if !hmac.Equal([]byte(r.PostForm.Get("csrf")), []byte(h.csrfToken(s))) {
		h.refuseLogout(w, r, "csrf token missing or not this session's")
		return
	}
	h.clearCookie(w, h.sessionCookie, "/", h.cfg.CookieDomain)
	hint := h.takeLogoutHint(w, r, s)
	target := ""
	p := h.providers[s.Provider]
	if p != nil {
		ctx, cancel := context.WithTimeout(r.Context(), logoutTimeout)
		target = p.flow.logoutURL(ctx, h.cfg.PublicURL.String()+"/", hint)
		cancel()
	}
	h.metrics.logouts.WithLabelValues(logoutSuccess).Inc()
	h.log.Info("signed out", "provider", s.Provider, "at_provider", target != "", "id_token_hint", hint != "")
	if target == "" {
		w.Header().Set("Location", "/")
		w.WriteHeader(http.StatusSeeOther)
		return
	}
	h.leaveFor(w, p.cfg.Name, target)
}

// leaveFor answers with a page that sends the browser on to the
// provider's end-session URL at once (a Refresh header), with a button for
// browsers that do not follow it. A redirect would not do: it follows the
// sign-out form's POST, and browsers apply the page's CSP form-action
// 'self' to such redirects, so Chromium would block it and the person
// would stay signed in at the provider. A Refresh is a new navigation,
// which form-action does not govern.
func (h *Handler) leaveFor(w http.ResponseWriter, providerName, target string) {
	w.Header().Set("Refresh", "0; url="+target)
	h.render(w, http.StatusOK, h.pages.leaving, leavingData{Title: "Signing out", ProviderName: providerName, URL: target})
}

func (h *Handler) refuseLogout(w http.ResponseWriter, r *http.Request, why string) {
	h.metrics.logouts.WithLabelValues(logoutRejected).Inc()
	h.fail(w, r, failed(reasonLogoutRejected, why))
}
