package login_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"
	"time"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/login"
)

// BenchmarkVerifyIDToken measures what an OpenID Connect sign-in costs the
// gateway to turn the ID token of the token response into an identity, once
// the code is redeemed: go-oidc's verifier as discovery configures it
// (signature, iss, aud, exp), then our nonce check, claims decoding and azp
// check. No HTTP in the loop: the provider's keys are fetched once before
// timing and cached, as after the first sign-in. ES256 and RS256 (2048-bit)
// are the signatures providers use.
func BenchmarkVerifyIDToken(b *testing.B) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	for _, k := range []signingKey{{kid: "ec-1", key: ec}, {kid: "rsa-1", key: testKeys(b)[0]}} {
		b.Run(string(k.alg()), func(b *testing.B) {
			h := newHostileIdP(b)
			h.set(func(h *hostileIdP) {
				h.meta = map[string]any{"id_token_signing_alg_values_supported": []string{string(k.alg())}}
			})
			h.rotate(k)
			verify, err := login.IDTokenVerifier(b.Context(), h.provider("bench"), h.srv.Client())
			if err != nil {
				b.Fatal(err)
			}
			nonce := randomString(b)
			now := time.Now()
			idToken := h.sign(map[string]any{
				"iss": h.issuer(), "sub": "108123456789012345678", "aud": h.clientID, "azp": h.clientID,
				"exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "auth_time": now.Unix(), "nonce": nonce,
				"at_hash": "HK6E_P6Dh8Y93mRNtsDB1Q", "email": "ann.example@example.com", "email_verified": true,
				"name": "Ann Example", "given_name": "Ann", "family_name": "Example", "locale": "en-GB",
			}, k)
			if sub, email, err := verify(idToken, nonce); err != nil || sub != "108123456789012345678" || email != "ann.example@example.com" {
				b.Fatalf("verify = %q, %q, %v; want the token's subject and email", sub, email, err)
			}
			if _, _, err := verify(idToken, randomString(b)); err == nil {
				b.Fatal("verify accepted the token for another sign-in's nonce")
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := verify(idToken, nonce); err != nil {
					b.Fatal(err)
				}
			}
			if n := h.jwksFetches.Load(); n != 1 {
				b.Errorf("the provider's keys were fetched %d times, want once (then cached)", n)
			}
		})
	}
}
