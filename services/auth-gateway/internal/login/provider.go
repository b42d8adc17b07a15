package login

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sync/atomic"

	"github.com/coreos/go-oidc/v3/oidc"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/oauth2"
	"golang.org/x/sync/singleflight"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/config"
)

// provider is one configured identity provider.
type provider struct {
	cfg  ProviderConfig
	flow flow
	// callbackPath is the path of its redirect URI.
	callbackPath string
}

// flow is how one kind of provider signs people in. Implementations make
// every request with the gateway's provider HTTP client, so each is bounded
// by its timeout as well as by ctx.
type flow interface {
	// authURL returns where to send the browser to start a sign-in. An
	// error means the provider cannot be used right now.
	authURL(ctx context.Context, state, nonce, verifier string) (string, error)
	// checkIssuer applies RFC 9207 to the iss parameter of a callback ("" when
	// absent).
	checkIssuer(ctx context.Context, iss string) *failure
	// identify redeems code and returns who signed in. It fails unless the
	// provider vouches for the email address.
	identify(ctx context.Context, code string, a attempt) (identity, *failure)
	// logoutURL returns where to send the browser to sign out at the
	// provider too, or "" when it offers no such thing. idTokenHint is the
	// ID token of the sign-in that ends, or "" when it was not kept.
	logoutURL(ctx context.Context, postLogout, idTokenHint string) string
	// ready reports whether the provider can be used, loading what it needs.
	ready(ctx context.Context) error
}

// identity is what the provider told us about the person.
type identity struct {
	// issuer and subject are the stable user key; issuer is the provider's
	// configured issuer (GitHub's API URL), whatever the token spelled.
	issuer, subject     string
	email, name, locale string
	// idToken is the raw ID token, kept for signing out at the provider
	// (id_token_hint); "" for GitHub. A secret: never logged.
	idToken string
}

// newProvider builds the provider cfg describes. cfg is taken as it is:
// the defaults of what a description leaves out are config's
// (config.Provider.WithDefaults), so a missing name or scope is not filled
// in here.
func newProvider(cfg ProviderConfig, callbackPath, redirectURL string, client *http.Client, tracer trace.Tracer) (*provider, error) {
	if cfg.ClientID == "" {
		return nil, fmt.Errorf("login: provider %s: client id is required", cfg.ID)
	}
	switch cfg.Type {
	case TypeOIDC:
		if cfg.Issuer == "" {
			return nil, fmt.Errorf("login: provider %s: issuer is required", cfg.ID)
		}
		return &provider{cfg: cfg, flow: newOIDCFlow(cfg, redirectURL, client, tracer), callbackPath: callbackPath}, nil
	case TypeGitHub:
		g, err := newGitHubFlow(cfg, redirectURL, client, tracer)
		if err != nil {
			return nil, err
		}
		return &provider{cfg: cfg, flow: g, callbackPath: callbackPath}, nil
	default:
		return nil, fmt.Errorf("login: provider %s: unknown type %q", cfg.ID, cfg.Type)
	}
}

// issuer is the issuer of the provider's identities: the OIDC issuer, or
// GitHub's API URL.
func (p *provider) issuer() string {
	if p.cfg.Type == TypeGitHub {
		return p.cfg.GitHubAPIURL
	}
	return p.cfg.Issuer
}

// checkCallbackPath refuses an answer that arrived at another callback
// than p's: with several providers, an answer from one provider for an
// attempt that went to another (mix-up), whether or not it carries iss.
func (p *provider) checkCallbackPath(path string) *failure {
	if path == p.callbackPath {
		return nil
	}
	return failed(reasonCallbackMismatch, fmt.Sprintf("answer arrived at %s, the attempt went to provider %s (callback %s)",
		truncate(path, 100), p.cfg.ID, p.callbackPath))
}

// discovered is what the gateway knows about an OIDC provider once its
// discovery document loaded.
type discovered struct {
	provider *oidc.Provider
	oauth2   *oauth2.Config
	verifier *oidc.IDTokenVerifier
	// endSession is the RP-initiated logout endpoint, or "".
	endSession string
	// issParameter is true when the provider promises RFC 9207's iss
	// parameter on every authorization response.
	issParameter bool
}

// oidcFlow signs people in with an OpenID Connect provider. It loads the
// discovery document on first use and keeps it. Until it loads, each use
// retries; callers that arrive while an attempt is running share its result
// (singleflight) instead of queueing their own.
type oidcFlow struct {
	issuer       string
	clientID     string
	clientSecret string
	// tokenAuth is config.TokenAuthAuto, TokenAuthBasic or TokenAuthPost.
	tokenAuth   string
	scopes      []string
	redirectURL string
	displayName string
	client      *http.Client
	tracer      trace.Tracer

	d         atomic.Pointer[discovered]
	discovery singleflight.Group
}

// abandonedError is a discovery that failed because the caller running it
// went away, which says nothing about the provider: the callers that shared
// it and are still waiting try again.
type abandonedError struct{ err error }

func (e *abandonedError) Error() string { return e.err.Error() }
func (e *abandonedError) Unwrap() error { return e.err }

var _ flow = (*oidcFlow)(nil)

func newOIDCFlow(cfg ProviderConfig, redirectURL string, client *http.Client, tracer trace.Tracer) *oidcFlow {
	return &oidcFlow{
		issuer:       cfg.Issuer,
		clientID:     cfg.ClientID,
		clientSecret: cfg.ClientSecret,
		tokenAuth:    cfg.TokenAuthMethod,
		scopes:       cfg.Scopes,
		redirectURL:  redirectURL,
		displayName:  cfg.Name,
		client:       client,
		tracer:       tracer,
	}
}

// ctx returns ctx carrying the client every provider call must use.
func (p *oidcFlow) ctx(ctx context.Context) context.Context {
	return oidc.ClientContext(ctx, p.client)
}

func (p *oidcFlow) ready(ctx context.Context) error {
	_, err := p.get(ctx)
	return err
}

// get returns the discovered provider, running discovery if it has not
// succeeded yet. ctx bounds the wait and, for the caller that runs the
// attempt, the discovery request; when that caller goes away, the others
// waiting on it run their own attempt. A failed discovery is not kept: the
// next call tries again.
func (p *oidcFlow) get(ctx context.Context) (*discovered, error) {
	for {
		if d := p.d.Load(); d != nil {
			return d, nil
		}
		ch := p.discovery.DoChan(p.issuer, func() (any, error) {
			d, err := p.discover(ctx)
			switch {
			case err != nil && ctx.Err() != nil:
				return nil, &abandonedError{err}
			case err != nil:
				return nil, err
			}
			p.d.Store(d)
			return d, nil
		})
		select {
		case res := <-ch:
			var abandoned *abandonedError
			if errors.As(res.Err, &abandoned) && ctx.Err() == nil {
				continue // the caller that ran it gave up; try again ourselves
			}
			if res.Err != nil {
				return nil, res.Err
			}
			return res.Val.(*discovered), nil
		case <-ctx.Done():
			return nil, fmt.Errorf("discover %s: %w", p.issuer, ctx.Err())
		}
	}
}

func (p *oidcFlow) discover(ctx context.Context) (d *discovered, err error) {
	ctx, span := p.tracer.Start(ctx, "oidc.discovery")
	defer func() { endSpan(span, err != nil, "discovery failed") }()
	// The provider keeps the client from this context for its key set, so
	// fetching signing keys later uses the same timeout. The key set
	// fetches the JWKS again when a token names a key it does not know,
	// which is how key rotation reaches us.
	op, err := oidc.NewProvider(p.ctx(ctx), p.issuer)
	if err != nil {
		return nil, fmt.Errorf("discover %s: %s", p.issuer, truncate(err.Error(), 300))
	}
	var meta struct {
		EndSession   string   `json:"end_session_endpoint"`
		IssParameter bool     `json:"authorization_response_iss_parameter_supported"`
		AuthMethods  []string `json:"token_endpoint_auth_methods_supported"`
	}
	if err := op.Claims(&meta); err != nil {
		return nil, fmt.Errorf("discover %s: %w", p.issuer, err)
	}
	if u, err := url.Parse(meta.EndSession); err != nil || (u.Scheme != "https" && u.Scheme != "http") {
		meta.EndSession = ""
	}
	endpoint := op.Endpoint()
	endpoint.AuthStyle = authStyle(p.tokenAuth, meta.AuthMethods, p.clientSecret != "")
	return &discovered{
		provider: op,
		oauth2: &oauth2.Config{
			ClientID:     p.clientID,
			ClientSecret: p.clientSecret,
			Endpoint:     endpoint,
			RedirectURL:  p.redirectURL,
			Scopes:       p.scopes,
		},
		verifier:     op.Verifier(&oidc.Config{ClientID: p.clientID}),
		endSession:   meta.EndSession,
		issParameter: meta.IssParameter,
	}, nil
}

// authStyle picks how to send the client credentials to the token
// endpoint. It never leaves oauth2 to guess: its guess retries a failed
// exchange with the other style, which sends the single-use code twice and
// doubles the wait on a provider that does not answer. Public clients send
// their id as a form field. Confidential ones use the configured method;
// with "auto" (or none), client_secret_basic, which is what a client is
// registered with unless said otherwise (RFC 7591) and OIDC Discovery's
// default when the provider lists nothing, and client_secret_post only when
// the provider lists it and not basic.
func authStyle(configured string, supported []string, confidential bool) oauth2.AuthStyle {
	switch {
	case !confidential:
		return oauth2.AuthStyleInParams
	case configured == config.TokenAuthPost:
		return oauth2.AuthStyleInParams
	case configured == config.TokenAuthBasic:
		return oauth2.AuthStyleInHeader
	case slices.Contains(supported, config.TokenAuthPost) && !slices.Contains(supported, config.TokenAuthBasic):
		return oauth2.AuthStyleInParams
	}
	return oauth2.AuthStyleInHeader
}

func (p *oidcFlow) authURL(ctx context.Context, state, nonce, verifier string) (string, error) {
	d, err := p.get(ctx)
	if err != nil {
		return "", err
	}
	return d.oauth2.AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier)), nil
}

func (p *oidcFlow) checkIssuer(ctx context.Context, iss string) *failure {
	if iss != "" {
		if iss != p.issuer {
			return failed(reasonIssuerMismatch, fmt.Sprintf("got iss %q, want %q", truncate(iss, 200), p.issuer))
		}
		return nil
	}
	d, err := p.get(ctx)
	if err != nil {
		return failed(reasonProviderUnavailable, err.Error())
	}
	if d.issParameter {
		return failed(reasonIssuerMismatch, "no iss parameter, although the provider's discovery document promises one")
	}
	return nil
}

func (p *oidcFlow) logoutURL(ctx context.Context, postLogout, idTokenHint string) string {
	d, err := p.get(ctx)
	if err != nil || d.endSession == "" {
		return ""
	}
	u, err := url.Parse(d.endSession)
	if err != nil {
		return ""
	}
	// OIDC RP-Initiated Logout 1.0: id_token_hint says which sign-in ends,
	// and some providers (Ory Hydra) honour post_logout_redirect_uri only
	// with it; client_id alone is what others accept when it was not kept.
	q := u.Query()
	q.Set("client_id", p.clientID)
	if idTokenHint != "" {
		q.Set("id_token_hint", idTokenHint)
	}
	q.Set("post_logout_redirect_uri", postLogout)
	u.RawQuery = q.Encode()
	return u.String()
}

// identify redeems the code with the PKCE verifier, verifies the ID token
// (signature, iss, aud, expiry, then the nonce, which go-oidc leaves to
// us) and finds a verified email in the ID token or else at UserInfo.
func (p *oidcFlow) identify(ctx context.Context, code string, a attempt) (identity, *failure) {
	d, err := p.get(ctx)
	if err != nil {
		return identity{}, failed(reasonProviderUnavailable, err.Error())
	}
	secrets := []string{code, a.Verifier, p.clientSecret}
	ctx = p.ctx(ctx)
	ectx, span := p.tracer.Start(ctx, "oauth2.exchange", trace.WithSpanKind(trace.SpanKindClient))
	tok, err := d.oauth2.Exchange(ectx, code, oauth2.VerifierOption(a.Verifier))
	endSpan(span, err != nil, resultExchangeFailed)
	if err != nil {
		return identity{}, failed(reasonExchangeFailed, redact(err, secrets...))
	}
	rawIDToken, _ := tok.Extra("id_token").(string)
	secrets = append(secrets, tok.AccessToken, tok.RefreshToken, rawIDToken)

	if rawIDToken == "" {
		return identity{}, failed(reasonTokenInvalid, "token response has no id_token")
	}
	idt, c, f := p.verifyIDToken(ctx, d, rawIDToken, a.Nonce, secrets)
	if f != nil {
		return identity{}, f
	}
	// The configured issuer, not the token's iss, keys the person: go-oidc
	// accepts Google's "accounts.google.com" for https://accounts.google.com,
	// and the same person must not become two.
	id := identity{issuer: p.issuer, subject: idt.Subject, email: c.Email, name: c.Name, locale: c.Locale, idToken: rawIDToken}
	verified := c.EmailVerified

	if (c.Email == "" || verified == nil) && d.provider.UserInfoEndpoint() != "" {
		uc, f := p.userInfo(ctx, d, tok, idt.Subject, secrets)
		if f != nil {
			return identity{}, f
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
		return identity{}, failed(reasonEmailMissing, "")
	}
	if verified == nil || !bool(*verified) {
		return identity{}, failed(reasonEmailUnverified, "", id.email, p.displayName)
	}
	return id, nil
}

// userInfo asks the provider's UserInfo endpoint about the person the
// access token in tok was issued for, and checks that the answer is about
// subject, the ID token's. secrets are redacted from the error text of a
// failure.
func (p *oidcFlow) userInfo(ctx context.Context, d *discovered, tok *oauth2.Token, subject string, secrets []string) (claims, *failure) {
	ctx, span := p.tracer.Start(ctx, "oidc.userinfo", trace.WithSpanKind(trace.SpanKindClient))
	ui, err := d.provider.UserInfo(ctx, oauth2.StaticTokenSource(tok))
	endSpan(span, err != nil, "userinfo request failed")
	if err != nil {
		return claims{}, failed(reasonUserInfoFailed, redact(err, secrets...))
	}
	if ui.Subject != subject {
		return claims{}, failed(reasonTokenInvalid, "userinfo sub differs from the id token's sub")
	}
	var uc claims
	if err := ui.Claims(&uc); err != nil {
		return claims{}, failed(reasonTokenInvalid, "userinfo claims: "+redact(err, secrets...))
	}
	return uc, nil
}

// verifyIDToken checks the ID token of a sign-in and decodes the claims the
// gateway uses. go-oidc's verifier checks the signature, iss, aud and
// expiry; the nonce (against the attempt's) and azp (authorizedParty) are
// ours to check. secrets are redacted from the error text of a failure.
func (p *oidcFlow) verifyIDToken(ctx context.Context, d *discovered, rawIDToken, nonce string, secrets []string) (*oidc.IDToken, claims, *failure) {
	ctx, span := p.tracer.Start(ctx, "oidc.verify")
	idt, err := d.verifier.Verify(ctx, rawIDToken)
	nonceOK := err == nil && subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(nonce)) == 1
	switch {
	case err != nil:
		endSpan(span, true, resultTokenInvalid)
	case !nonceOK:
		endSpan(span, true, resultNonceMismatch)
	default:
		endSpan(span, false, "")
	}
	if err != nil {
		return nil, claims{}, failed(reasonTokenInvalid, redact(err, secrets...))
	}
	if !nonceOK {
		return nil, claims{}, failed(reasonNonceMismatch, "")
	}

	var c claims
	if err := idt.Claims(&c); err != nil {
		return nil, claims{}, failed(reasonTokenInvalid, "id token claims: "+redact(err, secrets...))
	}
	if f := authorizedParty(idt.Audience, c.AuthorizedParty, p.clientID); f != nil {
		return nil, claims{}, f
	}
	return idt, c, nil
}

// authorizedParty applies OIDC Core 3.1.3.7 to an ID token's aud and azp,
// which go-oidc leaves to the caller (it checks only that aud holds our
// client id): a token for several audiences must name us in azp, and an
// azp must name us whatever the audience.
func authorizedParty(aud []string, azp, clientID string) *failure {
	switch {
	case azp != "" && azp != clientID:
		return failed(reasonTokenInvalid, fmt.Sprintf("azp %q is not our client id", truncate(azp, 100)))
	case len(aud) > 1 && azp == "":
		return failed(reasonTokenInvalid, fmt.Sprintf("id token for %d audiences has no azp", len(aud)))
	}
	return nil
}

// endSpan ends span, marked failed with why when failed. why goes to the
// trace collector: a fixed phrase or result label, never error text, which
// can hold what the provider echoed back.
func endSpan(span trace.Span, failed bool, why string) {
	if failed {
		span.SetStatus(codes.Error, why)
	}
	span.End()
}
