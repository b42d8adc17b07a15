package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauth2-proxy/mockoidc"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/natstest"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestRunServesUntilCancelledThenStopsCleanly runs the real wiring against a
// real provider and NATS: it becomes ready, serves pages, and returns nil
// once its context is cancelled (as on SIGTERM).
func TestRunServesUntilCancelledThenStopsCleanly(t *testing.T) {
	idp, err := mockoidc.Run()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = idp.Shutdown() })
	ns := natstest.Run(t)
	addr, adminAddr := freeAddr(t), freeAddr(t)
	env := map[string]string{
		"GATEWAY_ADDR":       addr,
		"GATEWAY_ADMIN_ADDR": adminAddr,
		"GATEWAY_PUBLIC_URL": "http://" + addr,
		"GATEWAY_COOKIE_KEY": base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)),
		"OIDC_ISSUER":        idp.Issuer(),
		"OIDC_CLIENT_ID":     idp.ClientID,
		"OIDC_CLIENT_SECRET": idp.ClientSecret,
		"NATS_URL":           ns.ClientURL(),
	}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, logs)
	}()

	deadline, stop := context.WithTimeout(context.Background(), 60*time.Second)
	defer stop()
	client := &http.Client{Timeout: 10 * time.Second}
	for {
		if status, _ := fetch(client, "http://"+adminAddr+"/readyz"); status == http.StatusOK {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("run returned early: %v\n%s", err, logs)
		case <-deadline.Done():
			_, body := fetch(client, "http://"+adminAddr+"/readyz")
			t.Fatalf("never ready: %s\n%s", body, logs)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if status, body := fetch(client, "http://"+addr+"/"); status != http.StatusOK || !strings.Contains(body, "Sign in") {
		t.Errorf("GET / = %d %s", status, body)
	}
	if status, body := fetch(client, "http://"+adminAddr+"/metrics"); status != http.StatusOK ||
		!strings.Contains(body, `doorbell_gateway_logins_total{provider="oidc",result="success"} 0`) {
		t.Errorf("/metrics = %d, lacks the pre-initialised login series", status)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after cancel = %v", err)
		}
	case <-deadline.Done():
		t.Fatal("run did not stop after cancel")
	}
	if strings.Contains(logs.String(), "GATEWAY_COOKIE_KEY is not set") {
		t.Error("warned about a missing cookie key that was set")
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("still listening after shutdown")
	}
}

func TestRunStartsWithoutItsDependencies(t *testing.T) {
	addr, adminAddr := freeAddr(t), freeAddr(t)
	env := map[string]string{
		"GATEWAY_ADDR":       addr,
		"GATEWAY_ADMIN_ADDR": adminAddr,
		"OIDC_ISSUER":        "http://" + freeAddr(t) + "/nothing-here",
		"OIDC_CLIENT_ID":     "doorbell",
		"NATS_URL":           "nats://" + freeAddr(t),
	}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, logs)
	}()

	deadline, stop := context.WithTimeout(context.Background(), 60*time.Second)
	defer stop()
	client := &http.Client{Timeout: 10 * time.Second}
	var status int
	var body string
	for {
		if status, body = fetch(client, "http://"+adminAddr+"/readyz"); status != 0 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("run exited with its dependencies down: %v\n%s", err, logs)
		case <-deadline.Done():
			t.Fatalf("admin server never answered\n%s", logs)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if status != http.StatusServiceUnavailable || !strings.Contains(body, `"status":"unavailable"`) ||
		!strings.Contains(body, `"nats":`) || !strings.Contains(body, `"provider":`) {
		t.Errorf("/readyz = %d %s", status, body)
	}
	if s, _ := fetch(client, "http://"+adminAddr+"/healthz"); s != http.StatusOK {
		t.Errorf("/healthz = %d", s)
	}
	if s, b := fetch(client, "http://"+addr+"/login"); s != http.StatusServiceUnavailable ||
		!strings.Contains(b, "identity provider is unreachable") {
		t.Errorf("/login = %d %s", s, b)
	}
	if !strings.Contains(logs.String(), "GATEWAY_COOKIE_KEY is not set") {
		t.Error("no warning about the generated cookie key")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after cancel = %v", err)
		}
	case <-deadline.Done():
		t.Fatal("run did not stop after cancel")
	}
}

// TestRunWithAProvidersFile starts the real wiring with several providers
// from a file: one button each, metrics for each and for "unknown".
func TestRunWithAProvidersFile(t *testing.T) {
	idp, err := mockoidc.Run()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = idp.Shutdown() })
	ns := natstest.Run(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dex.secret"), []byte(idp.ClientSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "providers.yaml")
	yaml := "providers:\n" +
		"  - id: dex\n    type: oidc\n    name: Dex\n    issuer: " + idp.Issuer() + "\n" +
		"    client_id: " + idp.ClientID + "\n    client_secret_file: dex.secret\n" +
		"  - id: github\n    type: github\n    client_id: gh\n    client_secret: gh-secret\n" +
		"    github_api_url: http://" + freeAddr(t) + "\n"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, adminAddr := freeAddr(t), freeAddr(t)
	env := map[string]string{
		"GATEWAY_ADDR":           addr,
		"GATEWAY_ADMIN_ADDR":     adminAddr,
		"GATEWAY_PUBLIC_URL":     "http://" + addr,
		"GATEWAY_COOKIE_KEY":     base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)),
		"GATEWAY_PROVIDERS_FILE": file,
		"NATS_URL":               ns.ClientURL(),
	}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, logs)
	}()
	deadline, stop := context.WithTimeout(context.Background(), 60*time.Second)
	defer stop()
	client := &http.Client{Timeout: 10 * time.Second}
	for {
		if status, _ := fetch(client, "http://"+adminAddr+"/readyz"); status == http.StatusOK {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("run returned early: %v\n%s", err, logs)
		case <-deadline.Done():
			_, body := fetch(client, "http://"+adminAddr+"/readyz")
			t.Fatalf("never ready: %s\n%s", body, logs)
		case <-time.After(50 * time.Millisecond):
		}
	}
	_, home := fetch(client, "http://"+addr+"/")
	for _, want := range []string{`href="/login?provider=dex">Sign in with Dex`, `href="/login?provider=github">Sign in with GitHub`} {
		if !strings.Contains(home, want) {
			t.Errorf("start page lacks %s:\n%s", want, home)
		}
	}
	_, metrics := fetch(client, "http://"+adminAddr+"/metrics")
	for _, want := range []string{
		`doorbell_gateway_logins_total{provider="dex",result="success"} 0`,
		`doorbell_gateway_logins_total{provider="github",result="email_domain_not_allowed"} 0`,
		`doorbell_gateway_logins_total{provider="unknown",result="provider_unknown"} 0`,
		`doorbell_gateway_verify_requests_total{result="authorized"} 0`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if !strings.Contains(logs.String(), "providers=dex,github") {
		t.Errorf("start-up log does not list the providers:\n%s", logs)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after cancel = %v", err)
		}
	case <-deadline.Done():
		t.Fatal("run did not stop after cancel")
	}
}

func TestRunRejectsBadConfiguration(t *testing.T) {
	err := run(context.Background(), func(string) (string, bool) { return "", false }, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "OIDC_ISSUER") || !strings.Contains(err.Error(), "OIDC_CLIENT_ID") {
		t.Fatalf("run with no configuration = %v", err)
	}
}

// fetch returns the status and body, or 0 when the server did not answer.
func fetch(c *http.Client, url string) (int, string) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
