// Package launch starts the programs the benchmark measures (auth-gateway,
// mail-worker, oauth2-proxy) as a new user would: their real binaries,
// configured only through their documented environment variables or flags,
// on loopback. Each program's settings live here and nowhere else.
package launch

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/doorbell/doorbell/bench/internal/proc"
)

// readyTimeout bounds how long a program may take to become ready.
const readyTimeout = 30 * time.Second

// Service is a running program and where to reach it.
type Service struct {
	*proc.Process
	// URL is the public HTTP URL (gateway, oauth2-proxy); empty for the worker.
	URL string
	// MetricsURL serves Prometheus metrics, Go runtime metrics included.
	MetricsURL string
}

// baseEnv is what every program inherits: enough to run, nothing that
// could change what is measured (GOGC, GOMAXPROCS, OTEL_* and the like).
func baseEnv() []string {
	env := []string{"PATH=" + os.Getenv("PATH")}
	if home := os.Getenv("HOME"); home != "" {
		env = append(env, "HOME="+home)
	}
	return env
}

// WorkerSettings is the part of the mail-worker's configuration a phase
// chooses.
type WorkerSettings struct {
	NATSURL  string
	SMTPAddr string // host:port of the sink
	PoolSize int    // SMTP_POOL_SIZE
}

// workerEnv is the mail-worker's whole environment. The worker's variables
// are documented in docs/configuration.md; keep every one the benchmark sets
// here.
func workerEnv(s WorkerSettings, adminAddr string) []string {
	host, port, _ := net.SplitHostPort(s.SMTPAddr)
	return append(baseEnv(),
		"NATS_URL="+s.NATSURL,
		"SMTP_HOST="+host,
		"SMTP_PORT="+port,
		"SMTP_TLS=none",
		"SMTP_POOL_SIZE="+strconv.Itoa(s.PoolSize),
		"MAIL_FROM=Doorbell <doorbell@bench.localhost>",
		"WORKER_ADMIN_ADDR="+adminAddr,
		// SIGTERM waits for the replies a sink still owes (the slow sink
		// holds each email 2 s): a short final timeout keeps the end of a
		// phase short, and the shutdown budget must cover it.
		"SMTP_FINAL_TIMEOUT=5s",
		"WORKER_SHUTDOWN_TIMEOUT=15s",
		"LOG_LEVEL=warn",
	)
}

// StartWorker starts the mail-worker and waits for its /readyz. Its output
// goes to mail-worker.log in dir.
func StartWorker(ctx context.Context, bin, dir string, s WorkerSettings) (*Service, error) {
	admin, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	return start(ctx, dir, proc.Spec{Name: "mail-worker", Path: bin, Env: workerEnv(s, admin)},
		"", "http://"+admin+"/readyz", "http://"+admin+"/metrics")
}

// GatewaySettings is the part of the auth-gateway's configuration a phase
// chooses.
type GatewaySettings struct {
	NATSURL      string
	Issuer       string
	ClientID     string
	ClientSecret string
}

// gatewayEnv is the auth-gateway's whole environment (see the auth-gateway
// table in docs/configuration.md).
func gatewayEnv(s GatewaySettings, addr, adminAddr, cookieKey string) []string {
	return append(baseEnv(),
		"GATEWAY_ADDR="+addr,
		"GATEWAY_PUBLIC_URL=http://"+addr,
		"GATEWAY_ADMIN_ADDR="+adminAddr,
		"GATEWAY_COOKIE_KEY="+cookieKey,
		"OIDC_ISSUER="+s.Issuer,
		"OIDC_CLIENT_ID="+s.ClientID,
		"OIDC_CLIENT_SECRET="+s.ClientSecret,
		"NATS_URL="+s.NATSURL,
		// Every sign-in comes from 127.0.0.1: the per-client limit would
		// otherwise measure itself.
		"GATEWAY_RATE_LIMIT=1000000/s",
		"GATEWAY_RATE_BURST=10000",
		"LOG_LEVEL=warn",
	)
}

// StartGateway starts the auth-gateway and waits for its /readyz (NATS and
// the provider usable).
func StartGateway(ctx context.Context, bin, dir string, s GatewaySettings) (*Service, error) {
	addr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	admin, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	rand.Read(key)
	env := gatewayEnv(s, addr, admin, base64.StdEncoding.EncodeToString(key))
	return start(ctx, dir, proc.Spec{Name: "auth-gateway", Path: bin, Env: env},
		"http://"+addr, "http://"+admin+"/readyz", "http://"+admin+"/metrics")
}

// StartOAuth2Proxy starts oauth2-proxy as an OIDC relying party of the same
// provider, with the choices closest to the gateway's: PKCE S256, the nonce
// checked, one CSRF cookie per sign-in, no tokens kept in the session
// cookie, and no request or sign-in log lines (the gateway runs at warn).
// Its upstream is a static 202: nothing is proxied.
func StartOAuth2Proxy(ctx context.Context, bin, dir string, s GatewaySettings) (*Service, error) {
	addr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	metrics, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	args := []string{
		"--provider=oidc",
		"--oidc-issuer-url=" + s.Issuer,
		"--client-id=" + s.ClientID,
		"--client-secret=" + s.ClientSecret,
		"--http-address=" + addr,
		"--redirect-url=http://" + addr + "/oauth2/callback",
		"--metrics-address=" + metrics,
		"--cookie-secret=" + base64.RawURLEncoding.EncodeToString(secret),
		"--cookie-secure=false",
		"--cookie-csrf-per-request=true",
		"--session-cookie-minimal=true",
		"--code-challenge-method=S256",
		"--insecure-oidc-skip-nonce=false",
		"--email-domain=*",
		"--upstream=static://202",
		"--skip-provider-button=true",
		"--request-logging=false",
		"--auth-logging=false",
		"--standard-logging=false",
	}
	return start(ctx, dir, proc.Spec{Name: "oauth2-proxy", Path: bin, Args: args, Env: baseEnv()},
		"http://"+addr, "http://"+addr+"/ready", "http://"+metrics+"/metrics")
}

// start starts s with its output in dir/<name>.log and waits for readyURL.
func start(ctx context.Context, dir string, s proc.Spec, url, readyURL, metricsURL string) (*Service, error) {
	log, err := os.Create(filepath.Join(dir, s.Name+".log"))
	if err != nil {
		return nil, err
	}
	s.Log = log
	p, err := proc.Start(s)
	log.Close() // the child has its own descriptor
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	if err := p.WaitReady(rctx, readyURL); err != nil {
		p.Stop(time.Second)
		return nil, err
	}
	return &Service{Process: p, URL: url, MetricsURL: metricsURL}, nil
}

// FreeAddr returns a loopback address with a port that was free a moment
// ago, never one it returned before in this process (the kernel can hand
// a port just closed out again).
func FreeAddr() (string, error) {
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		addr := ln.Addr().String()
		ln.Close()
		if _, taken := handedOut.LoadOrStore(addr, true); !taken {
			return addr, nil
		}
	}
}

var handedOut sync.Map

// Mallocs reads go_memstats_mallocs_total (heap objects allocated so far)
// from s's metrics.
func (s *Service) Mallocs(ctx context.Context) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.MetricsURL, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	lines.Buffer(make([]byte, 64<<10), 1<<20)
	for lines.Scan() {
		if v, ok := strings.CutPrefix(lines.Text(), "go_memstats_mallocs_total "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("%s: no go_memstats_mallocs_total in %s", s.Name, s.MetricsURL)
}
