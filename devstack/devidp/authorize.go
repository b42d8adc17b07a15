package devidp

import (
	"errors"
	"fmt"
	"net/http"
	"net/mail"
	"net/url"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"
)

// Names of the sign-in form's own fields; everything else in the form is a
// request parameter carried through from the client.
const (
	fieldEmail         = "email"
	fieldName          = "name"
	fieldEmailVerified = "email_verified"
	fieldLocale        = "locale"
	fieldCancel        = "cancel"
)

// locales are what the sign-in form offers as the locale claim; none lets
// the browser's Accept-Language choose the language of the emails.
var locales = []string{"", "en", "ko", "ko-KR", "ja", "de", "fr"}

// Parameters of an authorization request that must appear at most once
// (RFC 6749 §3.1).
var singleParams = []string{
	"client_id", "redirect_uri", "response_type", "scope", "state", "nonce",
	"code_challenge", "code_challenge_method", "login_hint", "prompt",
}

const (
	maxFormBytes = 64 << 10
	maxEmailLen  = 254
	maxNameLen   = 200
)

// authRequest is a validated authorization request.
type authRequest struct {
	clientID            string
	redirectURI         string
	scope               string
	state               string
	nonce               string
	codeChallenge       string
	codeChallengeMethod string
	// params is every parameter the client sent, carried through the form.
	params url.Values
}

// parseAuthRequest validates an authorization request the way mockoidc's own
// authorize endpoint does, and more strictly: every failure is a reason to
// show the person, never a redirect to an unchecked redirect_uri.
func (s *Server) parseAuthRequest(form url.Values) (authRequest, error) {
	params := url.Values{}
	for k, v := range form {
		switch k {
		case fieldEmail, fieldName, fieldEmailVerified, fieldLocale, fieldCancel:
			continue
		}
		params[k] = v
	}
	for _, p := range singleParams {
		if len(params[p]) > 1 {
			return authRequest{}, fmt.Errorf("the parameter %s was given more than once", p)
		}
	}
	req := authRequest{
		clientID:            params.Get("client_id"),
		redirectURI:         params.Get("redirect_uri"),
		scope:               params.Get("scope"),
		state:               params.Get("state"),
		nonce:               params.Get("nonce"),
		codeChallenge:       params.Get("code_challenge"),
		codeChallengeMethod: params.Get("code_challenge_method"),
		params:              params,
	}
	if err := s.checkClient(req); err != nil {
		return authRequest{}, err
	}
	if rt := params.Get("response_type"); rt != "code" {
		return authRequest{}, fmt.Errorf("unsupported response_type %q: only \"code\" (authorization code flow) is supported", rt)
	}
	if !slices.Contains(strings.Fields(req.scope), "openid") {
		return authRequest{}, fmt.Errorf("scope %q does not include openid", req.scope)
	}
	if req.state == "" {
		return authRequest{}, errors.New("the request has no state; this provider requires one")
	}
	if req.codeChallenge == "" && req.codeChallengeMethod != "" {
		return authRequest{}, errors.New("code_challenge_method was given without code_challenge")
	}
	if req.codeChallenge != "" {
		if req.codeChallengeMethod == "" {
			// RFC 7636 §4.3: the method defaults to plain. mockoidc would
			// otherwise skip the PKCE check at the token endpoint.
			req.codeChallengeMethod = "plain"
		}
		if req.codeChallengeMethod != "S256" && req.codeChallengeMethod != "plain" {
			return authRequest{}, fmt.Errorf("unsupported code_challenge_method %q: use S256 or plain", req.codeChallengeMethod)
		}
		if !validChallenge(req.codeChallenge) {
			return authRequest{}, errors.New("code_challenge must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~ (RFC 7636)")
		}
	}
	return req, nil
}

// checkClient checks the client and where it wants the person sent back.
func (s *Server) checkClient(req authRequest) error {
	switch {
	case req.clientID == "":
		return errors.New("the request has no client_id")
	case req.clientID != s.cfg.ClientID:
		return fmt.Errorf("unknown client_id %q: this provider only knows the client %q", req.clientID, s.cfg.ClientID)
	case req.redirectURI == "":
		return errors.New("the request has no redirect_uri")
	}
	if err := checkRedirectURI(req.redirectURI); err != nil {
		return fmt.Errorf("redirect_uri %q: %w", req.redirectURI, err)
	}
	if len(s.cfg.RedirectURIs) > 0 && !slices.Contains(s.cfg.RedirectURIs, req.redirectURI) {
		return fmt.Errorf("redirect_uri %q is not registered for client %q; registered: %s",
			req.redirectURI, s.cfg.ClientID, strings.Join(s.cfg.RedirectURIs, ", "))
	}
	return nil
}

// checkRedirectURI accepts absolute http and https URIs without a fragment.
func checkRedirectURI(uri string) error {
	u, err := url.Parse(uri)
	if err != nil {
		return errors.New("is not a valid URI")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return errors.New("must be an absolute http or https URI")
	}
	if u.Host == "" {
		return errors.New("has no host")
	}
	if u.Fragment != "" || strings.Contains(uri, "#") {
		return errors.New("must not contain a fragment")
	}
	return nil
}

func validChallenge(c string) bool {
	if len(c) < 43 || len(c) > 128 {
		return false
	}
	for _, r := range c {
		switch {
		case r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.', r == '_', r == '~':
		default:
			return false
		}
	}
	return true
}

// signInPage serves GET /oidc/authorize: the form where a developer types
// who they are.
func (s *Server) signInPage(w http.ResponseWriter, r *http.Request) {
	req, err := s.parseAuthRequest(r.URL.Query())
	if err != nil {
		s.badRequest(w, err)
		return
	}
	s.renderForm(w, http.StatusOK, req, formValues{
		Email:    req.params.Get("login_hint"),
		Verified: true,
	})
}

// signIn serves POST /oidc/authorize: it signs the person in as whoever
// they typed and sends them back to the client with a code.
func (s *Server) signIn(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		s.badRequest(w, fmt.Errorf("unreadable form: %w", err))
		return
	}
	req, err := s.parseAuthRequest(r.PostForm)
	if err != nil {
		s.badRequest(w, err)
		return
	}
	if r.PostForm.Has(fieldCancel) {
		s.redirect(w, r, req, url.Values{
			"error":             {"access_denied"},
			"error_description": {"The user cancelled the sign-in."},
		})
		return
	}

	values := formValues{
		Email:    strings.TrimSpace(r.PostForm.Get(fieldEmail)),
		Name:     strings.TrimSpace(r.PostForm.Get(fieldName)),
		Verified: r.PostForm.Get(fieldEmailVerified) != "",
		Locale:   r.PostForm.Get(fieldLocale),
	}
	if !slices.Contains(locales, values.Locale) {
		values.Error, values.Locale = "Please choose a language from the list.", ""
		s.renderForm(w, http.StatusBadRequest, req, values)
		return
	}
	if msg := checkPerson(values.Email, values.Name); msg != "" {
		values.Error = msg
		s.renderForm(w, http.StatusBadRequest, req, values)
		return
	}

	u := newUser(values.Email, values.Name, values.Locale, values.Verified)
	s.mu.Lock()
	session, err := s.oidc.SessionStore.NewSession(req.scope, req.nonce, u, req.codeChallenge, req.codeChallengeMethod)
	s.mu.Unlock()
	if err != nil {
		s.logger.Error("dev sign-in: create session", "error", err)
		http.Error(w, "could not create a session", http.StatusInternalServerError)
		return
	}
	s.logger.Info("dev sign-in", "subject", u.subject, "email_verified", u.verified)
	s.redirect(w, r, req, url.Values{"code": {session.SessionID}})
}

// checkPerson returns what is wrong with the typed email and name, or "".
func checkPerson(email, name string) string {
	switch {
	case email == "":
		return "Please type an email address."
	case len(email) > maxEmailLen:
		return "That email address is too long."
	case !utf8.ValidString(name) || utf8.RuneCountInString(name) > maxNameLen:
		return fmt.Sprintf("The name must be valid text of at most %d characters.", maxNameLen)
	}
	addr, err := mail.ParseAddress(email)
	if err != nil || addr.Address != email || addr.Name != "" {
		return "That is not an email address; type one like ada@example.com."
	}
	return ""
}

// redirect sends the browser back to the client's redirect_uri with extra
// parameters plus state and iss (RFC 9207), keeping any query the
// redirect_uri already had.
func (s *Server) redirect(w http.ResponseWriter, r *http.Request, req authRequest, extra url.Values) {
	target, err := url.Parse(req.redirectURI)
	if err != nil { // checked in parseAuthRequest
		s.badRequest(w, fmt.Errorf("redirect_uri: %w", err))
		return
	}
	q := target.Query()
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		q.Set(k, extra.Get(k))
	}
	q.Set("state", req.state)
	q.Set("iss", s.Issuer())
	target.RawQuery = q.Encode()
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, target.String(), http.StatusFound)
}
