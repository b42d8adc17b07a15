package login

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/oauth2"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/doorbell/doorbell/platform/telemetry"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// maxUserAgent bounds the User-Agent copied into events.
const maxUserAgent = 512

// maxAcceptLanguage bounds the Accept-Language header carried in the event,
// in bytes: plenty for a browser's list of languages.
const maxAcceptLanguage = 256

// maxName bounds the display name in events and sessions, in bytes.
const maxName = 256

// callback finishes a sign-in. The order of the checks is part of the
// security design: see completeLogin. Each callback is one span, one
// observation of callback_duration_seconds (with the trace id as exemplar
// when sampled) and one info-level "login" log line; a failure also logs
// its own line with the details.
func (h *Handler) callback(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ctx, span := h.tracer.Start(r.Context(), "login.callback", trace.WithSpanKind(trace.SpanKindServer))
	defer span.End()
	r = r.WithContext(ctx)

	var out outcome
	f := h.completeLogin(w, r, &out)
	elapsed := time.Since(start)
	label := h.label(out.provider)
	telemetry.Observe(ctx, h.metrics.callbackDuration.WithLabelValues(label), elapsed.Seconds())
	result := resultSuccess
	if f != nil {
		result = f.label()
	}
	if isResult(result) {
		h.metrics.logins.WithLabelValues(label, result).Inc()
	}
	span.SetAttributes(attribute.String("doorbell.provider", label), attribute.String("doorbell.result", result))
	if out.eventID != "" {
		span.SetAttributes(attribute.String("doorbell.event_id", out.eventID), attribute.Bool("doorbell.spooled", out.spooled))
	}
	if f != nil {
		span.SetAttributes(attribute.Int("http.response.status_code", f.status()))
		if f.status() >= 500 {
			span.SetStatus(codes.Error, f.label())
		}
		h.fail(w, r, f)
	}

	attrs := []slog.Attr{
		slog.String("provider", label), slog.String("result", result), slog.Duration("duration", elapsed),
	}
	if out.eventID != "" {
		attrs = append(attrs, slog.String("event_id", out.eventID))
	}
	if out.spooled {
		attrs = append(attrs, slog.Bool("spooled", true))
	}
	if h.cfg.LogEmails && out.email != "" {
		attrs = append(attrs, slog.String("email", out.email))
	}
	if sc := span.SpanContext(); sc.IsSampled() {
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()))
	}
	h.log.LogAttrs(ctx, slog.LevelInfo, "login", attrs...)
}

// outcome is what a callback learned on its way, for its span and log line.
type outcome struct {
	// provider the attempt went to; nil when unknown.
	provider *provider
	// eventID is set once the event is built.
	eventID string
	// email is set once the provider vouched for it.
	email string
	// spooled is true when the event went to the spool.
	spooled bool
}

// completeLogin runs the callback's checks in order and, when all pass,
// publishes the event, sets the session and redirects. It records what it
// learns in out and returns the failure to show otherwise; by then it has
// written nothing but cookie deletions.
func (h *Handler) completeLogin(w http.ResponseWriter, r *http.Request, out *outcome) *failure {
	q := r.URL.Query()

	// 1. The attempt must be ours, unused and fresh before anything else,
	// even an error report: a forged or replayed callback must not spend a
	// code nor put the provider's words on our page.
	a, p, err := h.takeAttempt(w, r, q.Get("state"))
	out.provider = p
	if err != nil {
		return failed(reasonStateInvalid, err.Error())
	}

	// 2. Mix-up (RFC 9700 §4.4): an answer at another provider's callback,
	// or one that names another issuer (RFC 9207), was meant for another
	// provider.
	if f := p.checkCallbackPath(r.URL.Path); f != nil {
		return f
	}
	if f := p.flow.checkIssuer(r.Context(), q.Get("iss")); f != nil {
		return f
	}

	// 3. The provider reports an error (the person declined, or it failed).
	if code := q.Get("error"); code != "" {
		return providerRefused(code)
	}
	code := q.Get("code")
	if code == "" {
		return failed(reasonCodeMissing, "")
	}

	// 4. Redeem the code and learn who signed in, with a verified email.
	id, f := p.flow.identify(r.Context(), code, a)
	if f != nil {
		return f
	}
	out.email = id.email
	if f := h.checkIdentity(p, id); f != nil {
		return f
	}
	// The provider picks the name: bound it for the event and the session
	// alike, so no sign-in makes an event JetStream refuses as too large.
	id.name = truncate(id.name, maxName)

	// 5. The event, published; no session without the ack.
	now := h.cfg.Now()
	if f := h.publishEvent(w, r, now, p, id, out); f != nil {
		return f
	}

	// 6. The session, then back to where the person started.
	return h.startSession(w, now, p, id, a.Return)
}

// publishEvent builds the sign-in's event and publishes it, waiting for
// the ack within PublishTimeout. It records the event id and whether the
// event was spooled in out.
func (h *Handler) publishEvent(w http.ResponseWriter, r *http.Request, now time.Time, p *provider, id identity, out *outcome) *failure {
	ev, err := h.newEvent(w, r, now, p, id)
	if err != nil {
		return failed(reasonInternal, err.Error())
	}
	out.eventID = ev.GetEventId()

	pctx, cancel := context.WithTimeout(r.Context(), h.cfg.PublishTimeout)
	defer cancel()
	ack, err := h.publisher.Publish(pctx, ev)
	if err != nil {
		return failed(reasonPublishFailed, fmt.Sprintf("event %s: %v", ev.GetEventId(), err))
	}
	out.spooled = ack.Spooled
	return nil
}

// startSession sets the session cookie (and keeps the ID token, for
// signing out at the provider), then redirects to returnTo.
func (h *Handler) startSession(w http.ResponseWriter, now time.Time, p *provider, id identity, returnTo string) *failure {
	session, err := h.setSession(w, now, Session{
		Issuer: id.issuer, Subject: id.subject, Provider: p.cfg.ID,
		Email: id.email, Name: id.name,
	})
	if err == nil {
		err = h.keepLogoutHint(w, session, id.idToken, now)
	}
	if err != nil {
		return failed(reasonInternal, err.Error())
	}
	w.Header().Set("Location", returnTo)
	w.WriteHeader(http.StatusFound)
	return nil
}

// takeAttempt finds, deletes and opens the attempt cookie for state and
// checks it. It returns the attempt's provider whenever the cookie opened,
// even if a later check failed. Its errors say which check failed and hold
// no secrets.
func (h *Handler) takeAttempt(w http.ResponseWriter, r *http.Request, state string) (attempt, *provider, error) {
	if len(state) < 16 {
		return attempt{}, nil, errors.New("state parameter missing or too short")
	}
	name := attemptCookieName(state)
	c, err := r.Cookie(name)
	if err != nil {
		return attempt{}, nil, errors.New("no attempt cookie for this state (expired, used, or another browser)")
	}
	// Single use: whatever happens next, this attempt is spent.
	h.clearCookie(w, name, "/", "")

	now := h.cfg.Now()
	payload, err := h.sealer.Open(name, c.Value, now)
	if err != nil {
		return attempt{}, nil, fmt.Errorf("attempt cookie: %w", err)
	}
	var a attempt
	if err := json.Unmarshal(payload, &a); err != nil {
		return attempt{}, nil, fmt.Errorf("attempt cookie: %w", err)
	}
	p := h.providers[a.Provider]
	if p == nil {
		return attempt{}, nil, errors.New("attempt cookie names a provider that is not configured")
	}
	if subtle.ConstantTimeCompare([]byte(a.State), []byte(state)) != 1 {
		return attempt{}, p, errors.New("state parameter does not match the attempt cookie")
	}
	created := time.Unix(a.Created, 0)
	if now.Sub(created) > attemptTTL || created.After(now.Add(time.Minute)) {
		return attempt{}, p, fmt.Errorf("attempt started %s ago, limit %s", now.Sub(created).Round(time.Second), attemptTTL)
	}
	// The browser deletes the cookie, but a copy of it must not work either.
	if !h.spent.spend(state, now, created.Add(attemptTTL)) {
		return attempt{}, p, errors.New("attempt already used (replayed callback)")
	}
	return a, p, nil
}

// checkIdentity applies the rules that hold whatever the provider: a
// usable subject, a plausible email address and the allowed domains.
func (h *Handler) checkIdentity(p *provider, id identity) *failure {
	if id.subject == "" || len(id.subject) > 255 || !printable(id.subject) {
		return failed(reasonTokenInvalid, "subject is empty, longer than 255 bytes or has control characters")
	}
	if !plausibleEmail(id.email) {
		return failed(reasonEmailInvalid, "")
	}
	if len(p.cfg.AllowedEmailDomains) > 0 {
		domain := strings.ToLower(id.email[strings.LastIndexByte(id.email, '@')+1:])
		if !slices.Contains(p.cfg.AllowedEmailDomains, domain) {
			return failed(reasonEmailDomainNotAllowed, "", id.email, p.cfg.Name)
		}
	}
	return nil
}

// plausibleEmail accepts local@domain with no whitespace, control
// characters or characters that would let the address be read as a list
// or a display name ("a@b, c@d", "Eve <e@x>") by whoever reads the event or
// the X-Auth-Request-Email header.
func plausibleEmail(s string) bool {
	at := strings.LastIndexByte(s, '@')
	if len(s) > 254 || at < 1 || at == len(s)-1 || !utf8.ValidString(s) {
		return false
	}
	return !strings.ContainsFunc(s, func(r rune) bool {
		return r <= ' ' || r == 0x7f || strings.ContainsRune(`,;<>()[]\"`, r) || (r >= 0x80 && r <= 0x9f)
	}) && strings.Count(s, "@") == 1
}

// printable reports whether s is valid UTF-8 with no control characters.
func printable(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || (r >= 0x7f && r <= 0x9f) })
}

// providerRefused is the failure for an error the provider reported in
// its answer: the person declined (access_denied), or something else,
// whose code is shown on the page.
func providerRefused(code string) *failure {
	if code == "access_denied" {
		return failed(reasonAccessDenied, "")
	}
	shown := truncate(code, 100)
	f := failed(reasonProviderError, "error="+shown)
	f.detail = shown
	return f
}

// newEvent builds the UserAuthenticated event, setting the device cookie if
// the browser has none.
func (h *Handler) newEvent(w http.ResponseWriter, r *http.Request, now time.Time, p *provider, id identity) (*eventsv1.UserAuthenticated, error) {
	eventID, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("event id: %w", err)
	}
	deviceID, err := h.deviceID(w, r)
	if err != nil {
		return nil, err
	}
	return &eventsv1.UserAuthenticated{
		EventId:         eventID.String(),
		AuthenticatedAt: timestamppb.New(now),
		Issuer:          id.issuer,
		Subject:         id.subject,
		Provider:        p.cfg.ID,
		Email:           id.email,
		Name:            id.name,
		Locale:          truncate(id.locale, 35),
		Client: &eventsv1.Client{
			Ip: h.clientIP(r).String(),
			// Protobuf strings must be valid UTF-8; headers need not be.
			UserAgent:      truncate(strings.ToValidUTF8(r.UserAgent(), "\uFFFD"), maxUserAgent),
			DeviceId:       deviceID,
			AcceptLanguage: truncate(strings.ToValidUTF8(r.Header.Get("Accept-Language"), "\uFFFD"), maxAcceptLanguage),
		},
	}, nil
}

// deviceID returns the keyed hash of the browser's device cookie, setting a
// new random cookie when it has none (or a malformed one).
func (h *Handler) deviceID(w http.ResponseWriter, r *http.Request) (string, error) {
	value := ""
	if c, err := r.Cookie(deviceCookie); err == nil {
		if b, err := base64.RawURLEncoding.DecodeString(c.Value); err == nil && len(b) == 32 {
			value = c.Value
		}
	}
	if value == "" {
		v, err := randomToken(32)
		if err != nil {
			return "", err
		}
		value = v
		http.SetCookie(w, &http.Cookie{
			Name: deviceCookie, Value: value, Path: "/", MaxAge: int(deviceTTL.Seconds()),
			HttpOnly: true, Secure: h.secure, SameSite: http.SameSiteLaxMode,
		})
	}
	mac := hmac.New(sha256.New, h.deviceKey)
	mac.Write([]byte(value))
	return hex.EncodeToString(mac.Sum(nil)), nil
}

// redact returns err's text for a log line with every secret replaced, and
// for token endpoint errors only the status, error code and description:
// some providers echo the code or the client secret back in the body.
func redact(err error, secrets ...string) string {
	var s string
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		s = "token endpoint answered"
		if re.Response != nil {
			s += " " + re.Response.Status
		}
		if re.ErrorCode != "" {
			s += ": " + re.ErrorCode
		}
		if re.ErrorDescription != "" {
			s += ": " + re.ErrorDescription
		}
	} else if err != nil {
		s = err.Error()
	}
	for _, secret := range secrets {
		if len(secret) >= 6 {
			s = strings.ReplaceAll(s, secret, "[redacted]")
		}
	}
	return truncate(s, 500)
}

func isResult(s string) bool {
	return slices.Contains(results, s)
}
