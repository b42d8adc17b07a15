package login

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/oauth2"
)

// maxGitHubBody bounds what the gateway reads from one GitHub API answer.
const maxGitHubBody = 1 << 20

// githubFlow signs people in with GitHub or GitHub Enterprise, which speak
// OAuth2 but not OpenID Connect: there is no ID token and no nonce, so the
// person is who GET /user says the access token belongs to, and the email
// is the primary address GET /user/emails marks verified. PKCE and state
// apply as for OIDC.
type githubFlow struct {
	api          string
	clientSecret string
	oauth2       *oauth2.Config
	client       *http.Client
	tracer       trace.Tracer
}

var _ flow = (*githubFlow)(nil)

func newGitHubFlow(cfg ProviderConfig, redirectURL string, client *http.Client, tracer trace.Tracer) (*githubFlow, error) {
	if cfg.GitHubAPIURL == "" || cfg.GitHubAuthURL == "" || cfg.GitHubTokenURL == "" {
		return nil, fmt.Errorf("login: provider %s: GitHub API, authorize and token URLs are required", cfg.ID)
	}
	return &githubFlow{
		api:          cfg.GitHubAPIURL,
		clientSecret: cfg.ClientSecret,
		oauth2: &oauth2.Config{
			ClientID:     cfg.ClientID,
			ClientSecret: cfg.ClientSecret,
			Endpoint: oauth2.Endpoint{
				AuthURL:  cfg.GitHubAuthURL,
				TokenURL: cfg.GitHubTokenURL,
				// GitHub documents the credentials as form parameters; a
				// guess would cost a second request with a spent code.
				AuthStyle: oauth2.AuthStyleInParams,
			},
			RedirectURL: redirectURL,
			Scopes:      cfg.Scopes,
		},
		client: client,
		tracer: tracer,
	}, nil
}

func (g *githubFlow) ready(context.Context) error { return nil }

func (g *githubFlow) authURL(_ context.Context, state, _, verifier string) (string, error) {
	return g.oauth2.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier)), nil
}

// checkIssuer refuses any iss: GitHub never sends one, so an answer that
// has one came from another server (mix-up).
func (g *githubFlow) checkIssuer(_ context.Context, iss string) *failure {
	if iss != "" && iss != g.api {
		return failed(reasonIssuerMismatch, fmt.Sprintf("got iss %q on a GitHub callback", truncate(iss, 200)))
	}
	return nil
}

func (g *githubFlow) logoutURL(context.Context, string, string) string { return "" }

func (g *githubFlow) identify(ctx context.Context, code string, a attempt) (identity, *failure) {
	secrets := []string{code, a.Verifier, g.clientSecret}
	ectx, span := g.tracer.Start(ctx, "oauth2.exchange", trace.WithSpanKind(trace.SpanKindClient))
	tok, err := g.oauth2.Exchange(context.WithValue(ectx, oauth2.HTTPClient, g.client), code, oauth2.VerifierOption(a.Verifier))
	endSpan(span, err != nil, resultExchangeFailed)
	if err != nil {
		return identity{}, failed(reasonExchangeFailed, redact(err, secrets...))
	}
	secrets = append(secrets, tok.AccessToken, tok.RefreshToken)

	var user struct {
		ID    int64  `json:"id"`
		Login string `json:"login"`
		Name  string `json:"name"`
	}
	if _, err := g.get(ctx, tok.AccessToken, "/user", &user); err != nil {
		return identity{}, failed(reasonGitHubAPIFailed, redact(err, secrets...))
	}
	if user.ID <= 0 {
		return identity{}, failed(reasonGitHubAPIFailed, "GET /user: no numeric id")
	}

	var emails []struct {
		Email    string `json:"email"`
		Primary  bool   `json:"primary"`
		Verified bool   `json:"verified"`
	}
	status, err := g.get(ctx, tok.AccessToken, "/user/emails?per_page=100", &emails)
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusNotFound:
		// The token lacks the user:email scope (the person unticked it, or
		// a GitHub App without the email permission).
		return identity{}, failed(reasonGitHubEmailsHidden, redact(err, secrets...))
	case err != nil:
		return identity{}, failed(reasonGitHubAPIFailed, redact(err, secrets...))
	}
	id := identity{issuer: g.api, subject: strconv.FormatInt(user.ID, 10), name: user.Name}
	if id.name == "" {
		id.name = user.Login
	}
	for _, e := range emails {
		if !e.Primary {
			continue
		}
		if !e.Verified {
			return identity{}, failed(reasonGitHubEmailUnverified, "", e.Email)
		}
		id.email = e.Email
		return id, nil
	}
	return identity{}, failed(reasonGitHubNoPrimaryEmail, "")
}

// get fetches path from the GitHub API with the access token and decodes
// the JSON answer into v. It returns the HTTP status (0 when there was no
// answer); errors never contain the token.
func (g *githubFlow) get(ctx context.Context, token, path string, v any) (status int, err error) {
	route, _, _ := strings.Cut(path, "?")
	ctx, span := g.tracer.Start(ctx, "github GET "+route, trace.WithSpanKind(trace.SpanKindClient))
	defer func() {
		span.SetAttributes(attribute.Int("http.response.status_code", status))
		endSpan(span, err != nil, "GitHub API request failed")
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.api+path, nil)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", path, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/vnd.github+json")
	req.Header.Set("X-GitHub-Api-Version", "2022-11-28")
	resp, err := g.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, maxGitHubBody)
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, body)
		return resp.StatusCode, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(body).Decode(v); err != nil {
		return resp.StatusCode, fmt.Errorf("GET %s: %w", path, errors.Join(errors.New("bad JSON"), err))
	}
	return resp.StatusCode, nil
}
