// Package config reads the auth-gateway's settings from the environment.
//
// Every setting has a default that works on loopback except OIDC_ISSUER and
// OIDC_CLIENT_ID. Secrets can also be given as NAME_FILE, the path of a file
// holding the value; the file wins when both are set. Errors name the
// variable and what is wrong with it, never a secret's value.
package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Config is the gateway's whole configuration.
type Config struct {
	// Addr is where the public HTTP server listens (GATEWAY_ADDR).
	Addr string
	// PublicURL is the gateway's external base URL, with no path
	// (GATEWAY_PUBLIC_URL). The OIDC callback is PublicURL + "/auth/callback".
	PublicURL *url.URL
	// AdminAddr is where /metrics, /healthz and /readyz listen
	// (GATEWAY_ADMIN_ADDR).
	AdminAddr string
	// CookieKeys are the 32-byte cookie keys, first seals, all open
	// (GATEWAY_COOKIE_KEY). Empty means none was configured.
	CookieKeys [][]byte

	// Issuer is the OIDC issuer URL (OIDC_ISSUER).
	Issuer string
	// ClientID is the OAuth2 client id (OIDC_CLIENT_ID).
	ClientID string
	// ClientSecret is the OAuth2 client secret; empty for public clients
	// (OIDC_CLIENT_SECRET).
	ClientSecret string
	// Scopes always contains "openid" first (OIDC_SCOPES).
	Scopes []string
	// ProviderID names the provider in events and metric labels
	// (OIDC_PROVIDER_ID).
	ProviderID string

	// NATSURL is the NATS server URL list (NATS_URL).
	NATSURL string
	// StreamReplicas is the replica count used when creating the stream
	// (NATS_STREAM_REPLICAS).
	StreamReplicas int
	// PublishTimeout bounds one publish including its ack
	// (GATEWAY_PUBLISH_TIMEOUT).
	PublishTimeout time.Duration

	// LogLevel is the minimum level logged (LOG_LEVEL).
	LogLevel slog.Level
	// LogFormat is "text" or "json" (LOG_FORMAT).
	LogFormat string
}

// SecureCookies reports whether cookies must carry the Secure attribute,
// which is the case when the public URL is https.
func (c *Config) SecureCookies() bool { return c.PublicURL.Scheme == "https" }

// CallbackURL is the redirect URI registered with the identity provider.
func (c *Config) CallbackURL() string { return c.PublicURL.String() + "/auth/callback" }

// providerIDPattern keeps the provider id usable as a metric label value.
var providerIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// Load reads the configuration through lookup (os.LookupEnv in production).
// Files named by *_FILE variables are read with os.ReadFile. It reports every
// bad variable at once.
func Load(lookup func(string) (string, bool)) (*Config, error) {
	l := loader{lookup: lookup}
	c := &Config{
		Addr:       l.addr("GATEWAY_ADDR", "127.0.0.1:8080"),
		PublicURL:  l.publicURL("GATEWAY_PUBLIC_URL", "http://127.0.0.1:8080"),
		AdminAddr:  l.addr("GATEWAY_ADMIN_ADDR", "127.0.0.1:9101"),
		CookieKeys: l.cookieKeys("GATEWAY_COOKIE_KEY"),

		Issuer:       l.issuer("OIDC_ISSUER"),
		ClientID:     l.required("OIDC_CLIENT_ID"),
		ClientSecret: l.secret("OIDC_CLIENT_SECRET"),
		Scopes:       l.scopes("OIDC_SCOPES", "openid email profile"),
		ProviderID:   l.providerID("OIDC_PROVIDER_ID", "oidc"),

		NATSURL:        l.natsURL("NATS_URL", "nats://127.0.0.1:4222"),
		StreamReplicas: l.intRange("NATS_STREAM_REPLICAS", 1, 1, 5),
		PublishTimeout: l.duration("GATEWAY_PUBLISH_TIMEOUT", 5*time.Second),

		LogLevel:  l.level("LOG_LEVEL", slog.LevelInfo),
		LogFormat: l.oneOf("LOG_FORMAT", "text", "text", "json"),
	}
	if len(l.errs) > 0 {
		return nil, fmt.Errorf("config: %w", errors.Join(l.errs...))
	}
	return c, nil
}

type loader struct {
	lookup func(string) (string, bool)
	errs   []error
}

func (l *loader) fail(name, format string, args ...any) {
	l.errs = append(l.errs, fmt.Errorf("%s: "+format, append([]any{name}, args...)...))
}

// get returns the trimmed value of name, or "" when unset or blank.
func (l *loader) get(name string) string {
	v, _ := l.lookup(name)
	return strings.TrimSpace(v)
}

// secret returns NAME_FILE's content if NAME_FILE is set, else NAME.
func (l *loader) secret(name string) string {
	path := l.get(name + "_FILE")
	if path == "" {
		return l.get(name)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		l.fail(name+"_FILE", "cannot read secret file: %v", err)
		return ""
	}
	return strings.TrimSpace(string(b))
}

func (l *loader) required(name string) string {
	v := l.get(name)
	if v == "" {
		l.fail(name, "required but not set")
	}
	return v
}

func (l *loader) addr(name, def string) string {
	v := l.get(name)
	if v == "" {
		return def
	}
	if _, port, err := net.SplitHostPort(v); err != nil {
		l.fail(name, "%q is not host:port: %v", v, err)
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		l.fail(name, "%q has a bad port", v)
	}
	return v
}

func (l *loader) publicURL(name, def string) *url.URL {
	v := l.get(name)
	if v == "" {
		v = def
	}
	u, err := url.Parse(strings.TrimSuffix(v, "/"))
	switch {
	case err != nil:
		l.fail(name, "%q is not a URL: %v", v, err)
		return &url.URL{}
	case u.Scheme != "http" && u.Scheme != "https":
		l.fail(name, "%q must start with http:// or https://", v)
	case u.Host == "":
		l.fail(name, "%q has no host", v)
	case u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		l.fail(name, "%q must be scheme://host[:port] with no path, query or user", v)
	}
	return u
}

func (l *loader) issuer(name string) string {
	v := l.required(name)
	if v == "" {
		return ""
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		l.fail(name, "%q is not an http(s) URL", v)
	}
	return v
}

func (l *loader) natsURL(name, def string) string {
	v := l.secret(name)
	if v == "" {
		return def
	}
	for _, one := range strings.Split(v, ",") {
		u, err := url.Parse(strings.TrimSpace(one))
		if err != nil || u.Host == "" {
			// The URL may hold credentials: do not echo it.
			l.fail(name, "entry is not a URL like nats://host:4222")
			break
		}
	}
	return v
}

// cookieKeys parses a comma-separated list of base64 (standard or URL
// alphabet, padded or not) 32-byte keys.
func (l *loader) cookieKeys(name string) [][]byte {
	v := l.secret(name)
	if v == "" {
		return nil
	}
	var keys [][]byte
	for i, part := range strings.Split(v, ",") {
		part = strings.TrimRight(strings.TrimSpace(part), "=")
		if part == "" {
			l.fail(name, "key %d is empty", i+1)
			continue
		}
		k, err := base64.RawStdEncoding.DecodeString(part)
		if err != nil {
			k, err = base64.RawURLEncoding.DecodeString(part)
		}
		if err != nil {
			// Never echo the key.
			l.fail(name, "key %d is not base64", i+1)
			continue
		}
		if len(k) != 32 {
			l.fail(name, "key %d decodes to %d bytes, want 32 (make one with: openssl rand -base64 32)", i+1, len(k))
			continue
		}
		keys = append(keys, k)
	}
	return keys
}

// scopes splits on spaces and commas and puts "openid" first, once.
func (l *loader) scopes(name, def string) []string {
	v := l.get(name)
	if v == "" {
		v = def
	}
	scopes := []string{"openid"}
	seen := map[string]bool{"openid": true}
	for _, s := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		if !seen[s] {
			seen[s] = true
			scopes = append(scopes, s)
		}
	}
	return scopes
}

func (l *loader) providerID(name, def string) string {
	v := l.get(name)
	if v == "" {
		return def
	}
	if !providerIDPattern.MatchString(v) {
		l.fail(name, "%q must be 1-32 characters of a-z, 0-9, '-' and '_', starting with a letter or digit", v)
	}
	return v
}

func (l *loader) intRange(name string, def, lo, hi int) int {
	v := l.get(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		l.fail(name, "%q must be a whole number from %d to %d", v, lo, hi)
		return def
	}
	return n
}

func (l *loader) duration(name string, def time.Duration) time.Duration {
	v := l.get(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		l.fail(name, "%q must be a positive duration such as 5s or 1500ms", v)
		return def
	}
	return d
}

func (l *loader) level(name string, def slog.Level) slog.Level {
	v := l.get(name)
	if v == "" {
		return def
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(v)); err != nil {
		l.fail(name, "%q must be debug, info, warn or error", v)
		return def
	}
	return lvl
}

func (l *loader) oneOf(name, def string, allowed ...string) string {
	v := strings.ToLower(l.get(name))
	if v == "" {
		return def
	}
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	l.fail(name, "%q must be one of %s", v, strings.Join(allowed, ", "))
	return def
}
