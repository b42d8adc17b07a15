package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/smtp"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// The test binary doubles as a fake auth-gateway, mail-worker and
// Prometheus: run with DEVSTACK_TEST_FAKE set, it behaves as one of them
// instead of running tests.
const (
	fakeEnv     = "DEVSTACK_TEST_FAKE"      // directory where a fake saves its environment
	fakeModeEnv = "DEVSTACK_TEST_FAKE_MODE" // "worker-exits", "gateway-ignores-sigterm" or "prometheus-exits"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(fakeEnv); dir != "" {
		if slices.ContainsFunc(os.Args[1:], func(a string) bool { return strings.HasPrefix(a, "--web.listen-address=") }) {
			os.Exit(fakePrometheus(dir, os.Args[1:]))
		}
		os.Exit(fakeService(dir))
	}
	os.Exit(m.Run())
}

// fakePrometheus saves its arguments, logs a routine record and a warning
// the way Prometheus does, serves /-/ready on its --web.listen-address and
// exits 0 on SIGTERM; in mode prometheus-exits it logs an error and exits 2
// instead of serving.
func fakePrometheus(dir string, args []string) int {
	b, _ := json.Marshal(args)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.json"), b, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Fprintln(os.Stderr, `ts=2026-01-02T03:04:05.000Z caller=main.go:1 level=info msg="fake routine record"`)
	fmt.Fprintln(os.Stderr, `ts=2026-01-02T03:04:05.000Z caller=main.go:2 level=warn msg="fake warning"`)
	if os.Getenv(fakeModeEnv) == "prometheus-exits" {
		fmt.Fprintln(os.Stderr, `ts=2026-01-02T03:04:05.000Z caller=main.go:3 level=error msg="fake error"`)
		return 2
	}
	var addr string
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--web.listen-address="); ok {
			addr = v
		}
	}
	terminated := make(chan os.Signal, 1)
	signal.Notify(terminated, syscall.SIGTERM)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/-/ready" {
			http.NotFound(w, r)
		}
	}))
	<-terminated
	fmt.Println("got SIGTERM")
	return 0
}

// fakeService saves its environment, serves /readyz and /metrics on its
// admin address, and exits 0 on SIGTERM, unless its mode says otherwise.
func fakeService(dir string) int {
	role, admin := "gateway", os.Getenv("GATEWAY_ADMIN_ADDR")
	if admin == "" {
		role, admin = "worker", os.Getenv("WORKER_ADMIN_ADDR")
	}
	env := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	b, _ := json.Marshal(env)
	if err := os.WriteFile(filepath.Join(dir, role+".json"), b, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mode := os.Getenv(fakeModeEnv)
	if mode == role+"-exits" {
		fmt.Println("giving up")
		return 3
	}
	terminated := make(chan os.Signal, 1)
	if mode == role+"-ignores-sigterm" {
		signal.Ignore(syscall.SIGTERM)
	} else {
		signal.Notify(terminated, syscall.SIGTERM)
	}
	ln, err := net.Listen("tcp", admin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/readyz":
		case "/metrics":
			fmt.Fprintf(w, "# TYPE doorbell_fake_up gauge\ndoorbell_fake_up{role=%q} 1\n", role)
		default:
			http.NotFound(w, r)
		}
	}))
	fmt.Println("ready")
	<-terminated
	fmt.Println("got SIGTERM")
	fmt.Fprint(os.Stderr, "unfinished line")
	return 0
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// freeAddrs returns n distinct loopback addresses free just now. All are
// held until the last is chosen: a port closed at once can be handed out
// again by the next pick (two parts of the stack on one port).
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs
}

// addrFlags are devstack's address flags.
var addrFlags = []string{"nats-addr", "idp-addr", "smtp-addr", "inbox-addr", "gateway-addr", "gateway-admin-addr", "worker-admin-addr", "prometheus-addr"}

// deployDir is the repository's deploy directory, as an absolute path.
func deployDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "deploy"))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// devstack is one run of run() with fake services (Prometheus too, unless
// extraArgs say otherwise) on free ports.
type devstack struct {
	t              *testing.T
	data, fakeDir  string
	deploy         string
	addr           map[string]string // flag name → address
	stdout, stderr *syncBuffer
	cancel         context.CancelFunc
	done           chan error // run's result, put back after reading
}

func startDevstack(t *testing.T, mode string, extraArgs ...string) *devstack {
	t.Helper()
	d := &devstack{
		t: t, data: filepath.Join(t.TempDir(), "data"), fakeDir: t.TempDir(), deploy: deployDir(t),
		addr:   map[string]string{},
		stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan error, 1),
	}
	t.Setenv(fakeEnv, d.fakeDir)
	t.Setenv(fakeModeEnv, mode)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"-gateway", self, "-worker", self, "-prometheus-bin", self, "-data", d.data, "-deploy", d.deploy}
	for i, addr := range freeAddrs(t, len(addrFlags)) {
		d.addr[addrFlags[i]] = addr
		args = append(args, "-"+addrFlags[i], addr)
	}
	args = append(args, extraArgs...)
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	go func() { d.done <- run(ctx, args, d.stdout, d.stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-d.done:
		case <-time.After(2 * time.Minute):
			t.Error("run did not return within 2 minutes of cancel")
		}
		if t.Failed() {
			t.Logf("stdout:\n%s\nstderr:\n%s", d.stdout, d.stderr)
		}
	})
	return d
}

// waitFor polls the output until it contains want, or run returns, or a
// generous deadline passes.
func (d *devstack) waitFor(buf *syncBuffer, want string) {
	d.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(buf.String(), want) {
		select {
		case err := <-d.done:
			d.done <- err
			d.t.Fatalf("run returned %v before printing %q", err, want)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("no %q in the output after a minute", want)
		}
	}
}

// stop cancels the run, as Ctrl-C does, and returns run's result.
func (d *devstack) stop() error {
	d.t.Helper()
	d.cancel()
	return d.wait()
}

// wait returns run's result once it returns.
func (d *devstack) wait() error {
	d.t.Helper()
	select {
	case err := <-d.done:
		d.done <- err
		return err
	case <-time.After(2 * time.Minute):
		d.t.Fatal("run did not return within 2 minutes")
		return nil
	}
}

// fakeRan reports whether the fake with role ran.
func (d *devstack) fakeRan(role string) bool {
	_, err := os.Stat(filepath.Join(d.fakeDir, role+".json"))
	return err == nil
}

func (d *devstack) env(role string) map[string]string {
	d.t.Helper()
	b, err := os.ReadFile(filepath.Join(d.fakeDir, role+".json"))
	if err != nil {
		d.t.Fatalf("%s environment: %v", role, err)
	}
	var env map[string]string
	if err := json.Unmarshal(b, &env); err != nil {
		d.t.Fatal(err)
	}
	return env
}

func (d *devstack) assertPortsFree() {
	d.t.Helper()
	for flag, addr := range d.addr {
		if err := checkFree(addr); err != nil {
			d.t.Errorf("after run returned, %s %s is still taken: %v", flag, addr, err)
		}
	}
}

func TestRunBringsUpTheStackAndStopsItOnCancel(t *testing.T) {
	t.Setenv("LOG_LEVEL", "debug")                     // passed through
	t.Setenv("NATS_URL", "nats://somewhere.else:4222") // wiring wins over it
	d := startDevstack(t, "")
	d.waitFor(d.stdout, "Doorbell is running.")
	// A fake answers /readyz a moment before it prints "ready", and its
	// output reaches d.stdout through a pipe and a copying goroutine: the
	// banner can come first.
	d.waitFor(d.stdout, "gateway | ready\n")
	d.waitFor(d.stdout, "worker  | ready\n")

	out := d.stdout.String()
	for _, want := range []string{
		"Sign in:    http://" + d.addr["gateway-addr"] + "/",
		"Inbox:      http://" + d.addr["inbox-addr"] + "/",
		"Metrics:    http://" + d.addr["gateway-admin-addr"] + "/metrics, http://" + d.addr["worker-admin-addr"] + "/metrics",
		"NATS:       nats://" + d.addr["nats-addr"],
		"Prometheus: http://" + d.addr["prometheus-addr"] + "/  (alerts: /alerts, targets: /targets)\n",
		"Dashboard:  " + dashboardURL(d.addr["prometheus-addr"], dashboardGraphs) + "\n",
		"Press Ctrl-C to stop.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q", want)
		}
	}

	gw, wk := d.env("gateway"), d.env("worker")
	key, err := os.ReadFile(filepath.Join(d.data, "cookie-key"))
	if err != nil {
		t.Fatal(err)
	}
	caFile, _ := filepath.Abs(filepath.Join(d.data, "inbox-ca.pem"))
	smtpHost, smtpPort, _ := net.SplitHostPort(d.addr["smtp-addr"])
	natsURL := "nats://" + d.addr["nats-addr"]
	for _, tt := range []struct{ role, name, want string }{
		{"gateway", "GATEWAY_ADDR", d.addr["gateway-addr"]},
		{"gateway", "GATEWAY_PUBLIC_URL", "http://" + d.addr["gateway-addr"]},
		{"gateway", "GATEWAY_ADMIN_ADDR", d.addr["gateway-admin-addr"]},
		{"gateway", "GATEWAY_COOKIE_KEY", strings.TrimSpace(string(key))},
		{"gateway", "OIDC_ISSUER", "http://" + d.addr["idp-addr"] + "/oidc"},
		{"gateway", "OIDC_CLIENT_ID", "doorbell"},
		{"gateway", "OIDC_CLIENT_SECRET", "doorbell-dev-secret"},
		{"gateway", "OIDC_PROVIDER_ID", "dev"},
		{"gateway", "OIDC_PROVIDER_NAME", "the dev identity provider"},
		{"gateway", "NATS_URL", natsURL},
		{"gateway", "LOG_LEVEL", "debug"},
		{"worker", "WORKER_ADMIN_ADDR", d.addr["worker-admin-addr"]},
		{"worker", "NATS_URL", natsURL},
		{"worker", "SMTP_HOST", smtpHost},
		{"worker", "SMTP_PORT", smtpPort},
		{"worker", "SMTP_TLS", "mandatory"},
		{"worker", "SMTP_CA_FILE", caFile},
		{"worker", "MAIL_FROM", "Doorbell <doorbell@localhost>"},
		{"worker", "LOG_LEVEL", "debug"},
	} {
		env := gw
		if tt.role == "worker" {
			env = wk
		}
		if got := env[tt.name]; got != tt.want {
			t.Errorf("%s %s = %q, want %q", tt.role, tt.name, got, tt.want)
		}
	}
	if raw, err := base64.StdEncoding.DecodeString(gw["GATEWAY_COOKIE_KEY"]); err != nil || len(raw) != 32 {
		t.Errorf("GATEWAY_COOKIE_KEY is not 32 bytes of base64: %v", err)
	}
	if _, ok := wk["GATEWAY_COOKIE_KEY"]; ok {
		t.Error("the worker was given the gateway's cookie key")
	}

	// The parts the services were pointed at work as configured.
	nc, err := nats.Connect(natsURL, nats.Timeout(10*time.Second))
	if err != nil {
		t.Fatalf("connect to NATS: %v", err)
	}
	js, err := nc.JetStream()
	if err == nil {
		_, err = js.AccountInfo()
	}
	nc.Close()
	if err != nil {
		t.Errorf("JetStream: %v", err)
	}
	for _, url := range []string{gw["OIDC_ISSUER"] + "/.well-known/openid-configuration", "http://" + d.addr["inbox-addr"] + "/"} {
		resp, err := http.Get(url)
		if err != nil {
			t.Errorf("GET %s: %v", url, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: status %d", url, resp.StatusCode)
		}
	}
	if err := sendOverSTARTTLS(wk["SMTP_HOST"], wk["SMTP_PORT"], wk["SMTP_CA_FILE"]); err != nil {
		t.Errorf("mail over mandatory STARTTLS trusting SMTP_CA_FILE: %v", err)
	}

	// Prometheus was started with its own corner of the data directory and
	// a configuration that scrapes the services' admin addresses.
	var promArgs []string
	b, err := os.ReadFile(filepath.Join(d.fakeDir, "prometheus.json"))
	if err == nil {
		err = json.Unmarshal(b, &promArgs)
	}
	if err != nil {
		t.Fatalf("Prometheus's arguments: %v", err)
	}
	promDir, _ := filepath.Abs(filepath.Join(d.data, "prometheus"))
	wantArgs := []string{
		"--config.file=" + promDir + "/prometheus.yml",
		"--web.listen-address=" + d.addr["prometheus-addr"],
		"--storage.tsdb.path=" + promDir + "/data",
		"--storage.tsdb.retention.time=2d",
	}
	if !slices.Equal(promArgs, wantArgs) {
		t.Errorf("Prometheus ran with\n%q\nwant\n%q", promArgs, wantArgs)
	}
	var promConf generatedConfig
	decodeYAMLFile(t, filepath.Join(promDir, "prometheus.yml"), &promConf)
	if got, want := promConf.targets(), map[string][]string{
		"auth-gateway": {d.addr["gateway-admin-addr"]},
		"mail-worker":  {d.addr["worker-admin-addr"]},
	}; !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("Prometheus scrapes %v, want %v", got, want)
	}
	// LOG_LEVEL=debug shows Prometheus's routine log records too. The fake
	// writes it before it serves /-/ready, but it is copied to d.stderr by
	// another goroutine: wait for it (it fails the test if it never comes).
	d.waitFor(d.stderr, `prom    | ts=2026-01-02T03:04:05.000Z caller=main.go:1 level=info msg="fake routine record"`+"\n")

	if err := d.stop(); err != nil {
		t.Fatalf("run after cancel = %v, want nil", err)
	}
	for _, want := range []string{"gateway | got SIGTERM\n", "worker  | got SIGTERM\n", "prom    | got SIGTERM\n"} {
		if !strings.Contains(d.stdout.String(), want) {
			t.Errorf("stdout lacks %q: the service was not asked to stop", want)
		}
	}
	if !strings.Contains(d.stderr.String(), "gateway | unfinished line\n") {
		t.Error("a service's last unfinished line was lost")
	}
	d.assertPortsFree()
}

func sendOverSTARTTLS(host, port, caFile string) error {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("%s holds no certificate", caFile)
	}
	c, err := smtp.Dial(net.JoinHostPort(host, port))
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.StartTLS(&tls.Config{RootCAs: pool, ServerName: host}); err != nil {
		return err
	}
	if err := c.Mail("doorbell@localhost"); err != nil {
		return err
	}
	if err := c.Rcpt("ada@example.test"); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte("Subject: hi\r\n\r\nhello\r\n")); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

func TestRunStopsEverythingWhenAServiceExits(t *testing.T) {
	d := startDevstack(t, "worker-exits")
	err := d.wait()
	if err == nil || !strings.Contains(err.Error(), "worker exited unexpectedly (exit status 3)") {
		t.Fatalf("run = %v, want it to say the worker exited with status 3", err)
	}
	if !strings.Contains(d.stdout.String(), "worker  | giving up\n") {
		t.Error("the worker's output was not shown")
	}
	// The gateway, running all along, was stopped and waited for.
	if !strings.Contains(d.stderr.String(), "msg=stopped service=gateway") {
		t.Error("stderr does not report the gateway stopped")
	}
	d.assertPortsFree()
}

func TestRunKillsAServiceThatIgnoresSIGTERM(t *testing.T) {
	d := startDevstack(t, "gateway-ignores-sigterm", "-stop-timeout", "1s")
	d.waitFor(d.stdout, "Doorbell is running.")
	if err := d.stop(); err != nil {
		t.Fatalf("run after cancel = %v, want nil", err)
	}
	if !strings.Contains(d.stderr.String(), `service=gateway status="signal: killed"`) {
		t.Errorf("stderr does not report the gateway was killed")
	}
	d.assertPortsFree()
}

func TestRunRefusesToStart(t *testing.T) {
	dir := t.TempDir()
	notExecutable := filepath.Join(dir, "not-executable")
	if err := os.WriteFile(notExecutable, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free := func() []string {
		var args []string
		for i, addr := range freeAddrs(t, len(addrFlags)) {
			args = append(args, "-"+addrFlags[i], addr)
		}
		return args
	}

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"without the gateway binary", []string{"-gateway", filepath.Join(dir, "missing"), "-worker", self},
			"auth-gateway binary " + filepath.Join(dir, "missing") + ": not found; build it with `make build` or pass -gateway PATH"},
		{"with a worker binary that cannot run", []string{"-gateway", self, "-worker", notExecutable},
			"mail-worker binary " + notExecutable + ": is not executable"},
		{"when a port is taken", []string{"-gateway", self, "-worker", self, "-idp-addr", taken.Addr().String()},
			"dev identity provider address " + taken.Addr().String() + ": cannot listen: bind: address already in use"},
		{"with a stray argument", []string{"extra"}, "unexpected arguments"},
		{"with an unknown flag", []string{"-nope"}, "flag provided but not defined: -nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			args := append(append(free(), "-data", data), tt.args...)
			var stdout, stderr syncBuffer
			err := run(t.Context(), args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("run = %v, want an error saying %q", err, tt.want)
			}
			if _, err := os.Stat(data); err == nil {
				t.Error("the data directory was created although nothing started")
			}
		})
	}
}

func TestCookieKey(t *testing.T) {
	t.Run("is made once and then reused", func(t *testing.T) {
		dir := t.TempDir()
		first, err := cookieKey(dir)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := base64.StdEncoding.DecodeString(first)
		if err != nil || len(raw) != 32 {
			t.Fatalf("key %q is not 32 bytes of base64", first)
		}
		info, err := os.Stat(filepath.Join(dir, "cookie-key"))
		if err != nil || info.Mode().Perm() != 0o600 {
			t.Fatalf("key file: %v, mode %v; want 0600", err, info.Mode())
		}
		second, err := cookieKey(dir)
		if err != nil || second != first {
			t.Fatalf("second call = %q, %v; want the saved key %q", second, err, first)
		}
		if other, _ := cookieKey(t.TempDir()); other == first {
			t.Fatal("two data directories got the same key")
		}
	})
	t.Run("refuses a damaged key file", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "cookie-key"), []byte("c2hvcnQ=\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := cookieKey(dir); err == nil || !strings.Contains(err.Error(), "delete it to make a new key") {
			t.Fatalf("cookieKey = %v, want an error saying what to do", err)
		}
	})
}

func TestLineWriter(t *testing.T) {
	long := strings.Repeat("x", maxLine+10)
	tests := []struct {
		name   string
		writes []string
		flush  bool
		want   string
	}{
		{"prefixes each line", []string{"one\ntwo\n"}, false, "gateway | one\ngateway | two\n"},
		{"joins a line written in pieces", []string{"o", "ne", "\ntw", "o\n"}, false, "gateway | one\ngateway | two\n"},
		{"holds an unfinished line until flushed", []string{"one\ntw"}, false, "gateway | one\n"},
		{"writes an unfinished line on flush", []string{"one\ntw"}, true, "gateway | one\ngateway | tw\n"},
		{"splits an overlong unfinished line", []string{long, "\n"}, false,
			"gateway | " + long[:maxLine] + "\ngateway | " + long[maxLine:] + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			w := newLineWriter(&out, "gateway")
			for _, s := range tt.writes {
				if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			if tt.flush {
				w.Flush()
			}
			if got := out.String(); got != tt.want {
				if len(got) > 200 || len(tt.want) > 200 {
					t.Errorf("output of %d bytes with %d lines, want %d bytes with %d lines",
						len(got), strings.Count(got, "\n"), len(tt.want), strings.Count(tt.want, "\n"))
				} else {
					t.Errorf("output = %q, want %q", got, tt.want)
				}
			}
		})
	}
	var out bytes.Buffer
	newLineWriter(&out, "worker").Write([]byte("x\n"))
	if out.String() != "worker  | x\n" {
		t.Errorf("worker prefix: %q", out.String())
	}
}
