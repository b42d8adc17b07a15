// Package config reads the auth-gateway's settings from the environment and
// the optional providers file (GATEWAY_PROVIDERS_FILE, YAML).
//
// Every setting has a default that works on loopback except the identity
// providers: either a providers file, or OIDC_ISSUER and OIDC_CLIENT_ID for
// a single OIDC provider (never both). Secrets can also be given as
// NAME_FILE, the path of a file holding the value; the file wins when both
// are set. Errors name the variable (and for the providers file the file,
// the provider and the field) and what is wrong, never a secret's value.
package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/doorbell/doorbell/platform/replicas"
	"github.com/doorbell/doorbell/platform/secret"
	"github.com/doorbell/doorbell/platform/telemetry"
)

// Config is the gateway's whole configuration.
type Config struct {
	// Addr is where the public HTTP server listens (GATEWAY_ADDR).
	Addr string
	// PublicURL is the gateway's external base URL, with no path
	// (GATEWAY_PUBLIC_URL). The providers' callbacks are under it (see
	// login.Handler.CallbackURL).
	PublicURL *url.URL
	// AdminAddr is where /metrics, /healthz and /readyz listen
	// (GATEWAY_ADMIN_ADDR).
	AdminAddr string
	// CookieKeys are the 32-byte cookie keys, first seals, all open
	// (GATEWAY_COOKIE_KEY). Empty means none was configured, which Load
	// allows only on loopback or with GATEWAY_ALLOW_RANDOM_COOKIE_KEY.
	CookieKeys [][]byte
	// CookieDomain is the Domain attribute of the session cookie, so that
	// /auth/verify sees the session on sibling hosts (GATEWAY_COOKIE_DOMAIN).
	// Empty means a host-only cookie.
	CookieDomain string
	// DeviceKey is the 32-byte key of the device-id HMAC (GATEWAY_DEVICE_KEY).
	// Nil means none was configured: main derives one from the cookie keys.
	DeviceKey []byte
	// SessionTTL bounds a session's lifetime from sign-in
	// (GATEWAY_SESSION_TTL).
	SessionTTL time.Duration
	// RedirectHosts are the hosts, each a lowercase hostname with an optional
	// port, that rd may name after sign-in besides the gateway's own paths
	// (GATEWAY_REDIRECT_HOSTS).
	RedirectHosts []string
	// RateLimit is the sustained rate, per second, of /login and
	// /auth/callback requests per client IP (GATEWAY_RATE_LIMIT).
	RateLimit float64
	// RateBurst is how many such requests a client IP may make at once
	// (GATEWAY_RATE_BURST).
	RateBurst int
	// TrustedProxies are the addresses of reverse proxies whose
	// X-Forwarded-For the gateway believes (GATEWAY_TRUSTED_PROXIES).
	TrustedProxies []netip.Prefix

	// ProvidersFile is the providers file the providers came from
	// (GATEWAY_PROVIDERS_FILE); empty when they came from OIDC_*.
	ProvidersFile string
	// Providers are the identity providers people can sign in with, at
	// least one, in the order the sign-in page shows them.
	Providers []Provider

	// NATSURL is the NATS server URL list (NATS_URL).
	NATSURL string
	// StreamReplicas is the replica count of the stream the gateway makes
	// (NATS_STREAM_REPLICAS): 1 to 5, or 0 for auto (as many as the NATS
	// servers can place, up to 3).
	StreamReplicas int
	// PublishTimeout bounds one publish including its ack
	// (GATEWAY_PUBLISH_TIMEOUT).
	PublishTimeout time.Duration
	// SpoolDir is where events JetStream did not acknowledge in time wait
	// to be published (GATEWAY_SPOOL_DIR). Empty means no spool: such a
	// sign-in fails with 503.
	SpoolDir string
	// SpoolMaxEvents bounds the spool (GATEWAY_SPOOL_MAX_EVENTS).
	SpoolMaxEvents int

	// TraceExport says whether spans are exported over OTLP/HTTP: when
	// OTEL_TRACES_EXPORTER is otlp, or an OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT
	// is set and OTEL_TRACES_EXPORTER is not none, unless OTEL_SDK_DISABLED
	// is true. The exporter reads the other OTEL_* variables itself.
	TraceExport bool

	// LogLevel is the minimum level logged (LOG_LEVEL).
	LogLevel slog.Level
	// LogFormat is "text" or "json" (LOG_FORMAT).
	LogFormat string
	// LogEmails puts the email address into the info-level line each
	// sign-in logs (GATEWAY_LOG_EMAILS); off by default.
	LogEmails bool
}

// SecureCookies reports whether cookies must carry the Secure attribute,
// which is the case when the public URL is https.
func (c *Config) SecureCookies() bool { return c.PublicURL.Scheme == "https" }

// providerIDPattern keeps the provider id usable as a metric label value.
var providerIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// Load reads the configuration through lookup (os.LookupEnv in production).
// Files named by *_FILE variables and GATEWAY_PROVIDERS_FILE are read with
// os.ReadFile. It reports every bad variable at once.
func Load(lookup func(string) (string, bool)) (*Config, error) {
	l := loader{lookup: lookup}
	c := &Config{
		Addr:           l.addr("GATEWAY_ADDR", "127.0.0.1:8080"),
		PublicURL:      l.publicURL("GATEWAY_PUBLIC_URL", "http://127.0.0.1:8080"),
		AdminAddr:      l.addr("GATEWAY_ADMIN_ADDR", "127.0.0.1:9101"),
		CookieKeys:     l.keys("GATEWAY_COOKIE_KEY"),
		SessionTTL:     l.durationRange("GATEWAY_SESSION_TTL", 12*time.Hour, time.Minute, 30*24*time.Hour),
		RedirectHosts:  l.hosts("GATEWAY_REDIRECT_HOSTS"),
		RateLimit:      l.rate("GATEWAY_RATE_LIMIT", 10),
		RateBurst:      l.intRange("GATEWAY_RATE_BURST", 20, 1, 10000),
		TrustedProxies: l.prefixes("GATEWAY_TRUSTED_PROXIES"),

		NATSURL:        l.natsURL("NATS_URL", "nats://127.0.0.1:4222"),
		StreamReplicas: l.replicas("NATS_STREAM_REPLICAS"),
		PublishTimeout: l.duration("GATEWAY_PUBLISH_TIMEOUT", 5*time.Second),

		LogLevel:  l.level("LOG_LEVEL", slog.LevelInfo),
		LogFormat: l.oneOf("LOG_FORMAT", "text", "text", "json"),
		LogEmails: l.boolean("GATEWAY_LOG_EMAILS", false),

		SpoolDir:    l.path("GATEWAY_SPOOL_DIR"),
		TraceExport: l.traceExport(),
	}
	c.SpoolMaxEvents = l.intRange("GATEWAY_SPOOL_MAX_EVENTS", 100_000, 1, 10_000_000)
	if c.SpoolDir == "" && l.get("GATEWAY_SPOOL_MAX_EVENTS") != "" {
		l.fail("GATEWAY_SPOOL_MAX_EVENTS", "is set but GATEWAY_SPOOL_DIR is not, so there is no spool: set GATEWAY_SPOOL_DIR to turn it on")
	}
	if c.SpoolDir != "" && !l.cookieKeyGiven(c) {
		l.fail("GATEWAY_SPOOL_DIR", "needs GATEWAY_COOKIE_KEY: spooled events are authenticated with a key derived from it, "+
			"and with a random key a restarted gateway could not read what the last one spooled")
	}
	if keys := l.keys("GATEWAY_DEVICE_KEY"); len(keys) > 1 {
		l.fail("GATEWAY_DEVICE_KEY", "takes one key, got %d (device ids cannot be rotated: a new key changes every device id)", len(keys))
	} else if len(keys) == 1 {
		c.DeviceKey = keys[0]
	}
	c.CookieDomain = l.cookieDomain("GATEWAY_COOKIE_DOMAIN", c.PublicURL)
	c.ProvidersFile = l.get("GATEWAY_PROVIDERS_FILE")
	if c.ProvidersFile != "" {
		c.Providers = l.providersFile("GATEWAY_PROVIDERS_FILE", c.ProvidersFile)
	} else {
		c.Providers = l.envProvider()
	}
	l.offLoopback(c)
	if len(l.errs) > 0 {
		return nil, fmt.Errorf("config: %w", errors.Join(l.errs...))
	}
	return c, nil
}

// offLoopback refuses what is fine for trying the gateway on one machine
// but not once it or its providers are reached over a network: plain HTTP
// (cookies, codes, tokens and the provider's signing keys would travel
// unencrypted, so anyone on the path could sign in as anyone) and a random
// cookie key (sessions that end at every restart and differ between
// replicas, and device ids that change at every restart: a new-device
// email to everyone). Each has a setting that allows it, named for what it
// gives up.
func (l *loader) offLoopback(c *Config) {
	allowHTTP := l.boolean("GATEWAY_INSECURE_ALLOW_HTTP", false)
	allowRandomKey := l.boolean("GATEWAY_ALLOW_RANDOM_COOKIE_KEY", false)
	plainHTTP := func(name, field, v string) {
		if allowHTTP || !isPlainHTTPOffLoopback(v) {
			return
		}
		l.fail(name, "%s%s is plain HTTP on a host that is not loopback: cookies, codes and tokens would cross the network unencrypted; "+
			"use its https:// URL, or set GATEWAY_INSECURE_ALLOW_HTTP=true on a private test network", field, v)
	}
	plainHTTP("GATEWAY_PUBLIC_URL", "", c.PublicURL.String())
	for _, p := range c.Providers {
		if c.ProvidersFile == "" {
			plainHTTP("OIDC_ISSUER", "", p.Issuer)
			continue
		}
		where := fmt.Sprintf("%s: provider %q: ", c.ProvidersFile, p.ID)
		plainHTTP("GATEWAY_PROVIDERS_FILE", where+"issuer ", p.Issuer)
		plainHTTP("GATEWAY_PROVIDERS_FILE", where+"github_api_url ", p.GitHubAPIURL)
		plainHTTP("GATEWAY_PROVIDERS_FILE", where+"github_auth_url ", p.GitHubAuthURL)
		plainHTTP("GATEWAY_PROVIDERS_FILE", where+"github_token_url ", p.GitHubTokenURL)
	}
	if !l.cookieKeyGiven(c) && !allowRandomKey && !isLoopbackHost(c.PublicURL.Hostname()) {
		l.fail("GATEWAY_COOKIE_KEY", "not set, and GATEWAY_PUBLIC_URL is not on loopback: a random key at each start would end "+
			"sessions at every restart, differ between replicas, and change every device id (a new-device email to everyone after "+
			"each restart). Set the same key on every replica (make one with: openssl rand -base64 32), or set "+
			"GATEWAY_ALLOW_RANDOM_COOKIE_KEY=true to accept all that")
	}
}

// cookieKeyGiven reports whether a cookie key is set, in the variable or
// in its file (one that failed to load is reported on its own).
func (l *loader) cookieKeyGiven(c *Config) bool {
	return len(c.CookieKeys) > 0 || l.get("GATEWAY_COOKIE_KEY_FILE") != ""
}

// isPlainHTTPOffLoopback reports whether v is an http:// URL whose host is
// not loopback.
func isPlainHTTPOffLoopback(v string) bool {
	u, err := url.Parse(v)
	return err == nil && u.Scheme == "http" && !isLoopbackHost(u.Hostname())
}

// isLoopbackHost reports whether host names this machine: localhost and
// *.localhost (RFC 6761, and so browsers treat them), 127.0.0.0/8 and ::1.
func isLoopbackHost(host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// oidcVariables configure the single provider when there is no providers
// file.
var oidcVariables = []string{
	"OIDC_ISSUER", "OIDC_CLIENT_ID", "OIDC_CLIENT_SECRET", "OIDC_CLIENT_SECRET_FILE", "OIDC_SCOPES", "OIDC_PROVIDER_ID",
	"OIDC_PROVIDER_NAME", "OIDC_TOKEN_AUTH_METHOD",
}

// envProvider is the one OIDC provider the OIDC_* variables describe.
func (l *loader) envProvider() []Provider {
	p := Provider{
		ID:           l.providerID("OIDC_PROVIDER_ID", "oidc"),
		Type:         TypeOIDC,
		Issuer:       l.issuer("OIDC_ISSUER"),
		ClientID:     l.required("OIDC_CLIENT_ID"),
		ClientSecret: l.secret("OIDC_CLIENT_SECRET"),
		Scopes:       splitScopes(l.get("OIDC_SCOPES")),
	}
	method, ok := tokenAuthMethod(l.get("OIDC_TOKEN_AUTH_METHOD"))
	switch {
	case !ok:
		l.fail("OIDC_TOKEN_AUTH_METHOD", "%q is not one of %s, %s, %s", method, TokenAuthAuto, TokenAuthBasic, TokenAuthPost)
	case method != TokenAuthAuto && p.ClientSecret == "":
		l.fail("OIDC_TOKEN_AUTH_METHOD", "%s needs OIDC_CLIENT_SECRET (or OIDC_CLIENT_SECRET_FILE)", method)
	}
	p.TokenAuthMethod = method
	p.Name = l.get("OIDC_PROVIDER_NAME")
	if len(p.Name) > 64 {
		l.fail("OIDC_PROVIDER_NAME", "longer than 64 characters")
	}
	return []Provider{p.WithDefaults()}
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

// secret reads a secret by the rules of secret.Lookup: NAME_FILE's
// content if NAME_FILE is set, else NAME.
func (l *loader) secret(name string) string {
	v, file, err := secret.Lookup(l.getenv, name)
	switch {
	case errors.Is(err, secret.ErrEmpty):
		l.fail(name+"_FILE", "%s is empty", file)
	case err != nil:
		l.fail(name+"_FILE", "cannot read secret file: %v", err)
	}
	return v
}

// getenv is lookup as os.Getenv.
func (l *loader) getenv(name string) string {
	v, _ := l.lookup(name)
	return v
}

func (l *loader) required(name string) string {
	v := l.get(name)
	if v == "" {
		l.fail(name, "required but not set (or describe the providers in GATEWAY_PROVIDERS_FILE)")
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
	if v != "" && !isHTTPURL(v) {
		l.fail(name, "%q is not an http(s) URL", v)
	}
	return v
}

// isHTTPURL reports whether v is an absolute http(s) URL with a host.
func isHTTPURL(v string) bool {
	u, err := url.Parse(v)
	return err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != "" && u.User == nil
}

// hostOf returns the host of an http(s) URL, or the whole string when it
// has none.
func hostOf(v string) string {
	if u, err := url.Parse(v); err == nil && u.Host != "" {
		return u.Host
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

// keys parses a comma-separated list of base64 (standard or URL alphabet,
// padded or not) 32-byte keys.
func (l *loader) keys(name string) [][]byte {
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

// splitScopes splits v on spaces and commas.
func splitScopes(v string) []string {
	return strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
}

// withScope returns scopes with first in front and every scope once.
func withScope(first string, scopes []string) []string {
	out := []string{first}
	seen := map[string]bool{first: true}
	for _, s := range scopes {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func (l *loader) providerID(name, def string) string {
	v := l.get(name)
	if v == "" {
		return def
	}
	if err := checkProviderID(v); err != nil {
		l.fail(name, "%v", err)
	}
	return v
}

func checkProviderID(id string) error {
	switch {
	case !providerIDPattern.MatchString(id):
		return fmt.Errorf("%q must be 1-32 characters of a-z, 0-9, '-' and '_', starting with a letter or digit", id)
	case id == UnknownProvider:
		return fmt.Errorf("%q is reserved for requests no provider can be named for", id)
	}
	return nil
}

// hostPattern is a lowercase hostname or bracketed IPv6 address with an
// optional port.
var hostPattern = regexp.MustCompile(`^(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]*[a-z0-9])?)(:[0-9]{1,5})?$`)

// hosts parses a comma-separated list of hosts, lowercased.
func (l *loader) hosts(name string) []string {
	var out []string
	for _, h := range strings.Split(l.get(name), ",") {
		h = strings.ToLower(strings.TrimSpace(h))
		if h == "" {
			continue
		}
		if !hostPattern.MatchString(h) {
			l.fail(name, "%q is not a hostname with an optional port, such as app.example.com or app.example.com:8443 (no scheme, path or wildcard)", h)
			continue
		}
		out = append(out, h)
	}
	return out
}

// rate parses "N/s", "N/m", "N/h" or a bare N (per second).
func (l *loader) rate(name string, def float64) float64 {
	v := l.get(name)
	if v == "" {
		return def
	}
	num, unit, _ := strings.Cut(v, "/")
	per := map[string]float64{"": 1, "s": 1, "m": 60, "h": 3600}[unit]
	n, err := strconv.ParseFloat(num, 64)
	if err != nil || per == 0 || !(n > 0 && n <= 1e6) { // NaN too
		l.fail(name, "%q must be a positive rate such as 10/s, 30/m or 600/h", v)
		return def
	}
	return n / per
}

// prefixes parses a comma-separated list of IP addresses and CIDR prefixes.
func (l *loader) prefixes(name string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range strings.Split(l.get(name), ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			l.fail(name, "%q is not an IP address or CIDR prefix such as 10.0.0.0/8", s)
			continue
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out
}

// cookieDomain parses a cookie Domain that must cover the public URL's host.
func (l *loader) cookieDomain(name string, public *url.URL) string {
	v := strings.TrimPrefix(strings.ToLower(l.get(name)), ".")
	if v == "" {
		return ""
	}
	host := strings.ToLower(public.Hostname())
	switch {
	case !hostPattern.MatchString(v) || strings.Contains(v, ":") || !strings.Contains(v, "."):
		l.fail(name, "%q must be a domain name such as example.com", v)
	case net.ParseIP(host) != nil:
		l.fail(name, "cannot be used when GATEWAY_PUBLIC_URL names an IP address")
	case host != v && !strings.HasSuffix(host, "."+v):
		l.fail(name, "%q does not contain the host of GATEWAY_PUBLIC_URL (%s), so the browser would refuse the cookie", v, host)
	}
	return v
}

// replicas parses a stream replica count (see replicas.Parse).
func (l *loader) replicas(name string) int {
	v := l.get(name)
	n, err := replicas.Parse(v)
	if err != nil {
		l.fail(name, "%q %v", strings.ToLower(v), err)
	}
	return n
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

func (l *loader) durationRange(name string, def, lo, hi time.Duration) time.Duration {
	v := l.get(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < lo || d > hi {
		l.fail(name, "%q must be a duration from %s to %s, such as 12h or 90m", v, lo, hi)
		return def
	}
	return d
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

// path returns the cleaned path in name, or "" when unset.
func (l *loader) path(name string) string {
	if v := l.get(name); v != "" {
		return filepath.Clean(v)
	}
	return ""
}

func (l *loader) boolean(name string, def bool) bool {
	v := l.get(name)
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		l.fail(name, "%q must be true or false", v)
		return def
	}
	return b
}

// traceExport reads the OpenTelemetry variables that decide whether spans
// are exported (see telemetry.ExportFromEnv).
func (l *loader) traceExport() bool {
	return telemetry.ExportFromEnv(l.getenv, func(name, value string, err error) {
		if value == "" {
			l.fail(name, "%v", err)
			return
		}
		l.fail(name, "%q %v", value, err)
	})
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
