package config_test

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/config"
)

// TestOffLoopbackTheDefaultsMustBeSafe: what is fine for trying the gateway
// on one machine (plain HTTP, a random cookie key) is a start-up error
// naming the fix once the gateway or its provider is on another host,
// unless an explicit setting allows it.
func TestOffLoopbackTheDefaultsMustBeSafe(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32))
	providersFile := func(t *testing.T, issuer string) string {
		p := filepath.Join(t.TempDir(), "providers.yaml")
		yaml := "providers:\n  - id: corp\n    type: oidc\n    issuer: " + issuer + "\n    client_id: doorbell\n" +
			"  - id: ghe\n    type: github\n    client_id: gh\n    client_secret: s\n    github_api_url: http://git.corp.example/api/v3\n"
		if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		env  func(t *testing.T) map[string]string
		// wantIn are the pieces the error must hold; none means it loads.
		wantIn []string
	}{
		{"everything on loopback, no key: fine", func(*testing.T) map[string]string {
			return map[string]string{"OIDC_ISSUER": "http://127.0.0.1:5556/dex", "OIDC_CLIENT_ID": "d",
				"GATEWAY_PUBLIC_URL": "http://localhost:8080"}
		}, nil},
		{"loopback names: ::1, 127.0.0.2, *.localhost", func(*testing.T) map[string]string {
			return map[string]string{"OIDC_ISSUER": "http://idp.localhost:5556", "OIDC_CLIENT_ID": "d",
				"GATEWAY_PUBLIC_URL": "http://[::1]:8080"}
		}, nil},
		{"https off loopback with a key: fine", func(*testing.T) map[string]string {
			return with(map[string]string{"GATEWAY_PUBLIC_URL": "https://login.example.com", "GATEWAY_COOKIE_KEY": key})
		}, nil},
		{"public URL over http off loopback", func(*testing.T) map[string]string {
			return with(map[string]string{"GATEWAY_PUBLIC_URL": "http://login.example.com", "GATEWAY_COOKIE_KEY": key})
		}, []string{"GATEWAY_PUBLIC_URL", "plain HTTP", "https://", "GATEWAY_INSECURE_ALLOW_HTTP=true"}},
		{"issuer over http off loopback", func(*testing.T) map[string]string {
			return with(map[string]string{"OIDC_ISSUER": "http://dex:5556/dex"})
		}, []string{"OIDC_ISSUER", "plain HTTP", "GATEWAY_INSECURE_ALLOW_HTTP=true"}},
		{"providers file: issuer and GitHub API over http off loopback", func(t *testing.T) map[string]string {
			return map[string]string{"GATEWAY_PROVIDERS_FILE": providersFile(t, "http://sso.corp.example")}
		}, []string{`provider "corp"`, "issuer", `provider "ghe"`, "github_api_url", "plain HTTP", "GATEWAY_INSECURE_ALLOW_HTTP=true"}},
		{"no cookie key off loopback", func(*testing.T) map[string]string {
			return with(map[string]string{"GATEWAY_PUBLIC_URL": "https://login.example.com"})
		}, []string{"GATEWAY_COOKIE_KEY", "not set", "replicas", "device", "openssl rand -base64 32", "GATEWAY_ALLOW_RANDOM_COOKIE_KEY=true"}},
		{"allowed: http and a random key off loopback, when said so", func(t *testing.T) map[string]string {
			return map[string]string{
				"GATEWAY_PUBLIC_URL": "http://login.test", "GATEWAY_PROVIDERS_FILE": providersFile(t, "http://sso.corp.example"),
				"GATEWAY_INSECURE_ALLOW_HTTP": "true", "GATEWAY_ALLOW_RANDOM_COOKIE_KEY": "true",
			}
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Load(env(tt.env(t)))
			if len(tt.wantIn) == 0 {
				if err != nil {
					t.Fatalf("Load = %v, want it to load", err)
				}
				if c == nil {
					t.Fatal("no config")
				}
				return
			}
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			for _, w := range tt.wantIn {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}
