package login

import (
	"bytes"
	"cmp"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/oauth2"
)

// attempt is one sign-in in progress, sealed into its own cookie between
// /login and the callback. The cookie's Path is / so that /login sees the
// attempts a browser already holds (see pruneAttempts).
type attempt struct {
	State    string `json:"state"`
	Nonce    string `json:"nonce"`
	Verifier string `json:"verifier"`
	// Provider is the id of the provider the attempt went to.
	Provider string `json:"provider"`
	// Created is Unix seconds.
	Created int64 `json:"created"`
	// Return is where to go afterwards, already checked.
	Return string `json:"return"`
}

// attemptCookieName is one cookie per attempt, so that sign-ins started in
// several tabs do not overwrite each other.
func attemptCookieName(state string) string {
	return attemptCookiePrefix + state[:16]
}

// login starts a sign-in with the provider named by the provider
// parameter (needed only when there are several): it keeps a fresh state,
// nonce and PKCE verifier in an attempt cookie and sends the browser to the
// provider. Without a provider parameter and with several providers it
// shows the choice.
func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	ctx, span := h.tracer.Start(r.Context(), "login.start", trace.WithSpanKind(trace.SpanKindServer))
	defer span.End()
	r = r.WithContext(ctx)
	rd := h.returnTarget(r, r.URL.Query().Get("rd"))
	p := h.chooseProvider(w, r, span, rd)
	if p == nil {
		return
	}
	span.SetAttributes(attribute.String("doorbell.provider", p.cfg.ID))

	target, f := h.startAttempt(w, r, p, rd)
	if f != nil {
		if f.reason == reasonProviderUnavailable {
			span.SetAttributes(attribute.String("doorbell.result", resultProviderUnavailable))
			span.SetStatus(codes.Error, resultProviderUnavailable)
			h.metrics.logins.WithLabelValues(p.cfg.ID, resultProviderUnavailable).Inc()
		}
		h.fail(w, r, f)
		return
	}
	h.metrics.started.WithLabelValues(p.cfg.ID).Inc()
	span.SetAttributes(attribute.String("doorbell.result", "redirected"))
	w.Header().Set("Location", target)
	w.WriteHeader(http.StatusFound)
}

// chooseProvider returns the provider the sign-in goes to: the one the
// provider parameter names, or the only one. Otherwise it answers itself,
// with the failure for an unknown provider or the page to choose one on,
// and returns nil.
func (h *Handler) chooseProvider(w http.ResponseWriter, r *http.Request, span trace.Span, rd string) *provider {
	switch id := r.URL.Query().Get("provider"); {
	case id != "":
		p := h.providers[id]
		if p == nil {
			span.SetAttributes(attribute.String("doorbell.result", resultProviderUnknown))
			h.metrics.logins.WithLabelValues(h.label(nil), resultProviderUnknown).Inc()
			h.fail(w, r, failed(reasonProviderUnknown, ""))
		}
		return p
	case len(h.order) == 1:
		return h.order[0]
	default:
		span.SetAttributes(attribute.String("doorbell.result", "choose_provider"))
		h.render(w, http.StatusOK, h.pages.home, h.homeData(nil, rd, ""))
		return nil
	}
}

// startAttempt makes a fresh state, nonce and PKCE verifier, keeps them in
// a new attempt cookie (making room for it, see pruneAttempts) and returns
// where at p to send the browser. It sets no cookie when it fails.
func (h *Handler) startAttempt(w http.ResponseWriter, r *http.Request, p *provider, rd string) (string, *failure) {
	state, err := randomToken(32)
	if err != nil {
		return "", failed(reasonInternal, err.Error())
	}
	nonce, err := randomToken(32)
	if err != nil {
		return "", failed(reasonInternal, err.Error())
	}
	verifier := oauth2.GenerateVerifier()
	target, err := p.flow.authURL(r.Context(), state, nonce, verifier)
	if err != nil {
		return "", failed(reasonProviderUnavailable, err.Error())
	}
	now := h.cfg.Now()
	name := attemptCookieName(state)
	sealed, err := h.sealAttempt(r, name, attempt{
		State: state, Nonce: nonce, Verifier: verifier, Provider: p.cfg.ID, Created: now.Unix(), Return: rd,
	}, now)
	if err != nil {
		return "", failed(reasonInternal, err.Error())
	}
	h.pruneAttempts(w, r, len(name)+len(sealed), now)
	http.SetCookie(w, &http.Cookie{
		Name:     name,
		Value:    sealed,
		Path:     "/",
		MaxAge:   int(attemptTTL.Seconds()),
		HttpOnly: true,
		Secure:   h.secure,
		SameSite: http.SameSiteLaxMode,
	})
	return target, nil
}

// sealAttempt seals a into the cookie called name. The JSON is not
// HTML-escaped (an rd full of '&' would grow six-fold), and when the cookie
// would still pass maxCookieBytes the attempt returns to / instead of rd,
// rather than set a cookie the browser drops.
func (h *Handler) sealAttempt(r *http.Request, name string, a attempt, now time.Time) (string, error) {
	for {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(a); err != nil {
			return "", err
		}
		sealed, err := h.sealer.Seal(name, bytes.TrimSuffix(buf.Bytes(), []byte("\n")), now.Add(attemptTTL))
		if err != nil || len(name)+len(sealed) <= maxCookieBytes || a.Return == "/" {
			return sealed, err
		}
		h.log.Info("rd too long to keep through the sign-in; returning to / afterwards",
			"path", r.URL.Path, "rd_length", len(a.Return))
		a.Return = "/"
	}
}

// pruneAttempts deletes the browser's older attempt cookies, and ones that
// no longer open, so that with the new one, newSize bytes, it holds at most
// maxAttempts taking at most attemptBudget bytes: a page that keeps
// starting sign-ins must not grow the Cookie header until proxies refuse
// every request.
func (h *Handler) pruneAttempts(w http.ResponseWriter, r *http.Request, newSize int, now time.Time) {
	type held struct {
		name    string
		size    int
		created int64 // 0 when it does not open
		// order is the place in the Cookie header: browsers send cookies of
		// the same path oldest first (RFC 6265 5.4), which orders attempts
		// started within the same second.
		order int
	}
	var hs []held
	for i, c := range r.Cookies() {
		if !strings.HasPrefix(c.Name, attemptCookiePrefix) {
			continue
		}
		x := held{name: c.Name, size: len(c.Name) + len(c.Value), order: i}
		if payload, err := h.sealer.Open(c.Name, c.Value, now); err == nil {
			var a attempt
			if json.Unmarshal(payload, &a) == nil {
				x.created = a.Created
			}
		}
		hs = append(hs, x)
	}
	slices.SortFunc(hs, func(a, b held) int { // newest first
		return cmp.Or(cmp.Compare(b.created, a.created), cmp.Compare(b.order, a.order))
	})
	kept, budget := 1, attemptBudget-newSize
	for _, x := range hs {
		if x.created != 0 && kept < maxAttempts && x.size <= budget {
			kept++
			budget -= x.size
			continue
		}
		h.clearCookie(w, x.name, "/", "")
	}
}

// returnTarget returns rd when it is a safe place to go after sign-in (see
// package redirect), else "/".
func (h *Handler) returnTarget(r *http.Request, rd string) string {
	if rd == "" {
		return "/"
	}
	target, ok := h.redirects.Check(rd)
	if !ok {
		// Debug: anyone can send such a link, and following it is harmless.
		h.log.Debug("rd parameter refused: not a path here or a URL on GATEWAY_REDIRECT_HOSTS; returning to / after sign-in",
			"path", r.URL.Path, "rd_length", len(rd))
		return "/"
	}
	return target
}

// loginLink is the sign-in URL for p that returns to rd. With a single
// provider it needs no provider parameter.
func (h *Handler) loginLink(p *provider, rd string) string {
	q := url.Values{}
	if len(h.order) > 1 {
		q.Set("provider", p.cfg.ID)
	}
	if rd != "" && rd != "/" {
		q.Set("rd", rd)
	}
	if len(q) == 0 {
		return "/login"
	}
	return "/login?" + q.Encode()
}
