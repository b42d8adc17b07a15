package smtpsend

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/wneessen/go-mail/smtp"
)

// AuthMode selects the SMTP AUTH mechanism.
type AuthMode string

const (
	// AuthAuto picks from what the server offers: PLAIN, then LOGIN, then
	// CRAM-MD5 on an encrypted connection (or to localhost); only CRAM-MD5
	// on an unencrypted one, which never carries the password itself.
	AuthAuto AuthMode = "auto"
	// AuthPlain is RFC 4616 PLAIN.
	AuthPlain AuthMode = "plain"
	// AuthLogin is the LOGIN mechanism (Microsoft, older relays).
	AuthLogin AuthMode = "login"
	// AuthCRAMMD5 is RFC 2195 CRAM-MD5.
	AuthCRAMMD5 AuthMode = "cram-md5"
	// AuthXOAUTH2 sends an OAuth2 bearer token (Google, Microsoft 365), read
	// from Config.OAuth2TokenFile on every connect.
	AuthXOAUTH2 AuthMode = "xoauth2"
)

// mechanism is the SASL name of a mode.
func (m AuthMode) mechanism() string {
	return strings.ToUpper(string(m))
}

// authenticator returns the smtp.Auth to use on sc, or nil when no AUTH is
// configured. A nil error with a nil Auth means "do not authenticate".
// Each connection gets a new Auth: LOGIN keeps state.
func (s *Sender) authenticator(sc *smtp.Client, encrypted bool) (smtp.Auth, error) {
	if s.cfg.Username == "" {
		return nil, nil
	}
	ok, offer := sc.Extension("AUTH")
	if !ok {
		return nil, errNoAuth
	}
	offered := strings.Fields(strings.ToUpper(offer))
	// Credentials travel only encrypted, or to this very host.
	private := encrypted || isLocalhost(s.cfg.Host)

	mode := s.cfg.Auth
	if mode == "" || mode == AuthAuto {
		prefs := []AuthMode{AuthCRAMMD5}
		if private {
			prefs = []AuthMode{AuthPlain, AuthLogin, AuthCRAMMD5}
		}
		mode = ""
		for _, p := range prefs {
			if slices.Contains(offered, p.mechanism()) {
				mode = p
				break
			}
		}
		if mode == "" {
			if !private && (slices.Contains(offered, "PLAIN") || slices.Contains(offered, "LOGIN")) {
				return nil, errClearTextPassword
			}
			return nil, fmt.Errorf("%w: no usable mechanism among %q", errMechNotOffered, offer)
		}
	} else if !slices.Contains(offered, mode.mechanism()) {
		return nil, fmt.Errorf("%w: %s not among %q", errMechNotOffered, mode.mechanism(), offer)
	}

	switch mode {
	case AuthPlain:
		if !private {
			return nil, errClearTextPassword
		}
		return smtp.PlainAuth("", s.cfg.Username, s.cfg.Password, s.cfg.Host, false), nil
	case AuthLogin:
		if !private {
			return nil, errClearTextPassword
		}
		return smtp.LoginAuth(s.cfg.Username, s.cfg.Password, s.cfg.Host, false), nil
	case AuthCRAMMD5:
		return smtp.CRAMMD5Auth(s.cfg.Username, s.cfg.Password), nil
	case AuthXOAUTH2:
		if !private {
			return nil, errClearTextPassword
		}
		token, err := readToken(s.cfg.OAuth2TokenFile)
		if err != nil {
			return nil, err
		}
		return smtp.XOAuth2Auth(s.cfg.Username, token), nil
	default:
		return nil, fmt.Errorf("%w: unknown mode %q", errMechNotOffered, mode)
	}
}

// readToken reads a bearer token from path. It is read on every connect so
// that a sidecar can refresh the file; the token never appears in errors.
func readToken(path string) (string, error) {
	if path == "" {
		return "", fmt.Errorf("%w: no file configured", errTokenFile)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%w: %w", errTokenFile, err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("%w: %s is empty", errTokenFile, path)
	}
	return token, nil
}

func isLocalhost(host string) bool {
	return host == "localhost" || host == "127.0.0.1" || host == "::1"
}
