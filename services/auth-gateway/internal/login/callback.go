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
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/google/uuid"
	"golang.org/x/oauth2"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// maxUserAgent bounds the User-Agent copied into events.
const maxUserAgent = 512

// callback finishes a sign-in. The order of the checks is part of the
// security design: see completeLogin.
func (h *Handler) callback(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	f := h.completeLogin(w, r)
	h.metrics.callbackDuration.WithLabelValues(h.cfg.ProviderID).Observe(time.Since(start).Seconds())
	result := resultSuccess
	if f != nil {
		result = f.reason
	}
	if isResult(result) {
		h.metrics.logins.WithLabelValues(h.cfg.ProviderID, result).Inc()
	}
	if f != nil {
		h.fail(w, r, *f)
	}
}

// completeLogin runs the callback's checks in order and, when all pass,
// publishes the event, sets the session and redirects. It returns the
// failure to show otherwise; by then it has written nothing but cookie
// deletions.
func (h *Handler) completeLogin(w http.ResponseWriter, r *http.Request) *failure {
	q := r.URL.Query()
	state := q.Get("state")

	// 1. The provider reports an error (the person declined, or it failed).
	if code := q.Get("error"); code != "" {
		h.dropAttempt(w, r, state)
		return providerRefused(code)
	}

	// 2. The attempt must be ours, unused and fresh, before anything is
	// redeemed: a forged or replayed callback must not spend a code.
	a, err := h.takeAttempt(w, r, state)
	if err != nil {
		return &failure{
			status: http.StatusBadRequest, reason: resultStateInvalid, level: slog.LevelWarn,
			title:   "This sign-in link has expired",
			message: "This sign-in link has expired or was already used. Start again.",
			logMsg:  "callback rejected: sign-in attempt not valid", logErr: err.Error(),
		}
	}

	// 3. RFC 9207: an authorization response that names another issuer was
	// meant for another provider (mix-up attack).
	if iss := q.Get("iss"); iss != "" && iss != h.cfg.Issuer {
		return &failure{
			status: http.StatusBadRequest, reason: resultIssuerMismatch, level: slog.LevelWarn,
			title:   "Sign-in answer from the wrong provider",
			message: "The answer to this sign-in came from a different identity provider than the one we asked. Start again from the sign-in page.",
			logMsg:  "callback rejected: iss parameter is not our issuer",
			logErr:  fmt.Sprintf("got iss %q, want %q", truncate(iss, 200), h.cfg.Issuer),
		}
	}

	d, err := h.provider.get(r.Context())
	if err != nil {
		f := providerUnavailable(err)
		return &f
	}
	code := q.Get("code")
	if code == "" {
		return &failure{
			status: http.StatusBadRequest, reason: resultProviderError, level: slog.LevelWarn,
			title:   "Incomplete answer from the identity provider",
			message: "The identity provider's answer had no authorization code. Please start again.",
			logMsg:  "callback rejected: no code parameter",
		}
	}
	secrets := []string{code, a.Verifier, h.cfg.ClientSecret}

	// 4. Redeem the code with the PKCE verifier.
	ctx := h.provider.ctx(r.Context())
	tok, err := d.oauth2.Exchange(ctx, code, oauth2.VerifierOption(a.Verifier))
	if err != nil {
		return &failure{
			status: http.StatusBadGateway, reason: resultExchangeFailed, level: slog.LevelError,
			title:   "The identity provider did not answer properly",
			message: "We could not complete the sign-in with your identity provider. Please try again in a moment.",
			logMsg:  "code exchange failed", logErr: redact(err, secrets...),
		}
	}
	rawIDToken, _ := tok.Extra("id_token").(string)
	secrets = append(secrets, tok.AccessToken, tok.RefreshToken, rawIDToken)

	// 5. Verify the ID token (signature, iss, aud, expiry), then its nonce,
	// which go-oidc leaves to us.
	if rawIDToken == "" {
		return tokenInvalid("token response has no id_token")
	}
	idt, err := d.verifier.Verify(ctx, rawIDToken)
	if err != nil {
		return tokenInvalid(redact(err, secrets...))
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(a.Nonce)) != 1 {
		return &failure{
			status: http.StatusUnauthorized, reason: resultNonceMismatch, level: slog.LevelWarn,
			title:   "Sign-in could not be verified",
			message: "The identity provider's answer does not belong to this sign-in. Please start again.",
			logMsg:  "id token rejected: nonce does not match the attempt",
		}
	}

	// 6. A verified email, from the ID token or else from UserInfo.
	id, f := h.identify(ctx, d, tok, idt, secrets)
	if f != nil {
		return f
	}

	// 7. The event.
	now := h.cfg.Now()
	ev, err := h.newEvent(w, r, now, idt, id)
	if err != nil {
		f := internalError(err)
		return &f
	}

	// 8. Publish and wait for the ack; no session without it.
	pctx, cancel := context.WithTimeout(r.Context(), h.cfg.PublishTimeout)
	defer cancel()
	if _, err := h.publisher.Publish(pctx, ev); err != nil {
		return &failure{
			status: http.StatusServiceUnavailable, reason: resultPublishFailed, level: slog.LevelError,
			title:   "We could not finish signing you in",
			message: "We could not finish signing you in. Please try again in a moment.",
			logMsg:  "sign-in not completed: event not published",
			logErr:  fmt.Sprintf("event %s: %v", ev.GetEventId(), err),
		}
	}

	// 9. The session, then back to where the person started.
	if err := h.setSession(w, now, Session{
		Issuer: idt.Issuer, Subject: idt.Subject, Provider: h.cfg.ProviderID,
		Email: id.email, Name: truncate(id.name, 256),
	}); err != nil {
		f := internalError(err)
		return &f
	}
	w.Header().Set("Location", a.Return)
	w.WriteHeader(http.StatusFound)
	return nil
}

// takeAttempt finds, deletes and opens the attempt cookie for state and
// checks it. Its errors say which check failed and hold no secrets.
func (h *Handler) takeAttempt(w http.ResponseWriter, r *http.Request, state string) (attempt, error) {
	if len(state) < 16 {
		return attempt{}, errors.New("state parameter missing or too short")
	}
	name := attemptCookieName(state)
	c, err := r.Cookie(name)
	if err != nil {
		return attempt{}, errors.New("no attempt cookie for this state (expired, used, or another browser)")
	}
	// Single use: whatever happens next, this attempt is spent.
	h.clearCookie(w, name, "/auth/callback")

	now := h.cfg.Now()
	payload, err := h.sealer.Open(name, c.Value, now)
	if err != nil {
		return attempt{}, fmt.Errorf("attempt cookie: %w", err)
	}
	var a attempt
	if err := json.Unmarshal(payload, &a); err != nil {
		return attempt{}, fmt.Errorf("attempt cookie: %w", err)
	}
	if subtle.ConstantTimeCompare([]byte(a.State), []byte(state)) != 1 {
		return attempt{}, errors.New("state parameter does not match the attempt cookie")
	}
	created := time.Unix(a.Created, 0)
	if now.Sub(created) > attemptTTL || created.After(now.Add(time.Minute)) {
		return attempt{}, fmt.Errorf("attempt started %s ago, limit %s", now.Sub(created).Round(time.Second), attemptTTL)
	}
	return a, nil
}

// dropAttempt deletes the attempt cookie for state, if the browser sent it.
func (h *Handler) dropAttempt(w http.ResponseWriter, r *http.Request, state string) {
	if len(state) < 16 {
		return
	}
	name := attemptCookieName(state)
	if _, err := r.Cookie(name); err == nil {
		h.clearCookie(w, name, "/auth/callback")
	}
}

func providerRefused(code string) *failure {
	shown := truncate(code, 100)
	if code == "access_denied" {
		return &failure{
			status: http.StatusForbidden, reason: resultAccessDenied, level: slog.LevelInfo,
			title:   "Sign-in cancelled",
			message: "You declined to share your account with Doorbell, so you are not signed in. You can start again whenever you like.",
			logMsg:  "provider reported access_denied",
		}
	}
	return &failure{
		status: http.StatusBadRequest, reason: resultProviderError, level: slog.LevelWarn,
		title:   "The identity provider reported a problem",
		message: "Your identity provider could not sign you in. Please try again; if it keeps happening, tell whoever runs Doorbell for you.",
		detail:  shown,
		logMsg:  "provider reported an error", logErr: "error=" + shown,
	}
}

func tokenInvalid(why string) *failure {
	return &failure{
		status: http.StatusUnauthorized, reason: resultTokenInvalid, level: slog.LevelWarn,
		title:   "Sign-in could not be verified",
		message: "The identity provider's answer failed our security checks (invalid token). Please start again.",
		logMsg:  "id token rejected", logErr: why,
	}
}

// identity is what the provider told us about the person.
type identity struct {
	email, name, locale string
}

// identify returns the person's verified email, name and locale. It asks
// the UserInfo endpoint only when the ID token lacks the email or its
// email_verified claim.
func (h *Handler) identify(ctx context.Context, d *discovered, tok *oauth2.Token, idt *oidc.IDToken, secrets []string) (identity, *failure) {
	var c claims
	if err := idt.Claims(&c); err != nil {
		return identity{}, tokenInvalid("id token claims: " + redact(err, secrets...))
	}
	id := identity{email: c.Email, name: c.Name, locale: c.Locale}
	verified := c.EmailVerified

	if (c.Email == "" || verified == nil) && d.provider.UserInfoEndpoint() != "" {
		ui, err := d.provider.UserInfo(ctx, oauth2.StaticTokenSource(tok))
		if err != nil {
			return identity{}, &failure{
				status: http.StatusBadGateway, reason: resultExchangeFailed, level: slog.LevelError,
				title:   "The identity provider did not answer properly",
				message: "We could not get your account details from your identity provider. Please try again in a moment.",
				logMsg:  "userinfo request failed", logErr: redact(err, secrets...),
			}
		}
		if ui.Subject != idt.Subject {
			return identity{}, tokenInvalid("userinfo sub differs from the id token's sub")
		}
		var uc claims
		if err := ui.Claims(&uc); err != nil {
			return identity{}, tokenInvalid("userinfo claims: " + redact(err, secrets...))
		}
		if uc.Email != "" {
			id.email, verified = uc.Email, uc.EmailVerified
		}
		if id.name == "" {
			id.name = uc.Name
		}
		if id.locale == "" {
			id.locale = uc.Locale
		}
	}

	if id.email == "" {
		return identity{}, &failure{
			status: http.StatusForbidden, reason: resultEmailMissing, level: slog.LevelWarn,
			title:   "No email address",
			message: "Your identity provider did not share an email address, and Doorbell needs one to sign you in. Allow access to your email address, then sign in again.",
			logMsg:  "sign-in refused: provider shared no email",
		}
	}
	if verified == nil || !bool(*verified) {
		return identity{}, &failure{
			status: http.StatusForbidden, reason: resultEmailUnverified, level: slog.LevelWarn,
			title: "Email address not verified",
			message: fmt.Sprintf("Your email address %s is not verified by %s. Verify it there, then sign in again.",
				id.email, h.providerName()),
			logMsg: "sign-in refused: email not verified by the provider",
		}
	}
	return id, nil
}

// providerName is how pages name the identity provider: its issuer's host.
func (h *Handler) providerName() string {
	if i := strings.Index(h.cfg.Issuer, "://"); i >= 0 {
		host := h.cfg.Issuer[i+3:]
		if j := strings.IndexByte(host, '/'); j >= 0 {
			host = host[:j]
		}
		return host
	}
	return h.cfg.Issuer
}

// newEvent builds the UserAuthenticated event, setting the device cookie if
// the browser has none.
func (h *Handler) newEvent(w http.ResponseWriter, r *http.Request, now time.Time, idt *oidc.IDToken, id identity) (*eventsv1.UserAuthenticated, error) {
	eventID, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("event id: %w", err)
	}
	deviceID, err := h.deviceID(w, r)
	if err != nil {
		return nil, err
	}
	ip := r.RemoteAddr
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		ip = host
	}
	return &eventsv1.UserAuthenticated{
		EventId:         eventID.String(),
		AuthenticatedAt: timestamppb.New(now),
		Issuer:          idt.Issuer,
		Subject:         idt.Subject,
		Provider:        h.cfg.ProviderID,
		Email:           id.email,
		Name:            id.name,
		Locale:          id.locale,
		Client: &eventsv1.Client{
			Ip: ip,
			// Protobuf strings must be valid UTF-8; headers need not be.
			UserAgent: truncate(strings.ToValidUTF8(r.UserAgent(), "\uFFFD"), maxUserAgent),
			DeviceId:  deviceID,
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
	} else {
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
	for _, r := range results {
		if r == s {
			return true
		}
	}
	return false
}
