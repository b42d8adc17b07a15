package login

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"time"
)

// Session is who is signed in, sealed into the doorbell_session cookie. It
// is the identity the provider vouched for at sign-in; the gateway does not
// re-check it with the provider before it expires.
type Session struct {
	Issuer   string `json:"issuer"`
	Subject  string `json:"subject"`
	Provider string `json:"provider"`
	Email    string `json:"email"`
	Name     string `json:"name"`
	// Expires is Unix seconds.
	Expires int64 `json:"expires"`
}

func (h *Handler) setSession(w http.ResponseWriter, now time.Time, s Session) error {
	expires := now.Add(sessionTTL)
	s.Expires = expires.Unix()
	payload, err := json.Marshal(s)
	if err != nil {
		return err
	}
	sealed, err := h.sealer.Seal(sessionCookie, payload, expires)
	if err != nil {
		return err
	}
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: sealed, Path: "/", MaxAge: int(sessionTTL.Seconds()),
		HttpOnly: true, Secure: h.secure, SameSite: http.SameSiteLaxMode,
	})
	return nil
}

// session returns the signed-in person, or nil when the request carries no
// valid, unexpired session.
func (h *Handler) session(r *http.Request) *Session {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil
	}
	now := h.cfg.Now()
	payload, err := h.sealer.Open(sessionCookie, c.Value, now)
	if err != nil {
		h.log.Debug("session cookie ignored", "err", err)
		return nil
	}
	var s Session
	if err := json.Unmarshal(payload, &s); err != nil || now.Unix() >= s.Expires {
		return nil
	}
	return &s
}

func (h *Handler) clearCookie(w http.ResponseWriter, name, path string) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: "", Path: path, MaxAge: -1,
		HttpOnly: true, Secure: h.secure, SameSite: http.SameSiteLaxMode,
	})
}

func (h *Handler) home(w http.ResponseWriter, r *http.Request) {
	s := h.session(r)
	title := "Sign in"
	if s != nil {
		title = "Signed in"
	}
	h.render(w, http.StatusOK, h.pages.home, homeData{Title: title, Session: s})
}

// me answers with the signed-in person as JSON.
func (h *Handler) me(w http.ResponseWriter, r *http.Request) {
	s := h.session(r)
	if s == nil {
		h.log.Debug("me: not signed in")
		writeJSON(w, http.StatusUnauthorized, map[string]string{
			"error": "not_signed_in", "message": "You are not signed in. Sign in at /login first.",
		})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{
		"email": s.Email, "name": s.Name, "issuer": s.Issuer, "subject": s.Subject, "provider": s.Provider,
	})
}

// logout forgets the session. It does not sign the person out at the
// identity provider.
func (h *Handler) logout(w http.ResponseWriter, r *http.Request) {
	h.clearCookie(w, sessionCookie, "/")
	h.log.Log(r.Context(), slog.LevelDebug, "signed out")
	w.Header().Set("Location", "/")
	w.WriteHeader(http.StatusSeeOther)
}
