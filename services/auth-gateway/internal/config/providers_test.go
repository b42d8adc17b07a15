package config_test

import (
	"bytes"
	"encoding/base64"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/config"
)

// providersEnv is an environment with a providers file holding yaml.
func providersEnv(t *testing.T, yaml string) (map[string]string, string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "providers.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return map[string]string{"GATEWAY_PROVIDERS_FILE": path}, path
}

// checkErrorText reports each of wantIn that err does not mention, and each
// of notIn (a secret or a value that must not be echoed) that it does.
func checkErrorText(t *testing.T, err error, wantIn, notIn []string) {
	t.Helper()
	for _, s := range wantIn {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
	for _, s := range notIn {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error %q leaks %q", err, s)
		}
	}
}

func TestProvidersFileDescribesEveryKind(t *testing.T) {
	e, path := providersEnv(t, `
providers:
  - id: keycloak
    type: oidc
    name: Company account
    issuer: https://sso.example.com/realms/staff
    client_id: doorbell
    client_secret_file: keycloak.secret
    scopes: [email, groups]
    allowed_email_domains: [Example.com, corp.example.com]
    token_endpoint_auth_method: client_secret_post
  - id: google
    type: oidc
    issuer: https://accounts.google.com
    client_id: g-client
    client_secret: g-secret
  - id: github
    type: github
    client_id: gh-client
    client_secret: gh-secret
  - id: ghe
    type: github
    name: GitHub Enterprise
    client_id: ghe-client
    client_secret: ghe-secret
    github_api_url: https://git.example.com/api/v3/
`)
	if err := os.WriteFile(filepath.Join(filepath.Dir(path), "keycloak.secret"), []byte("kc-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(env(e))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := []config.Provider{
		{
			ID: "keycloak", Type: "oidc", Name: "Company account", Issuer: "https://sso.example.com/realms/staff",
			ClientID: "doorbell", ClientSecret: "kc-secret", Scopes: []string{"openid", "email", "groups"},
			AllowedEmailDomains: []string{"example.com", "corp.example.com"}, TokenAuthMethod: "client_secret_post",
		},
		{
			ID: "google", Type: "oidc", Name: "accounts.google.com", Issuer: "https://accounts.google.com",
			ClientID: "g-client", ClientSecret: "g-secret", Scopes: []string{"openid", "email", "profile"},
			TokenAuthMethod: "auto",
		},
		{
			ID: "github", Type: "github", Name: "GitHub", ClientID: "gh-client", ClientSecret: "gh-secret",
			Scopes:       []string{"user:email"},
			GitHubAPIURL: "https://api.github.com", GitHubAuthURL: "https://github.com/login/oauth/authorize",
			GitHubTokenURL: "https://github.com/login/oauth/access_token",
		},
		{
			ID: "ghe", Type: "github", Name: "GitHub Enterprise", ClientID: "ghe-client", ClientSecret: "ghe-secret",
			Scopes:       []string{"user:email"},
			GitHubAPIURL: "https://git.example.com/api/v3", GitHubAuthURL: "https://git.example.com/login/oauth/authorize",
			GitHubTokenURL: "https://git.example.com/login/oauth/access_token",
		},
	}
	if !reflect.DeepEqual(c.Providers, want) {
		t.Errorf("providers =\n%+v\nwant\n%+v", c.Providers, want)
	}
	if c.ProvidersFile != path {
		t.Errorf("ProvidersFile = %q", c.ProvidersFile)
	}
}

func TestProvidersFileErrorsNameFileProviderAndField(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		// extra environment
		env    map[string]string
		wantIn []string
		notIn  []string
	}{
		{
			name:   "unknown field",
			yaml:   "providers:\n  - id: dex\n    type: oidc\n    issuer: https://dex.example.com\n    client_id: x\n    clientsecret: oops\n",
			wantIn: []string{"GATEWAY_PROVIDERS_FILE", "providers.yaml", `provider "dex"`, `unknown field "clientsecret"`, "line 6"},
		},
		{
			name: "duplicate id",
			yaml: "providers:\n  - {id: dex, type: oidc, issuer: https://a.example.com, client_id: x}\n" +
				"  - {id: dex, type: oidc, issuer: https://b.example.com, client_id: y}\n",
			wantIn: []string{`provider "dex" (line 3)`, `id "dex" is already used by the provider on line 2`},
		},
		{
			name:   "id with characters unusable in a label",
			yaml:   "providers:\n  - {id: My Dex, type: oidc, issuer: https://a.example.com, client_id: x}\n",
			wantIn: []string{`provider "My Dex"`, "id:", "a-z, 0-9"},
		},
		{
			name:   "reserved id",
			yaml:   "providers:\n  - {id: unknown, type: oidc, issuer: https://a.example.com, client_id: x}\n",
			wantIn: []string{"id:", "reserved"},
		},
		{
			name:   "missing id is named by position",
			yaml:   "providers:\n  - {type: oidc, issuer: https://a.example.com, client_id: x}\n",
			wantIn: []string{"provider #1 (line 2)", "id: required"},
		},
		{
			name:   "missing type",
			yaml:   "providers:\n  - {id: dex, issuer: https://a.example.com, client_id: x}\n",
			wantIn: []string{`provider "dex"`, "type: required: oidc or github"},
		},
		{
			name:   "unknown type",
			yaml:   "providers:\n  - {id: dex, type: saml, client_id: x}\n",
			wantIn: []string{"type:", `"saml" is not oidc or github`},
		},
		{
			name:   "unknown token endpoint auth method",
			yaml:   "providers:\n  - {id: dex, type: oidc, issuer: https://a.example.com, client_id: x, client_secret: s, token_endpoint_auth_method: none}\n",
			wantIn: []string{`provider "dex"`, `token_endpoint_auth_method: "none" is not one of auto, client_secret_basic, client_secret_post`},
		},
		{
			name:   "token endpoint auth method without a secret",
			yaml:   "providers:\n  - {id: dex, type: oidc, issuer: https://a.example.com, client_id: x, token_endpoint_auth_method: client_secret_post}\n",
			wantIn: []string{"token_endpoint_auth_method: client_secret_post needs a client secret"},
		},
		{
			name:   "token endpoint auth method on github",
			yaml:   "providers:\n  - {id: gh, type: github, client_id: x, client_secret: s, token_endpoint_auth_method: client_secret_post}\n",
			wantIn: []string{`provider "gh"`, "token_endpoint_auth_method: only for type oidc"},
		},
		{
			name:   "empty secret file",
			yaml:   "providers:\n  - {id: dex, type: oidc, issuer: https://a.example.com, client_id: x, client_secret_file: /dev/null}\n",
			wantIn: []string{`provider "dex"`, "client_secret_file: /dev/null is empty"},
		},
		{
			name:   "oidc without issuer",
			yaml:   "providers:\n  - {id: dex, type: oidc, client_id: x}\n",
			wantIn: []string{"issuer: required for type oidc"},
		},
		{
			name:   "oidc issuer not a URL",
			yaml:   "providers:\n  - {id: dex, type: oidc, issuer: dex.example.com, client_id: x}\n",
			wantIn: []string{"issuer:", "not an http(s) URL"},
		},
		{
			name:   "GitHub fields on an oidc provider",
			yaml:   "providers:\n  - {id: dex, type: oidc, issuer: https://a.example.com, client_id: x, github_api_url: https://api.github.com}\n",
			wantIn: []string{"github_api_url: only for type github"},
		},
		{
			name:   "GitHub without a secret",
			yaml:   "providers:\n  - {id: gh, type: github, client_id: x}\n",
			wantIn: []string{"client_secret: required for type github"},
		},
		{
			name:   "GitHub with an issuer",
			yaml:   "providers:\n  - {id: gh, type: github, client_id: x, client_secret: s, issuer: https://github.com}\n",
			wantIn: []string{"issuer: not used by type github"},
		},
		{
			name:   "secret and secret file, without echoing the secret",
			yaml:   "providers:\n  - {id: dex, type: oidc, issuer: https://a.example.com, client_id: x, client_secret: hunter2hunter2, client_secret_file: /etc/x}\n",
			wantIn: []string{"client_secret_file: set together with client_secret"},
			notIn:  []string{"hunter2hunter2"},
		},
		{
			name:   "missing secret file",
			yaml:   "providers:\n  - {id: dex, type: oidc, issuer: https://a.example.com, client_id: x, client_secret_file: nope.secret}\n",
			wantIn: []string{"client_secret_file: cannot read", "nope.secret"},
		},
		{
			name:   "email domain with an at sign",
			yaml:   "providers:\n  - {id: dex, type: oidc, issuer: https://a.example.com, client_id: x, allowed_email_domains: [\"@example.com\"]}\n",
			wantIn: []string{"allowed_email_domains:", `"@example.com" is not a domain name`},
		},
		{
			name:   "email domain wildcard",
			yaml:   "providers:\n  - {id: dex, type: oidc, issuer: https://a.example.com, client_id: x, allowed_email_domains: [\"*.example.com\"]}\n",
			wantIn: []string{"allowed_email_domains:"},
		},
		{
			name:   "unknown top-level field",
			yaml:   "provider:\n  - {id: dex, type: oidc, issuer: https://a.example.com, client_id: x}\n",
			wantIn: []string{`unknown top-level field "provider"`},
		},
		{
			name:   "empty list",
			yaml:   "providers: []\n",
			wantIn: []string{"providers: must be a list of at least one provider"},
		},
		{
			name:   "not YAML",
			yaml:   "providers: [\n",
			wantIn: []string{"not valid YAML"},
		},
		{
			name:   "duplicate key inside a provider",
			yaml:   "providers:\n  - id: dex\n    id: other\n",
			wantIn: []string{"line 3", `"id" already defined`},
		},
		{
			name:   "file and OIDC variables both set",
			yaml:   "providers:\n  - {id: dex, type: oidc, issuer: https://a.example.com, client_id: x}\n",
			env:    map[string]string{"OIDC_ISSUER": "https://b.example.com", "OIDC_CLIENT_SECRET": "s3cret-value"},
			wantIn: []string{"GATEWAY_PROVIDERS_FILE: is set, and so is OIDC_ISSUER, OIDC_CLIENT_SECRET", "not both"},
			notIn:  []string{"s3cret-value"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, _ := providersEnv(t, tt.yaml)
			for k, v := range tt.env {
				e[k] = v
			}
			_, err := config.Load(env(e))
			if err == nil {
				t.Fatal("Load accepted the providers file")
			}
			checkErrorText(t, err, tt.wantIn, tt.notIn)
		})
	}
}

func TestProvidersFileMissing(t *testing.T) {
	_, err := config.Load(env(map[string]string{"GATEWAY_PROVIDERS_FILE": "/nonexistent/providers.yaml"}))
	if err == nil || !strings.Contains(err.Error(), "GATEWAY_PROVIDERS_FILE: /nonexistent/providers.yaml: cannot read") {
		t.Fatalf("Load = %v", err)
	}
	if strings.Contains(err.Error(), "OIDC_ISSUER") {
		t.Errorf("with a providers file, the OIDC_* variables are not required: %v", err)
	}
}

func TestLoadReadsTheGatewaySettings(t *testing.T) {
	dk := bytes.Repeat([]byte{4}, 32)
	c, err := config.Load(env(with(map[string]string{
		"GATEWAY_PUBLIC_URL":      "https://Login.Example.com", // host names ignore case
		"GATEWAY_COOKIE_KEY":      base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{5}, 32)),
		"GATEWAY_COOKIE_DOMAIN":   ".Example.com",
		"GATEWAY_DEVICE_KEY_FILE": writeFile(t, base64.StdEncoding.EncodeToString(dk)),
		"GATEWAY_SESSION_TTL":     "90m",
		"GATEWAY_REDIRECT_HOSTS":  " App.example.com , wiki.example.com:8443,[::1]:9000",
		"GATEWAY_RATE_LIMIT":      "30/m",
		"GATEWAY_RATE_BURST":      "5",
		"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.7, ::1",
	})))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"cookie domain", c.CookieDomain, "example.com"},
		{"device key", c.DeviceKey, dk},
		{"session ttl", c.SessionTTL, 90 * time.Minute},
		{"redirect hosts", c.RedirectHosts, []string{"app.example.com", "wiki.example.com:8443", "[::1]:9000"}},
		{"rate", c.RateLimit, 0.5},
		{"burst", c.RateBurst, 5},
		{"trusted proxies", c.TrustedProxies, []netip.Prefix{
			netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.1.7/32"), netip.MustParsePrefix("::1/128"),
		}},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

func TestLoadRejectsBadGatewaySettings(t *testing.T) {
	key := func(b byte) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{b}, 32)) }
	tests := []struct {
		name   string
		env    map[string]string
		wantIn []string
		notIn  []string
	}{
		{"session ttl too short", map[string]string{"GATEWAY_SESSION_TTL": "10s"}, []string{"GATEWAY_SESSION_TTL", "from 1m0s to 720h0m0s"}, nil},
		{"session ttl not a duration", map[string]string{"GATEWAY_SESSION_TTL": "12"}, []string{"GATEWAY_SESSION_TTL"}, nil},
		{"two device keys", map[string]string{"GATEWAY_DEVICE_KEY": key(1) + "," + key(2)}, []string{"GATEWAY_DEVICE_KEY", "takes one key"}, []string{key(1)}},
		{"short device key", map[string]string{"GATEWAY_DEVICE_KEY": base64.StdEncoding.EncodeToString([]byte("short"))}, []string{"GATEWAY_DEVICE_KEY", "want 32"}, nil},
		{"redirect host with a scheme", map[string]string{"GATEWAY_REDIRECT_HOSTS": "https://app.example.com"}, []string{"GATEWAY_REDIRECT_HOSTS", "no scheme, path or wildcard"}, nil},
		{"redirect host wildcard", map[string]string{"GATEWAY_REDIRECT_HOSTS": "*.example.com"}, []string{"GATEWAY_REDIRECT_HOSTS"}, nil},
		{"rate with an unknown unit", map[string]string{"GATEWAY_RATE_LIMIT": "10/d"}, []string{"GATEWAY_RATE_LIMIT", "10/s, 30/m or 600/h"}, nil},
		{"zero rate", map[string]string{"GATEWAY_RATE_LIMIT": "0"}, []string{"GATEWAY_RATE_LIMIT"}, nil},
		{"rate not a number", map[string]string{"GATEWAY_RATE_LIMIT": "NaN"}, []string{"GATEWAY_RATE_LIMIT", "positive rate"}, nil},
		{"rate not a number, per second", map[string]string{"GATEWAY_RATE_LIMIT": "nan/s"}, []string{"GATEWAY_RATE_LIMIT", "positive rate"}, nil},
		{"infinite rate", map[string]string{"GATEWAY_RATE_LIMIT": "+Inf/m"}, []string{"GATEWAY_RATE_LIMIT", "positive rate"}, nil},
		{"zero burst", map[string]string{"GATEWAY_RATE_BURST": "0"}, []string{"GATEWAY_RATE_BURST", "from 1 to 10000"}, nil},
		{"trusted proxy not an address", map[string]string{"GATEWAY_TRUSTED_PROXIES": "proxy.internal"}, []string{"GATEWAY_TRUSTED_PROXIES", "not an IP address or CIDR prefix"}, nil},
		{
			"cookie domain that does not cover the public URL",
			map[string]string{"GATEWAY_PUBLIC_URL": "https://login.example.com", "GATEWAY_COOKIE_DOMAIN": "example.org"},
			[]string{"GATEWAY_COOKIE_DOMAIN", "does not contain the host of GATEWAY_PUBLIC_URL (login.example.com)"}, nil,
		},
		{
			"cookie domain that only shares a suffix",
			map[string]string{"GATEWAY_PUBLIC_URL": "https://login.badexample.com", "GATEWAY_COOKIE_DOMAIN": "example.com"},
			[]string{"GATEWAY_COOKIE_DOMAIN"}, nil,
		},
		{
			"cookie domain with an IP public URL",
			map[string]string{"GATEWAY_COOKIE_DOMAIN": "example.com"},
			[]string{"GATEWAY_COOKIE_DOMAIN", "IP address"}, nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Load(env(with(tt.env)))
			if err == nil {
				t.Fatal("Load accepted bad configuration")
			}
			checkErrorText(t, err, tt.wantIn, tt.notIn)
		})
	}
}
