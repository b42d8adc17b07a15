package login

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Session is who is signed in, sealed into the session cookie
// (__Host-doorbell_session over https without a cookie domain, else
// doorbell_session). It
// is the identity the provider vouched for at sign-in; the gateway does not
// re-check it with the provider before it expires.
type Session struct {
	// ID is random; the logout CSRF token is derived from it.
	ID       string `json:"id"`
	Issuer   string `json:"issuer"`
	Subject  string `json:"subject"`
	Provider string `json:"provider"`
	Email    string `json:"email"`
	Name     string `json:"name"`
	// IssuedAt and Expires are Unix seconds.
	IssuedAt int64 `json:"iat"`
	Expires  int64 `json:"expires"`
}

// setSession starts a session for s and returns its id.
func (h *Handler) setSession(w http.ResponseWriter, now time.Time, s Session) (string, error) {
	id, err := randomToken(16)
	if err != nil {
		return "", err
	}
	expires := now.Add(h.cfg.SessionTTL)
	s.ID, s.IssuedAt, s.Expires = id, now.Unix(), expires.Unix()
	payload, err := json.Marshal(s)
	if err != nil {
		return "", err
	}
	sealed, err := h.sealer.Seal(h.sessionCookie, payload, expires)
	if err != nil {
		return "", err
	}
	http.SetCookie(w, &http.Cookie{
		Name: h.sessionCookie, Value: sealed, Path: "/", Domain: h.cfg.CookieDomain, MaxAge: int(h.cfg.SessionTTL.Seconds()),
		HttpOnly: true, Secure: h.secure, SameSite: http.SameSiteLaxMode,
	})
	return id, nil
}

// session returns the signed-in person, or nil when the request carries no
// valid session. A browser may hold two session cookies (host-only and for
// GATEWAY_COOKIE_DOMAIN); the first valid one counts.
func (h *Handler) session(r *http.Request) *Session {
	now := h.cfg.Now()
	for _, c := range r.CookiesNamed(h.sessionCookie) {
		s, err := h.openSession(c.Value, now)
		if err == nil {
			return s
		}
		h.log.Debug("session cookie ignored", "error", err)
	}
	return nil
}

// openSession opens a session cookie value and checks, inside the sealed
// payload, that the session is younger than the configured lifetime (so
// lowering GATEWAY_SESSION_TTL also ends older sessions) and that its
// provider is still configured with the same issuer (so removing a
// provider ends its sessions).
func (h *Handler) openSession(value string, now time.Time) (*Session, error) {
	payload, err := h.sealer.Open(h.sessionCookie, value, now)
	if err != nil {
		return nil, err
	}
	var s Session
	if err := json.Unmarshal(payload, &s); err != nil {
		return nil, errors.New("session payload does not decode")
	}
	issued := time.Unix(s.IssuedAt, 0)
	switch p := h.providers[s.Provider]; {
	case s.ID == "" || s.IssuedAt == 0:
		return nil, errors.New("session from an older version")
	case now.Unix() >= s.Expires || now.Sub(issued) >= h.cfg.SessionTTL:
		return nil, errors.New("session expired")
	case issued.After(now.Add(time.Minute)):
		return nil, errors.New("session issued in the future")
	case p == nil:
		return nil, errors.New("session's provider is no longer configured")
	case p.issuer() != s.Issuer:
		return nil, errors.New("session's provider has another issuer now")
	}
	return &s, nil
}

// clearCookie deletes the cookie name at path for the host and, when domain
// is set, for the domain too. A __Host- cookie exists only at Path=/ for
// the host, so only that is deleted. A deletion the response already holds
// is not added again: callers that clear a cookie at several paths, or
// twice on one request, send each Set-Cookie once.
func (h *Handler) clearCookie(w http.ResponseWriter, name, path, domain string) {
	if strings.HasPrefix(name, hostPrefix) {
		path, domain = "/", ""
	}
	for _, d := range []string{"", domain} {
		c := (&http.Cookie{
			Name: name, Value: "", Path: path, Domain: d, MaxAge: -1,
			HttpOnly: true, Secure: h.secure, SameSite: http.SameSiteLaxMode,
		}).String()
		if c != "" && !slices.Contains(w.Header().Values("Set-Cookie"), c) {
			w.Header().Add("Set-Cookie", c)
		}
		if domain == "" {
			return
		}
	}
}

// csrfToken is the logout form's token for s: a keyed hash of the session
// id, so it is worthless without the session and cannot be guessed from
// outside.
func (h *Handler) csrfToken(s *Session) string {
	if s == nil {
		return ""
	}
	mac := hmac.New(sha256.New, h.csrfKey)
	mac.Write([]byte("logout\x00" + s.ID))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

func (h *Handler) home(w http.ResponseWriter, r *http.Request) {
	rd := ""
	if v := r.URL.Query().Get("rd"); v != "" {
		rd = h.returnTarget(r, v)
	}
	s := h.session(r)
	h.render(w, http.StatusOK, h.pages.home, h.homeData(s, rd, h.csrfToken(s)))
}

func (h *Handler) homeData(s *Session, rd, csrf string) homeData {
	d := homeData{Title: "Sign in", Session: s, CSRF: csrf}
	if s != nil {
		d.Title = "Signed in"
		if p := h.providers[s.Provider]; p != nil {
			d.ProviderName = p.cfg.Name
		}
		return d
	}
	for _, p := range h.order {
		d.Providers = append(d.Providers, providerButton{Name: p.cfg.Name, URL: h.loginLink(p, rd)})
	}
	return d
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

// verify answers forward-auth requests from a reverse proxy (nginx
// auth_request, Traefik ForwardAuth): 204 with the person in
// X-Auth-Request-* headers for a valid session, else 401 with no redirect;
// the proxy decides where to send the browser. Any method is accepted, as
// proxies pass the original one on.
func (h *Handler) verify(w http.ResponseWriter, r *http.Request) {
	s := h.session(r)
	if s == nil {
		h.metrics.verify.WithLabelValues(verifyUnauthorized).Inc()
		writeJSON(w, http.StatusUnauthorized, map[string]string{
			"error": "not_signed_in", "message": "No valid Doorbell session.",
		})
		return
	}
	h.metrics.verify.WithLabelValues(verifyAuthorized).Inc()
	hd := w.Header()
	hd.Set("X-Auth-Request-Email", s.Email)
	hd.Set("X-Auth-Request-User", s.Issuer+"|"+s.Subject)
	hd.Set("X-Auth-Request-Provider", s.Provider)
	w.WriteHeader(http.StatusNoContent)
}
