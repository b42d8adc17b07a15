package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/doorbell/doorbell/platform/secret"
)

// Provider types.
const (
	// TypeOIDC is any OpenID Connect provider, found through discovery.
	TypeOIDC = "oidc"
	// TypeGitHub is GitHub or GitHub Enterprise: OAuth2 without OIDC.
	TypeGitHub = "github"
)

// UnknownProvider is the provider label of requests that cannot be tied to
// a configured provider (a forged callback, /login?provider=nonsense). No
// provider may use it as its id.
const UnknownProvider = "unknown"

// GitHub's public endpoints, the defaults of a github provider.
const (
	GitHubAPIURL   = "https://api.github.com"
	GitHubAuthURL  = "https://github.com/login/oauth/authorize"
	GitHubTokenURL = "https://github.com/login/oauth/access_token"
)

// Provider is one identity provider people can sign in with.
type Provider struct {
	// ID names the provider in URLs (/login?provider=ID), events and metric
	// labels.
	ID string
	// Type is TypeOIDC or TypeGitHub.
	Type string
	// Name is what the sign-in page calls it ("Sign in with Name").
	Name string
	// Issuer is the OIDC issuer URL; empty for GitHub.
	Issuer       string
	ClientID     string
	ClientSecret string
	// Scopes requested: "openid" comes first for OIDC, and GitHub always
	// gets "user:email".
	Scopes []string
	// AllowedEmailDomains, when not empty, are the only email domains
	// (lowercase, matched exactly) that may sign in with this provider.
	AllowedEmailDomains []string
	// GitHubAPIURL, GitHubAuthURL and GitHubTokenURL are GitHub's API base
	// and OAuth endpoints (set for GitHub only).
	GitHubAPIURL, GitHubAuthURL, GitHubTokenURL string
	// TokenAuthMethod is how an OIDC client with a secret authenticates at
	// the token endpoint: TokenAuthAuto, TokenAuthBasic or TokenAuthPost.
	TokenAuthMethod string
}

// Token endpoint authentication methods (RFC 7591 names) for
// Provider.TokenAuthMethod.
const (
	// TokenAuthAuto picks client_secret_basic, the default of a client
	// registration, unless the provider's discovery lists only
	// client_secret_post.
	TokenAuthAuto  = "auto"
	TokenAuthBasic = "client_secret_basic"
	TokenAuthPost  = "client_secret_post"
)

// tokenAuthMethod checks a token_endpoint_auth_method value ("" is auto);
// ok is false for an unknown one.
func tokenAuthMethod(v string) (method string, ok bool) {
	switch v = strings.TrimSpace(v); v {
	case "", TokenAuthAuto:
		return TokenAuthAuto, true
	case TokenAuthBasic, TokenAuthPost:
		return v, true
	}
	return v, false
}

// WithDefaults returns p with what a provider description may leave out
// filled in: for OIDC the scopes (email and profile when none are given,
// openid first always), the token endpoint authentication method (auto)
// and the name (the issuer's host); for GitHub the API URL (github.com's,
// without a trailing slash), the authorize and token URLs that go with it,
// the user:email scope (first) and the name "GitHub". Load returns every
// provider through it. It is the only place provider defaults are applied:
// login.New takes a Provider as it is, so one built by hand goes through
// WithDefaults first. It does not validate.
func (p Provider) WithDefaults() Provider {
	switch p.Type {
	case TypeOIDC:
		if len(p.Scopes) == 0 {
			p.Scopes = []string{"email", "profile"}
		}
		p.Scopes = withScope("openid", p.Scopes)
		if p.TokenAuthMethod == "" {
			p.TokenAuthMethod = TokenAuthAuto
		}
		if p.Name == "" {
			p.Name = hostOf(p.Issuer)
		}
	case TypeGitHub:
		p.GitHubAPIURL = strings.TrimSuffix(p.GitHubAPIURL, "/")
		if p.GitHubAPIURL == "" {
			p.GitHubAPIURL = GitHubAPIURL
		}
		authDef, tokenDef := githubOAuthURLs(p.GitHubAPIURL)
		p.GitHubAuthURL = orDefault(p.GitHubAuthURL, authDef)
		p.GitHubTokenURL = orDefault(p.GitHubTokenURL, tokenDef)
		p.Scopes = withScope("user:email", p.Scopes)
		if p.Name == "" {
			p.Name = "GitHub"
		}
	}
	return p
}

// fileProvider is one entry of the providers file, as written.
type fileProvider struct {
	ID                  string   `yaml:"id"`
	Type                string   `yaml:"type"`
	Name                string   `yaml:"name"`
	Issuer              string   `yaml:"issuer"`
	ClientID            string   `yaml:"client_id"`
	ClientSecret        string   `yaml:"client_secret"`
	ClientSecretFile    string   `yaml:"client_secret_file"`
	Scopes              []string `yaml:"scopes"`
	AllowedEmailDomains []string `yaml:"allowed_email_domains"`
	GitHubAPIURL        string   `yaml:"github_api_url"`
	GitHubAuthURL       string   `yaml:"github_auth_url"`
	GitHubTokenURL      string   `yaml:"github_token_url"`
	TokenAuthMethod     string   `yaml:"token_endpoint_auth_method"`
}

// providerFields are the keys a providers file entry may have.
var providerFields = []string{
	"id", "type", "name", "issuer", "client_id", "client_secret", "client_secret_file", "scopes",
	"allowed_email_domains", "github_api_url", "github_auth_url", "github_token_url", "token_endpoint_auth_method",
}

// domainPattern is a lowercase DNS name with at least one dot.
var domainPattern = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// maxProvidersFile bounds the providers file; a real one is a few KiB.
const maxProvidersFile = 1 << 20

// providersFile reads and checks the providers file at path. Errors name
// the variable, the file, the provider (by id, or by position and line) and
// the field.
func (l *loader) providersFile(name, path string) []Provider {
	var set []string
	for _, v := range oidcVariables {
		if l.get(v) != "" {
			set = append(set, v)
		}
	}
	if len(set) > 0 {
		l.fail(name, "is set, and so is %s: describe every provider in the file, or use the OIDC_* variables for one provider, not both",
			strings.Join(set, ", "))
		return nil
	}
	fail := func(format string, args ...any) {
		l.fail(name, "%s: "+format, append([]any{path}, args...)...)
	}
	data, err := os.ReadFile(path)
	switch {
	case err != nil:
		fail("cannot read: %v", err)
		return nil
	case len(data) > maxProvidersFile:
		fail("is larger than %d bytes", maxProvidersFile)
		return nil
	}

	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		fail("not valid YAML: %v", err)
		return nil
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		fail(`must be a mapping with a "providers" list`)
		return nil
	}
	root := doc.Content[0]
	var list *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		key := root.Content[i]
		if key.Value != "providers" {
			fail("line %d: unknown top-level field %q (the only one is providers)", key.Line, key.Value)
			continue
		}
		list = root.Content[i+1]
	}
	if list == nil || list.Kind != yaml.SequenceNode || len(list.Content) == 0 {
		fail("providers: must be a list of at least one provider")
		return nil
	}

	return providerItems(list, path, fail)
}

// providerItems decodes and checks each provider in the providers file's
// list (the file at path), reporting errors to fail.
func providerItems(list *yaml.Node, path string, fail func(format string, args ...any)) []Provider {
	var out []Provider
	seen := map[string]int{}
	for i, item := range list.Content {
		where := fmt.Sprintf("provider #%d (line %d)", i+1, item.Line)
		if item.Kind != yaml.MappingNode {
			fail("%s: must be a mapping of fields", where)
			continue
		}
		ok := true
		for j := 0; j+1 < len(item.Content); j += 2 {
			key := item.Content[j]
			if key.Value == "id" && item.Content[j+1].Kind == yaml.ScalarNode {
				where = fmt.Sprintf("provider %q (line %d)", item.Content[j+1].Value, item.Line)
			}
		}
		for j := 0; j+1 < len(item.Content); j += 2 {
			if key := item.Content[j]; !slices.Contains(providerFields, key.Value) {
				fail("%s: unknown field %q on line %d (known fields: %s)", where, key.Value, key.Line, strings.Join(providerFields, ", "))
				ok = false
			}
		}
		if !ok {
			continue
		}
		var fp fileProvider
		if err := item.Decode(&fp); err != nil {
			fail("%s: %v", where, err)
			continue
		}
		p, errs := fp.provider(filepath.Dir(path))
		for _, e := range errs {
			fail("%s: %s", where, e)
		}
		if len(errs) > 0 {
			continue
		}
		if line, dup := seen[p.ID]; dup {
			fail("%s: id %q is already used by the provider on line %d", where, p.ID, line)
			continue
		}
		seen[p.ID] = item.Line
		out = append(out, p)
	}
	return out
}

// provider checks fp and fills in defaults (WithDefaults). Relative secret
// file paths are taken from dir, the providers file's folder. Each error
// names a field.
func (fp fileProvider) provider(dir string) (Provider, []string) {
	var errs fieldErrors
	bad := errs.add
	p := Provider{
		ID:       strings.TrimSpace(fp.ID),
		Type:     strings.TrimSpace(fp.Type),
		Name:     strings.TrimSpace(fp.Name),
		Issuer:   strings.TrimSpace(fp.Issuer),
		ClientID: strings.TrimSpace(fp.ClientID),
	}
	if p.ID == "" {
		bad("id", "required")
	} else if err := checkProviderID(p.ID); err != nil {
		bad("id", "%v", err)
	}
	if p.ClientID == "" {
		bad("client_id", "required")
	}
	if len(p.Name) > 64 {
		bad("name", "longer than 64 characters")
	}

	switch inline, file := strings.TrimSpace(fp.ClientSecret), strings.TrimSpace(fp.ClientSecretFile); {
	case inline != "" && file != "":
		bad("client_secret_file", "set together with client_secret; use one")
	case file != "":
		if !filepath.IsAbs(file) {
			file = filepath.Join(dir, file)
		}
		v, err := secret.ReadFile(file)
		switch {
		case errors.Is(err, secret.ErrEmpty):
			bad("client_secret_file", "%s is empty", file)
		case err != nil:
			bad("client_secret_file", "cannot read: %v", err)
		}
		p.ClientSecret = v
	default:
		p.ClientSecret = inline
	}

	p.AllowedEmailDomains = emailDomains(fp.AllowedEmailDomains, bad)
	for _, s := range fp.Scopes {
		if s = strings.TrimSpace(s); s != "" {
			p.Scopes = append(p.Scopes, strings.Fields(s)...)
		}
	}
	p.GitHubAPIURL = strings.TrimSpace(fp.GitHubAPIURL)
	p.GitHubAuthURL = strings.TrimSpace(fp.GitHubAuthURL)
	p.GitHubTokenURL = strings.TrimSpace(fp.GitHubTokenURL)
	if p.Type == TypeOIDC {
		p.TokenAuthMethod, _ = tokenAuthMethod(fp.TokenAuthMethod)
	}
	p = p.WithDefaults()

	fp.checkType(p, bad)
	return p, errs
}

// emailDomains returns domains lowercased, reporting to bad the ones that
// are not a domain name.
func emailDomains(domains []string, bad func(field, format string, args ...any)) []string {
	var out []string
	for _, d := range domains {
		d = strings.ToLower(strings.TrimSpace(d))
		if !domainPattern.MatchString(d) {
			bad("allowed_email_domains", "%q is not a domain name such as example.com (no @, wildcard or port)", d)
			continue
		}
		out = append(out, d)
	}
	return out
}

// checkType checks the fields that depend on the provider's type, on p as
// fp describes it with its defaults filled in, and reports each error to
// bad.
func (fp fileProvider) checkType(p Provider, bad func(field, format string, args ...any)) {
	githubOnly := map[string]string{
		"github_api_url": fp.GitHubAPIURL, "github_auth_url": fp.GitHubAuthURL, "github_token_url": fp.GitHubTokenURL,
	}
	switch p.Type {
	case TypeOIDC:
		method, methodOK := tokenAuthMethod(fp.TokenAuthMethod)
		switch {
		case p.Issuer == "":
			bad("issuer", "required for type oidc")
		case !isHTTPURL(p.Issuer):
			bad("issuer", "%q is not an http(s) URL", p.Issuer)
		}
		for _, field := range sortedKeys(githubOnly) {
			if strings.TrimSpace(githubOnly[field]) != "" {
				bad(field, "only for type github")
			}
		}
		switch {
		case !methodOK:
			bad("token_endpoint_auth_method", "%q is not one of %s, %s, %s", method, TokenAuthAuto, TokenAuthBasic, TokenAuthPost)
		case method != TokenAuthAuto && p.ClientSecret == "" && strings.TrimSpace(fp.ClientSecretFile) == "":
			// (An unreadable or empty client_secret_file has its own error.)
			bad("token_endpoint_auth_method", "%s needs a client secret (client_secret or client_secret_file)", method)
		}
	case TypeGitHub:
		if p.Issuer != "" {
			bad("issuer", "not used by type github (its issuer is github_api_url)")
		}
		if strings.TrimSpace(fp.TokenAuthMethod) != "" {
			bad("token_endpoint_auth_method", "only for type oidc")
		}
		if p.ClientSecret == "" {
			bad("client_secret", "required for type github (or client_secret_file)")
		}
		urls := map[string]string{
			"github_api_url": p.GitHubAPIURL, "github_auth_url": p.GitHubAuthURL, "github_token_url": p.GitHubTokenURL,
		}
		for _, field := range sortedKeys(urls) {
			if !isHTTPURL(urls[field]) {
				bad(field, "%q is not an http(s) URL", urls[field])
			}
		}
	case "":
		bad("type", "required: oidc or github")
	default:
		bad("type", "%q is not oidc or github", p.Type)
	}
}

// fieldErrors are a provider's errors, each naming its field.
type fieldErrors []string

func (e *fieldErrors) add(field, format string, args ...any) {
	*e = append(*e, field+": "+fmt.Sprintf(format, args...))
}

// githubOAuthURLs returns the authorize and token URLs that go with a
// GitHub API base URL: github.com's for api.github.com, else GitHub
// Enterprise Server's on the API's host.
func githubOAuthURLs(api string) (auth, token string) {
	u, err := url.Parse(api)
	if err != nil || u.Host == "" || u.Host == "api.github.com" {
		return GitHubAuthURL, GitHubTokenURL
	}
	base := u.Scheme + "://" + u.Host
	return base + "/login/oauth/authorize", base + "/login/oauth/access_token"
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
