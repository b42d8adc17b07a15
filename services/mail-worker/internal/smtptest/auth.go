package smtptest

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

func (s *session) AuthMechanisms() []string {
	if s.srv.opts.Username == "" {
		return nil
	}
	if len(s.srv.opts.AuthMechanisms) == 0 {
		return []string{sasl.Plain}
	}
	return s.srv.opts.AuthMechanisms
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	if !slices.Contains(s.AuthMechanisms(), mech) {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	opts := s.srv.opts
	ok := func() error {
		s.authed = mech
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(_, username, password string) error {
			if username != opts.Username || password != opts.Password {
				return smtp.ErrAuthFailed
			}
			return ok()
		}), nil
	case sasl.Login:
		return &loginServer{check: func(username, password string) error {
			if username != opts.Username || password != opts.Password {
				return smtp.ErrAuthFailed
			}
			return ok()
		}}, nil
	case "CRAM-MD5":
		return &cramServer{
			challenge: fmt.Sprintf("<%d.smtptest@localhost>", time.Now().UnixNano()),
			check: func(username, digest string, challenge string) error {
				mac := hmac.New(md5.New, []byte(opts.Password))
				mac.Write([]byte(challenge))
				want := hex.EncodeToString(mac.Sum(nil))
				if username != opts.Username || subtle.ConstantTimeCompare([]byte(digest), []byte(want)) != 1 {
					return smtp.ErrAuthFailed
				}
				return ok()
			},
		}, nil
	case "XOAUTH2":
		return &xoauth2Server{check: func(username, token string) error {
			if username != opts.Username || opts.OAuth2Token == "" || token != opts.OAuth2Token {
				return smtp.ErrAuthFailed
			}
			return ok()
		}}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// loginServer is the server side of the LOGIN mechanism.
type loginServer struct {
	step     int
	username string
	check    func(username, password string) error
}

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step++
		if len(response) == 0 {
			return []byte("Username:"), false, nil
		}
		l.username = string(response)
		l.step++
		return []byte("Password:"), false, nil
	case 1:
		l.username = string(response)
		l.step++
		return []byte("Password:"), false, nil
	default:
		return nil, true, l.check(l.username, string(response))
	}
}

// cramServer is the server side of CRAM-MD5 (RFC 2195).
type cramServer struct {
	challenge string
	sent      bool
	check     func(username, digest, challenge string) error
}

func (c *cramServer) Next(response []byte) ([]byte, bool, error) {
	if !c.sent {
		c.sent = true
		return []byte(c.challenge), false, nil
	}
	username, digest, found := strings.Cut(string(response), " ")
	if !found {
		return nil, true, errors.New("malformed CRAM-MD5 response")
	}
	return nil, true, c.check(username, digest, c.challenge)
}

// xoauth2Server is the server side of XOAUTH2: one initial response
// "user=U\x01auth=Bearer T\x01\x01".
type xoauth2Server struct {
	check func(username, token string) error
}

func (x *xoauth2Server) Next(response []byte) ([]byte, bool, error) {
	if len(response) == 0 {
		return []byte{}, false, nil
	}
	var username, token string
	for _, field := range strings.Split(string(response), "\x01") {
		if v, ok := strings.CutPrefix(field, "user="); ok {
			username = v
		}
		if v, ok := strings.CutPrefix(field, "auth=Bearer "); ok {
			token = v
		}
	}
	return nil, true, x.check(username, token)
}
