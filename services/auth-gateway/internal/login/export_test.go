package login

import (
	"context"
	"fmt"
	"net/http"

	"go.opentelemetry.io/otel/trace/noop"
)

// IDTokenVerifier discovers the OpenID Connect provider cfg through client
// and returns what identify does with the ID token once the code is
// redeemed (verifyIDToken), with tracing off as by default; a success
// reports the subject and email the token vouches for. It is for tests and
// benchmarks in login_test, where the test providers live; the provider's
// keys are fetched at the first call.
func IDTokenVerifier(ctx context.Context, cfg ProviderConfig, client *http.Client) (func(rawIDToken, nonce string) (subject, email string, err error), error) {
	p, err := newProvider(cfg, "/auth/callback", "http://127.0.0.1/auth/callback", client, noop.NewTracerProvider().Tracer(tracerName))
	if err != nil {
		return nil, err
	}
	f, ok := p.flow.(*oidcFlow)
	if !ok {
		return nil, fmt.Errorf("provider %s is not OpenID Connect", cfg.ID)
	}
	d, err := f.get(ctx)
	if err != nil {
		return nil, err
	}
	ctx = f.ctx(ctx)
	return func(rawIDToken, nonce string) (string, string, error) {
		idt, c, fail := f.verifyIDToken(ctx, d, rawIDToken, nonce, nil)
		if fail != nil {
			return "", "", fmt.Errorf("%s: %s: %s", fail.label(), fail.kind().logMsg, fail.why)
		}
		return idt.Subject, c.Email, nil
	}, nil
}

// Results are the values of logins_total's result label.
var Results = results
