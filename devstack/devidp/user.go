package devidp

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"

	"github.com/golang-jwt/jwt/v5"
	"github.com/oauth2-proxy/mockoidc"
)

// user is whoever signed in on the form. Unlike mockoidc's MockUser it
// always states email_verified, true or false, when the email scope was
// granted.
type user struct {
	subject  string
	email    string
	name     string
	locale   string // the locale claim; none when empty
	verified bool
}

var _ mockoidc.User = (*user)(nil)

// newUser makes the user for an email address. The subject is stable per
// address, case-insensitively, so signing in twice as the same address is the
// same person.
func newUser(email, name, locale string, verified bool) *user {
	sum := sha256.Sum256([]byte(strings.ToLower(email)))
	return &user{
		subject:  "dev-" + hex.EncodeToString(sum[:])[:16],
		email:    email,
		name:     name,
		locale:   locale,
		verified: verified,
	}
}

func (u *user) ID() string { return u.subject }

// profile holds the claims beyond sub, released by scope as OIDC Core §5.4
// says: email and email_verified with "email"; name, preferred_username and
// locale with "profile".
type profile struct {
	Email             string `json:"email,omitempty"`
	EmailVerified     *bool  `json:"email_verified,omitempty"`
	Name              string `json:"name,omitempty"`
	PreferredUsername string `json:"preferred_username,omitempty"`
	Locale            string `json:"locale,omitempty"`
}

func (u *user) profile(scopes []string) profile {
	var p profile
	if slices.Contains(scopes, "email") {
		verified := u.verified
		p.Email, p.EmailVerified = u.email, &verified
	}
	if slices.Contains(scopes, "profile") {
		p.Name, p.PreferredUsername, p.Locale = u.name, u.email, u.locale
	}
	return p
}

func (u *user) Userinfo(scopes []string) ([]byte, error) {
	return json.Marshal(struct {
		Subject string `json:"sub"`
		profile
	}{u.subject, u.profile(scopes)})
}

// idClaims are the ID token's claims: mockoidc's registered claims and nonce
// plus the profile.
type idClaims struct {
	*mockoidc.IDTokenClaims
	profile
}

func (u *user) Claims(scopes []string, base *mockoidc.IDTokenClaims) (jwt.Claims, error) {
	return &idClaims{IDTokenClaims: base, profile: u.profile(scopes)}, nil
}
