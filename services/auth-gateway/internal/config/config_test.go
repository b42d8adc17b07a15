package config_test

import (
	"bytes"
	"encoding/base64"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/config"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

// minimal is the smallest valid environment.
func minimal() map[string]string {
	return map[string]string{
		"OIDC_ISSUER":    "https://idp.example.com",
		"OIDC_CLIENT_ID": "doorbell",
	}
}

func with(extra map[string]string) map[string]string {
	m := minimal()
	for k, v := range extra {
		m[k] = v
	}
	return m
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadDefaultsWorkOnLoopback(t *testing.T) {
	c, err := config.Load(env(minimal()))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"addr", c.Addr, "127.0.0.1:8080"},
		{"public url", c.PublicURL.String(), "http://127.0.0.1:8080"},
		{"secure cookies", c.SecureCookies(), false},
		{"admin addr", c.AdminAddr, "127.0.0.1:9101"},
		{"cookie keys", len(c.CookieKeys), 0},
		{"providers", len(c.Providers), 1},
		{"provider type", c.Providers[0].Type, "oidc"},
		{"provider issuer", c.Providers[0].Issuer, "https://idp.example.com"},
		{"provider name", c.Providers[0].Name, "idp.example.com"},
		{"client id", c.Providers[0].ClientID, "doorbell"},
		{"client secret", c.Providers[0].ClientSecret, ""},
		{"scopes", c.Providers[0].Scopes, []string{"openid", "email", "profile"}},
		{"provider id", c.Providers[0].ID, "oidc"},
		{"token auth method", c.Providers[0].TokenAuthMethod, "auto"},
		{"allowed domains", len(c.Providers[0].AllowedEmailDomains), 0},
		{"device key", c.DeviceKey, []byte(nil)},
		{"cookie domain", c.CookieDomain, ""},
		{"session ttl", c.SessionTTL, 12 * time.Hour},
		{"redirect hosts", len(c.RedirectHosts), 0},
		{"rate limit", c.RateLimit, 10.0},
		{"rate burst", c.RateBurst, 20},
		{"trusted proxies", len(c.TrustedProxies), 0},
		{"nats url", c.NATSURL, "nats://127.0.0.1:4222"},
		{"replicas (0 is auto)", c.StreamReplicas, 0},
		{"publish timeout", c.PublishTimeout, 5 * time.Second},
		{"log level", c.LogLevel, slog.LevelInfo},
		{"log format", c.LogFormat, "text"},
		{"log emails", c.LogEmails, false},
		{"spool dir", c.SpoolDir, ""},
		{"spool max events", c.SpoolMaxEvents, 100000},
		{"trace export", c.TraceExport, false},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

func TestLoadReadsValues(t *testing.T) {
	k1 := bytes.Repeat([]byte{0xfb}, 32) // encodes with + and / in std, - and _ in url
	k2 := bytes.Repeat([]byte{2}, 32)
	tests := []struct {
		name  string
		env   map[string]string
		check func(t *testing.T, c *config.Config)
	}{
		{
			name: "https public url turns on secure cookies and drops a trailing slash",
			env: with(map[string]string{"GATEWAY_PUBLIC_URL": "https://login.example.com/",
				"GATEWAY_COOKIE_KEY": base64.StdEncoding.EncodeToString(k2)}),
			check: func(t *testing.T, c *config.Config) {
				if !c.SecureCookies() || c.PublicURL.String() != "https://login.example.com" {
					t.Errorf("secure=%v public url=%s", c.SecureCookies(), c.PublicURL)
				}
			},
		},
		{
			name: "cookie keys accept std and url base64, padded or not, first seals",
			env: with(map[string]string{"GATEWAY_COOKIE_KEY": base64.StdEncoding.EncodeToString(k1) + " , " +
				base64.RawURLEncoding.EncodeToString(k2)}),
			check: func(t *testing.T, c *config.Config) {
				if len(c.CookieKeys) != 2 || !bytes.Equal(c.CookieKeys[0], k1) || !bytes.Equal(c.CookieKeys[1], k2) {
					t.Errorf("keys = %x", c.CookieKeys)
				}
			},
		},
		{
			name: "token auth method is read",
			env:  with(map[string]string{"OIDC_CLIENT_SECRET": "s", "OIDC_TOKEN_AUTH_METHOD": " client_secret_post "}),
			check: func(t *testing.T, c *config.Config) {
				if got := c.Providers[0].TokenAuthMethod; got != config.TokenAuthPost {
					t.Errorf("TokenAuthMethod = %q, want %q", got, config.TokenAuthPost)
				}
			},
		},
		{
			name: "url-alphabet key with padding",
			env:  with(map[string]string{"GATEWAY_COOKIE_KEY": base64.URLEncoding.EncodeToString(k1)}),
			check: func(t *testing.T, c *config.Config) {
				if len(c.CookieKeys) != 1 || !bytes.Equal(c.CookieKeys[0], k1) {
					t.Errorf("keys = %x", c.CookieKeys)
				}
			},
		},
		{
			name: "cookie key file wins over the variable",
			env: with(map[string]string{
				"GATEWAY_COOKIE_KEY":      base64.StdEncoding.EncodeToString(k1),
				"GATEWAY_COOKIE_KEY_FILE": writeFile(t, base64.StdEncoding.EncodeToString(k2)+"\n"),
			}),
			check: func(t *testing.T, c *config.Config) {
				if len(c.CookieKeys) != 1 || !bytes.Equal(c.CookieKeys[0], k2) {
					t.Errorf("keys = %x, want the file's key", c.CookieKeys)
				}
			},
		},
		{
			name: "client secret file wins and is trimmed",
			env: with(map[string]string{
				"OIDC_CLIENT_SECRET":      "from-env",
				"OIDC_CLIENT_SECRET_FILE": writeFile(t, "from-file\n"),
			}),
			check: func(t *testing.T, c *config.Config) {
				if c.Providers[0].ClientSecret != "from-file" {
					t.Errorf("secret = %q", c.Providers[0].ClientSecret)
				}
			},
		},
		{
			name: "nats url file",
			env:  with(map[string]string{"NATS_URL_FILE": writeFile(t, "nats://u:p@nats:4222")}),
			check: func(t *testing.T, c *config.Config) {
				if c.NATSURL != "nats://u:p@nats:4222" {
					t.Errorf("nats url = %q", c.NATSURL)
				}
			},
		},
		{
			name: "scopes split on commas and spaces, openid added once and first",
			env:  with(map[string]string{"OIDC_SCOPES": "email,profile  groups openid email"}),
			check: func(t *testing.T, c *config.Config) {
				want := []string{"openid", "email", "profile", "groups"}
				if !reflect.DeepEqual(c.Providers[0].Scopes, want) {
					t.Errorf("scopes = %v, want %v", c.Providers[0].Scopes, want)
				}
			},
		},
		{
			name: "numbers, durations and log settings",
			env: with(map[string]string{
				"NATS_STREAM_REPLICAS": "3", "GATEWAY_PUBLISH_TIMEOUT": "1500ms",
				"LOG_LEVEL": "debug", "LOG_FORMAT": "JSON", "OIDC_PROVIDER_ID": "dex", "OIDC_PROVIDER_NAME": "Company SSO",
			}),
			check: func(t *testing.T, c *config.Config) {
				if c.StreamReplicas != 3 || c.PublishTimeout != 1500*time.Millisecond ||
					c.LogLevel != slog.LevelDebug || c.LogFormat != "json" || c.Providers[0].ID != "dex" || c.Providers[0].Name != "Company SSO" {
					t.Errorf("got %+v", c)
				}
			},
		},
		{
			name: "replicas auto, in any case",
			env:  with(map[string]string{"NATS_STREAM_REPLICAS": "Auto"}),
			check: func(t *testing.T, c *config.Config) {
				if c.StreamReplicas != 0 {
					t.Errorf("replicas = %d, want 0 (auto)", c.StreamReplicas)
				}
			},
		},
		{
			name: "spool and email logging",
			env: with(map[string]string{
				"GATEWAY_SPOOL_DIR": "/var/lib/doorbell/spool/", "GATEWAY_SPOOL_MAX_EVENTS": "500", "GATEWAY_LOG_EMAILS": "true",
				"GATEWAY_COOKIE_KEY": base64.StdEncoding.EncodeToString(k2),
			}),
			check: func(t *testing.T, c *config.Config) {
				if c.SpoolDir != "/var/lib/doorbell/spool" || c.SpoolMaxEvents != 500 || !c.LogEmails {
					t.Errorf("spool dir %q, max %d, log emails %v", c.SpoolDir, c.SpoolMaxEvents, c.LogEmails)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Load(env(tt.env))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			tt.check(t, c)
		})
	}
}

// TestTraceExportFollowsTheStandardVariables: export is off unless the
// OpenTelemetry variables ask for it.
func TestTraceExportFollowsTheStandardVariables(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want bool
	}{
		{"nothing set", nil, false},
		{"exporter otlp alone (the exporter's default endpoint)", map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true},
		{"an endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, true},
		{"a traces endpoint", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector.example.com/v1/traces"}, true},
		{"exporter none wins over an endpoint", map[string]string{
			"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, false},
		{"sdk disabled wins over everything", map[string]string{
			"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, false},
		{"sdk explicitly enabled", map[string]string{
			"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "OTLP", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Load(env(with(tt.env)))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if c.TraceExport != tt.want {
				t.Errorf("TraceExport = %v, want %v", c.TraceExport, tt.want)
			}
		})
	}
}

func TestLoadRejectsBadValuesClearly(t *testing.T) {
	secretKey := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 16))
	tests := []struct {
		name string
		env  map[string]string
		// wantIn must all appear in the error.
		wantIn []string
		// notIn must not appear in the error (secrets).
		notIn []string
	}{
		{
			name:   "issuer and client id are required",
			env:    map[string]string{},
			wantIn: []string{"OIDC_ISSUER: required", "OIDC_CLIENT_ID: required"},
		},
		{
			name:   "issuer must be a URL",
			env:    with(map[string]string{"OIDC_ISSUER": "idp.example.com"}),
			wantIn: []string{"OIDC_ISSUER", "not an http(s) URL"},
		},
		{
			name:   "short cookie key, without echoing it",
			env:    with(map[string]string{"GATEWAY_COOKIE_KEY": secretKey}),
			wantIn: []string{"GATEWAY_COOKIE_KEY", "key 1 decodes to 16 bytes, want 32"},
			notIn:  []string{secretKey},
		},
		{
			name:   "second cookie key not base64",
			env:    with(map[string]string{"GATEWAY_COOKIE_KEY": base64.StdEncoding.EncodeToString(make([]byte, 32)) + ",not*base64"}),
			wantIn: []string{"GATEWAY_COOKIE_KEY", "key 2 is not base64"},
			notIn:  []string{"not*base64"},
		},
		{
			name:   "unknown token auth method",
			env:    with(map[string]string{"OIDC_CLIENT_SECRET": "s", "OIDC_TOKEN_AUTH_METHOD": "private_key_jwt"}),
			wantIn: []string{"OIDC_TOKEN_AUTH_METHOD", `"private_key_jwt" is not one of auto, client_secret_basic, client_secret_post`},
		},
		{
			name:   "token auth method without a secret",
			env:    with(map[string]string{"OIDC_TOKEN_AUTH_METHOD": "client_secret_basic"}),
			wantIn: []string{"OIDC_TOKEN_AUTH_METHOD", "client_secret_basic needs OIDC_CLIENT_SECRET"},
		},
		{
			name:   "empty secret file",
			env:    with(map[string]string{"OIDC_CLIENT_SECRET_FILE": "/dev/null"}),
			wantIn: []string{"OIDC_CLIENT_SECRET_FILE", "/dev/null is empty"},
		},
		{
			name:   "missing secret file",
			env:    with(map[string]string{"OIDC_CLIENT_SECRET_FILE": "/nonexistent/secret"}),
			wantIn: []string{"OIDC_CLIENT_SECRET_FILE", "cannot read"},
		},
		{
			name:   "public url with a path",
			env:    with(map[string]string{"GATEWAY_PUBLIC_URL": "https://example.com/gw"}),
			wantIn: []string{"GATEWAY_PUBLIC_URL", "no path"},
		},
		{
			name:   "public url without scheme",
			env:    with(map[string]string{"GATEWAY_PUBLIC_URL": "example.com"}),
			wantIn: []string{"GATEWAY_PUBLIC_URL", "http:// or https://"},
		},
		{
			name:   "addr without port",
			env:    with(map[string]string{"GATEWAY_ADDR": "localhost"}),
			wantIn: []string{"GATEWAY_ADDR", "not host:port"},
		},
		{
			name:   "replicas out of range",
			env:    with(map[string]string{"NATS_STREAM_REPLICAS": "7"}),
			wantIn: []string{"NATS_STREAM_REPLICAS", "auto or a whole number from 1 to 5"},
		},
		{
			name:   "replicas neither auto nor a number",
			env:    with(map[string]string{"NATS_STREAM_REPLICAS": "all"}),
			wantIn: []string{"NATS_STREAM_REPLICAS", `"all" must be auto`},
		},
		{
			name:   "publish timeout without unit",
			env:    with(map[string]string{"GATEWAY_PUBLISH_TIMEOUT": "5"}),
			wantIn: []string{"GATEWAY_PUBLISH_TIMEOUT", "positive duration"},
		},
		{
			name:   "negative publish timeout",
			env:    with(map[string]string{"GATEWAY_PUBLISH_TIMEOUT": "-1s"}),
			wantIn: []string{"GATEWAY_PUBLISH_TIMEOUT"},
		},
		{
			name:   "unknown log level and format",
			env:    with(map[string]string{"LOG_LEVEL": "loud", "LOG_FORMAT": "xml"}),
			wantIn: []string{"LOG_LEVEL", "LOG_FORMAT", "text, json"},
		},
		{
			name:   "provider id unusable as a label",
			env:    with(map[string]string{"OIDC_PROVIDER_ID": "My Provider"}),
			wantIn: []string{"OIDC_PROVIDER_ID"},
		},
		{
			name:   "spool bound out of range",
			env:    with(map[string]string{"GATEWAY_SPOOL_DIR": "/tmp/spool", "GATEWAY_SPOOL_MAX_EVENTS": "0"}),
			wantIn: []string{"GATEWAY_SPOOL_MAX_EVENTS", "from 1 to 10000000"},
		},
		{
			name:   "spool without a cookie key to authenticate its files",
			env:    with(map[string]string{"GATEWAY_SPOOL_DIR": "/var/lib/doorbell/spool"}),
			wantIn: []string{"GATEWAY_SPOOL_DIR", "needs GATEWAY_COOKIE_KEY"},
		},
		{
			name:   "spool bound without a spool",
			env:    with(map[string]string{"GATEWAY_SPOOL_MAX_EVENTS": "1000"}),
			wantIn: []string{"GATEWAY_SPOOL_MAX_EVENTS", "GATEWAY_SPOOL_DIR is not"},
		},
		{
			name:   "log emails not a boolean",
			env:    with(map[string]string{"GATEWAY_LOG_EMAILS": "sometimes"}),
			wantIn: []string{"GATEWAY_LOG_EMAILS", "true or false"},
		},
		{
			name:   "an exporter the gateway does not have",
			env:    with(map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}),
			wantIn: []string{"OTEL_TRACES_EXPORTER", "use otlp", "or none"},
		},
		{
			name:   "otlp over grpc",
			env:    with(map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}),
			wantIn: []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"},
		},
		{
			name:   "otlp endpoint that is not a URL, without echoing it",
			env:    with(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318?token=s3cret"}),
			wantIn: []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http(s) URL"},
			notIn:  []string{"s3cret"},
		},
		{
			name:   "sdk disabled not a boolean",
			env:    with(map[string]string{"OTEL_SDK_DISABLED": "yes please"}),
			wantIn: []string{"OTEL_SDK_DISABLED"},
		},
		{
			name:   "nats url garbage is reported without echoing it",
			env:    with(map[string]string{"NATS_URL": "nats://user:s3cret@[::1"}),
			wantIn: []string{"NATS_URL"},
			notIn:  []string{"s3cret"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Load(env(tt.env))
			if err == nil {
				t.Fatal("Load accepted bad configuration")
			}
			for _, s := range tt.wantIn {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			for _, s := range tt.notIn {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %q leaks %q", err, s)
				}
			}
		})
	}
}
