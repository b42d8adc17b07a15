// Command auth-gateway signs people in with OpenID Connect providers and
// GitHub and publishes a user.authenticated event to NATS JetStream for
// each sign-in with a verified email. Configuration comes from the
// environment and an optional providers file; see internal/config.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/doorbell/doorbell/platform/admin"
	"github.com/doorbell/doorbell/platform/telemetry"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/config"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/cookie"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/login"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/publish"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/spool"
)

// shutdownTimeout bounds finishing in-flight requests and draining NATS.
const shutdownTimeout = 10 * time.Second

// serviceName is the service.name of the gateway's spans unless
// OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names another.
const serviceName = "auth-gateway"

// startupCheckTimeout bounds the first provider discovery and stream check;
// failing them does not stop the gateway.
const startupCheckTimeout = 15 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.LookupEnv, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "auth-gateway:", err)
		os.Exit(1)
	}
}

// run wires the gateway together and serves until ctx is cancelled, then
// shuts down gracefully. It returns an error only for bad configuration,
// an address it cannot listen on, or a server that stopped by itself.
func run(ctx context.Context, lookup func(string) (string, bool), logOut io.Writer) error {
	cfg, err := config.Load(lookup)
	if err != nil {
		return err
	}
	g := &gateway{cfg: cfg, log: newLogger(cfg, logOut)}
	if err := g.openKeys(); err != nil {
		return err
	}
	stopTracing, err := g.openTelemetry(ctx)
	if err != nil {
		return err
	}
	// Last, so that the spans of the shutdown itself go out too.
	defer g.flushSpans(ctx, stopTracing)
	if err := g.openPublisher(); err != nil {
		return err
	}
	if err := g.openLogin(); err != nil {
		_ = g.pub.Close(ctx)
		return err
	}
	if err := g.listen(); err != nil {
		_ = g.pub.Close(ctx)
		return err
	}
	g.start(ctx)
	stopErr := g.wait(ctx)
	g.shutdown()
	return stopErr
}

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// gateway holds the parts that run opens one after the other and shuts
// down in turn. Its methods are run's steps, in the order run calls them;
// each relies on the fields the ones before it set.
type gateway struct {
	cfg *config.Config
	log *slog.Logger

	sealer         *cookie.Sealer
	deviceKey      []byte
	tracerProvider trace.TracerProvider
	reg            *prometheus.Registry
	pub            *publish.Publisher
	login          *login.Handler

	publicLn, adminLn   net.Listener
	publicSrv, adminSrv *http.Server
	// serveErr receives what each server's serve returns.
	serveErr chan error
	// stopDrain stops the spool drainer, which closes drained once done.
	stopDrain context.CancelFunc
	drained   chan struct{}
}

// openKeys builds the cookie sealer and the device-id key. Without cookie
// keys configured it makes a random one, and warns.
func (g *gateway) openKeys() error {
	keys := g.cfg.CookieKeys
	if len(keys) == 0 {
		k, err := cookie.RandomKey()
		if err != nil {
			return err
		}
		keys = [][]byte{k}
		g.log.Warn("GATEWAY_COOKIE_KEY is not set: using a random key, so sessions and sign-ins in progress end with this process and are not shared with other replicas")
	}
	sealer, err := cookie.New(keys)
	if err != nil {
		return err
	}
	g.sealer = sealer
	// Device ids feed "new device" emails, so they must survive key
	// rotation: a dedicated key, else one derived from the last (oldest)
	// cookie key, which adding a new key in front does not change.
	g.deviceKey = g.cfg.DeviceKey
	if g.deviceKey == nil {
		if g.deviceKey, err = sealer.DeriveKey("device id"); err != nil {
			return err
		}
	}
	return nil
}

// openTelemetry sets up tracing, and returns the function that flushes and
// stops it (see flushSpans).
func (g *gateway) openTelemetry(ctx context.Context) (stopTracing func(context.Context) error, err error) {
	g.tracerProvider, stopTracing, err = telemetry.Setup(ctx, serviceName, g.cfg.TraceExport)
	if err != nil {
		return nil, err
	}
	if g.cfg.TraceExport {
		otelLog := g.log.With("component", "telemetry")
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			otelLog.Warn("tracing: spans not exported", "error", err)
		}))
		g.log.Info("tracing on: spans are exported over OTLP/HTTP to the collector OTEL_EXPORTER_OTLP_* names")
	}
	return stopTracing, nil
}

// flushSpans flushes and stops tracing with stopTracing, within
// shutdownTimeout even once ctx is done.
func (g *gateway) flushSpans(ctx context.Context, stopTracing func(context.Context) error) {
	flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := stopTracing(flushCtx); err != nil {
		g.log.Warn("tracing: flushing spans at shutdown", "error", err)
	}
}

// openPublisher opens the spool, when configured, and connects the
// publisher to NATS, its metrics on a new registry.
func (g *gateway) openPublisher() error {
	sp, err := g.openSpool()
	if err != nil {
		return err
	}
	g.reg = admin.NewRegistry()
	g.pub, err = publish.Connect(publish.Config{
		URL:            g.cfg.NATSURL,
		Name:           "doorbell-auth-gateway",
		Source:         g.cfg.PublicURL.String(),
		Replicas:       g.cfg.StreamReplicas,
		Spool:          sp,
		Timeout:        g.cfg.PublishTimeout,
		TracerProvider: g.tracerProvider,
		Propagator:     propagation.TraceContext{},
	}, g.log.With("component", "publish"), publish.NewMetrics(g.reg))
	return err
}

// openSpool opens GATEWAY_SPOOL_DIR and says what it holds; it returns nil
// when no spool is configured.
func (g *gateway) openSpool() (*spool.Spool, error) {
	if g.cfg.SpoolDir == "" {
		return nil, nil
	}
	// Spooled files are authenticated with keys only the gateway holds,
	// rotating with the cookie keys.
	spoolKeys, err := g.sealer.DeriveKeys("spool")
	if err != nil {
		return nil, err
	}
	sp, err := spool.Open(g.cfg.SpoolDir, g.cfg.SpoolMaxEvents, spoolKeys, g.log.With("component", "spool"))
	if err != nil {
		return nil, fmt.Errorf("GATEWAY_SPOOL_DIR: %w", err)
	}
	depth, oldest := sp.Stats()
	attrs := []any{"dir", g.cfg.SpoolDir, "max_events", g.cfg.SpoolMaxEvents, "events", depth}
	if depth > 0 {
		attrs = append(attrs, "oldest_spooled_at", oldest.UTC().Format(time.RFC3339))
	}
	g.log.Info("spool on: events JetStream does not acknowledge in time are kept on disk and published later", attrs...)
	return sp, nil
}

// openLogin builds the login handler that serves the public endpoints.
func (g *gateway) openLogin() error {
	var err error
	g.login, err = login.New(login.Config{
		Providers:      g.cfg.Providers,
		PublicURL:      g.cfg.PublicURL,
		CookieDomain:   g.cfg.CookieDomain,
		PublishTimeout: g.cfg.PublishTimeout,
		SessionTTL:     g.cfg.SessionTTL,
		DeviceKey:      g.deviceKey,
		RedirectHosts:  g.cfg.RedirectHosts,
		RateLimit:      rate.Limit(g.cfg.RateLimit),
		RateBurst:      g.cfg.RateBurst,
		TrustedProxies: g.cfg.TrustedProxies,
		TracerProvider: g.tracerProvider,
		LogEmails:      g.cfg.LogEmails,
	}, g.sealer, g.pub, login.NewMetrics(g.reg), g.log.With("component", "login"))
	return err
}

// listen opens the public and the admin address, and builds the servers
// for them; it leaves nothing open when it fails.
func (g *gateway) listen() error {
	publicLn, err := net.Listen("tcp", g.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on GATEWAY_ADDR: %w", err)
	}
	adminLn, err := net.Listen("tcp", g.cfg.AdminAddr)
	if err != nil {
		publicLn.Close()
		return fmt.Errorf("listen on GATEWAY_ADMIN_ADDR: %w", err)
	}
	g.publicLn, g.adminLn = publicLn, adminLn
	serverLog := slog.NewLogLogger(g.log.Handler(), slog.LevelWarn)
	g.publicSrv = &http.Server{
		Handler:           g.login,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          serverLog,
	}
	g.adminSrv = &http.Server{
		Handler: admin.Handler(g.reg, map[string]admin.Checker{
			"nats":     g.pub,
			"provider": g.login,
		}, g.log.With("component", "admin")),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          serverLog,
	}
	return nil
}

// start serves both addresses and drains the spool in the background,
// says where the gateway listens, then makes first contact with the
// provider and NATS.
func (g *gateway) start(ctx context.Context) {
	g.serveErr = make(chan error, 2)
	go func() { g.serveErr <- serve(g.publicSrv, g.publicLn) }()
	go func() { g.serveErr <- serve(g.adminSrv, g.adminLn) }()
	// The spool drainer outlives ctx until the in-flight sign-ins, which
	// may spool, are done.
	drainCtx, stopDrain := context.WithCancel(context.WithoutCancel(ctx))
	g.stopDrain = stopDrain
	g.drained = make(chan struct{})
	go func() {
		defer close(g.drained)
		g.pub.Run(drainCtx)
	}()
	g.logListening()
	g.checkDependencies(ctx)
}

// serve runs srv on ln until Shutdown; it returns nil after a Shutdown.
func serve(srv *http.Server, ln net.Listener) error {
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// logListening says where the gateway listens and which callback URL to
// register at each provider.
func (g *gateway) logListening() {
	ids := make([]string, len(g.cfg.Providers))
	for i, p := range g.cfg.Providers {
		ids[i] = p.ID
	}
	g.log.Info("auth-gateway listening",
		"addr", g.publicLn.Addr().String(), "admin_addr", g.adminLn.Addr().String(),
		"public_url", g.cfg.PublicURL.String(), "providers", strings.Join(ids, ","),
		"providers_file", g.cfg.ProvidersFile, "session_ttl", g.cfg.SessionTTL.String())
	for _, id := range ids {
		g.log.Info("provider ready to sign in; register its callback URL as a redirect URI there", "provider", id, "callback_url", g.login.CallbackURL(id))
	}
	if g.cfg.DeviceKey == nil && len(g.cfg.CookieKeys) > 0 {
		g.log.Info("GATEWAY_DEVICE_KEY is not set: device ids derive from the last GATEWAY_COOKIE_KEY, so they change (and people get new-device emails) when that key is dropped")
	}
}

// checkDependencies makes first contact with the providers and NATS,
// within startupCheckTimeout. Failures are logged, not returned: both are
// retried later.
func (g *gateway) checkDependencies(ctx context.Context) {
	checkCtx, cancel := context.WithTimeout(ctx, startupCheckTimeout)
	defer cancel()
	if err := g.login.Ready(checkCtx); err != nil {
		g.log.Error("no identity provider usable; sign-ins answer 503 until discovery succeeds (retried on each sign-in and readiness check)", "error", err)
	}
	if err := g.pub.Ready(checkCtx); err != nil {
		g.log.Warn("NATS not usable yet; the stream is checked again before the first publish", "error", err)
	}
}

// wait blocks until ctx is cancelled or a server stops by itself, and
// returns that server's error.
func (g *gateway) wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		g.log.Info("shutting down")
		return nil
	case err := <-g.serveErr:
		g.log.Error("server stopped", "error", err)
		return err
	}
}

// shutdown finishes in-flight requests, then stops the spool drainer, then
// drains the NATS connection, all within shutdownTimeout.
func (g *gateway) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := g.publicSrv.Shutdown(ctx); err != nil {
		g.log.Warn("public server did not finish in-flight requests in time", "error", err)
	}
	if err := g.adminSrv.Shutdown(ctx); err != nil {
		g.log.Warn("admin server shutdown", "error", err)
	}
	g.stopDrain()
	select {
	case <-g.drained:
	case <-ctx.Done():
		g.log.Warn("spool drainer did not stop in time")
	}
	if err := g.pub.Close(ctx); err != nil {
		g.log.Warn("nats drain", "error", err)
	}
	g.log.Info("stopped")
}
