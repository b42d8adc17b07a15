package login

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// discovered is what the gateway knows about the provider once its
// discovery document loaded.
type discovered struct {
	provider *oidc.Provider
	oauth2   *oauth2.Config
	verifier *oidc.IDTokenVerifier
}

// provider loads the identity provider's discovery document on first use
// and keeps it. Until it loads, each use retries; callers that arrive while
// an attempt is running share its result instead of queueing their own.
type provider struct {
	issuer       string
	clientID     string
	clientSecret string
	scopes       []string
	redirectURL  string
	client       *http.Client

	d        atomic.Pointer[discovered]
	mu       sync.Mutex
	inflight *attemptResult
}

// attemptResult is one discovery attempt, shared by everyone waiting on it.
type attemptResult struct {
	done chan struct{}
	d    *discovered
	err  error
	// abandoned is set when the attempt failed because its caller went
	// away, which says nothing about the provider.
	abandoned bool
}

func newProvider(cfg Config, client *http.Client) *provider {
	return &provider{
		issuer:       cfg.Issuer,
		clientID:     cfg.ClientID,
		clientSecret: cfg.ClientSecret,
		scopes:       cfg.Scopes,
		redirectURL:  cfg.PublicURL.String() + "/auth/callback",
		client:       client,
	}
}

// ctx returns ctx carrying the client every provider call must use.
func (p *provider) ctx(ctx context.Context) context.Context {
	return oidc.ClientContext(ctx, p.client)
}

// get returns the discovered provider, running discovery if it has not
// succeeded yet. ctx bounds the wait and, for the caller that runs the
// attempt, the discovery request.
func (p *provider) get(ctx context.Context) (*discovered, error) {
	for {
		if d := p.d.Load(); d != nil {
			return d, nil
		}
		p.mu.Lock()
		a := p.inflight
		leader := a == nil
		if leader {
			a = &attemptResult{done: make(chan struct{})}
			p.inflight = a
		}
		p.mu.Unlock()

		if leader {
			a.d, a.err = p.discover(ctx)
			a.abandoned = a.err != nil && ctx.Err() != nil
			if a.d != nil {
				p.d.Store(a.d)
			}
			p.mu.Lock()
			p.inflight = nil
			p.mu.Unlock()
			close(a.done)
			return a.d, a.err
		}
		select {
		case <-a.done:
			if a.abandoned && ctx.Err() == nil {
				continue // the other caller gave up; try again ourselves
			}
			return a.d, a.err
		case <-ctx.Done():
			return nil, fmt.Errorf("discover %s: %w", p.issuer, ctx.Err())
		}
	}
}

func (p *provider) discover(ctx context.Context) (*discovered, error) {
	// The provider keeps the client from this context for its key set, so
	// fetching signing keys later uses the same timeout.
	op, err := oidc.NewProvider(p.ctx(ctx), p.issuer)
	if err != nil {
		return nil, fmt.Errorf("discover %s: %s", p.issuer, truncate(err.Error(), 300))
	}
	return &discovered{
		provider: op,
		oauth2: &oauth2.Config{
			ClientID:     p.clientID,
			ClientSecret: p.clientSecret,
			Endpoint:     op.Endpoint(),
			RedirectURL:  p.redirectURL,
			Scopes:       p.scopes,
		},
		verifier: op.Verifier(&oidc.Config{ClientID: p.clientID}),
	}, nil
}
