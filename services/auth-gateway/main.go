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

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"golang.org/x/time/rate"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/admin"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/config"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/cookie"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/login"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/publish"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/spool"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/telemetry"
)

// shutdownTimeout bounds finishing in-flight requests and draining NATS.
const shutdownTimeout = 10 * time.Second

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
	log := newLogger(cfg, logOut)

	keys := cfg.CookieKeys
	if len(keys) == 0 {
		k, err := cookie.RandomKey()
		if err != nil {
			return err
		}
		keys = [][]byte{k}
		log.Warn("GATEWAY_COOKIE_KEY is not set: using a random key, so sessions and sign-ins in progress end with this process and are not shared with other replicas")
	}
	sealer, err := cookie.New(keys)
	if err != nil {
		return err
	}
	// Device ids feed "new device" emails, so they must survive key
	// rotation: a dedicated key, else one derived from the last (oldest)
	// cookie key, which adding a new key in front does not change.
	deviceKey := cfg.DeviceKey
	if deviceKey == nil {
		if deviceKey, err = sealer.DeriveKey("device id"); err != nil {
			return err
		}
	}

	tracerProvider, stopTracing, err := telemetry.Setup(ctx, cfg.TraceExport)
	if err != nil {
		return err
	}
	defer func() {
		// Last, so that the spans of the shutdown itself go out too.
		flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancel()
		if err := stopTracing(flushCtx); err != nil {
			log.Warn("tracing: flushing spans at shutdown", "err", err)
		}
	}()
	if cfg.TraceExport {
		otelLog := log.With("component", "telemetry")
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			otelLog.Warn("tracing: spans not exported", "err", err)
		}))
		log.Info("tracing on: spans are exported over OTLP/HTTP to the collector OTEL_EXPORTER_OTLP_* names")
	}

	var sp *spool.Spool
	if cfg.SpoolDir != "" {
		// Spooled files are authenticated with keys only the gateway holds,
		// rotating with the cookie keys.
		spoolKeys, err := sealer.DeriveKeys("spool")
		if err != nil {
			return err
		}
		if sp, err = spool.Open(cfg.SpoolDir, cfg.SpoolMaxEvents, spoolKeys, log.With("component", "spool")); err != nil {
			return fmt.Errorf("GATEWAY_SPOOL_DIR: %w", err)
		}
		depth, oldest := sp.Stats()
		attrs := []any{"dir", cfg.SpoolDir, "max_events", cfg.SpoolMaxEvents, "events", depth}
		if depth > 0 {
			attrs = append(attrs, "oldest_spooled_at", oldest.UTC().Format(time.RFC3339))
		}
		log.Info("spool on: events JetStream does not acknowledge in time are kept on disk and published later", attrs...)
	}

	reg := admin.NewRegistry()
	pub, err := publish.Connect(publish.Config{
		URL:            cfg.NATSURL,
		Name:           "doorbell-auth-gateway",
		Source:         cfg.PublicURL.String(),
		Replicas:       cfg.StreamReplicas,
		Spool:          sp,
		Timeout:        cfg.PublishTimeout,
		TracerProvider: tracerProvider,
		Propagator:     propagation.TraceContext{},
	}, log.With("component", "publish"), publish.NewMetrics(reg))
	if err != nil {
		return err
	}
	gw, err := login.New(login.Config{
		Providers:      cfg.Providers,
		PublicURL:      cfg.PublicURL,
		CookieDomain:   cfg.CookieDomain,
		PublishTimeout: cfg.PublishTimeout,
		SessionTTL:     cfg.SessionTTL,
		DeviceKey:      deviceKey,
		RedirectHosts:  cfg.RedirectHosts,
		RateLimit:      rate.Limit(cfg.RateLimit),
		RateBurst:      cfg.RateBurst,
		TrustedProxies: cfg.TrustedProxies,
		TracerProvider: tracerProvider,
		LogEmails:      cfg.LogEmails,
	}, sealer, pub, login.NewMetrics(reg), log.With("component", "login"))
	if err != nil {
		_ = pub.Close(ctx)
		return err
	}

	publicLn, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		_ = pub.Close(ctx)
		return fmt.Errorf("listen on GATEWAY_ADDR: %w", err)
	}
	adminLn, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		publicLn.Close()
		_ = pub.Close(ctx)
		return fmt.Errorf("listen on GATEWAY_ADMIN_ADDR: %w", err)
	}
	serverLog := slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	publicSrv := &http.Server{
		Handler:           gw,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          serverLog,
	}
	adminSrv := &http.Server{
		Handler: admin.Handler(reg, map[string]admin.Checker{
			"nats":     pub,
			"provider": gw,
		}, log.With("component", "admin")),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          serverLog,
	}
	serveErr := make(chan error, 2)
	go func() { serveErr <- serve(publicSrv, publicLn) }()
	go func() { serveErr <- serve(adminSrv, adminLn) }()
	// The spool drainer outlives ctx until the in-flight sign-ins, which
	// may spool, are done.
	drainCtx, stopDrain := context.WithCancel(context.WithoutCancel(ctx))
	defer stopDrain()
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		pub.Run(drainCtx)
	}()
	ids := make([]string, len(cfg.Providers))
	for i, p := range cfg.Providers {
		ids[i] = p.ID
	}
	log.Info("auth-gateway listening",
		"addr", publicLn.Addr().String(), "admin_addr", adminLn.Addr().String(),
		"public_url", cfg.PublicURL.String(), "providers", strings.Join(ids, ","),
		"providers_file", cfg.ProvidersFile, "session_ttl", cfg.SessionTTL.String())
	for _, id := range ids {
		log.Info("provider ready to sign in; register its callback URL as a redirect URI there", "provider", id, "callback_url", gw.CallbackURL(id))
	}
	if cfg.DeviceKey == nil && len(cfg.CookieKeys) > 0 {
		log.Info("GATEWAY_DEVICE_KEY is not set: device ids derive from the last GATEWAY_COOKIE_KEY, so they change (and people get new-device emails) when that key is dropped")
	}

	// First contact with the dependencies; failures are retried later.
	checkCtx, cancel := context.WithTimeout(ctx, startupCheckTimeout)
	if err := gw.Ready(checkCtx); err != nil {
		log.Error("no identity provider usable; sign-ins answer 503 until discovery succeeds (retried on each sign-in and readiness check)", "err", err)
	}
	if err := pub.Ready(checkCtx); err != nil {
		log.Warn("NATS not usable yet; the stream is checked again before the first publish", "err", err)
	}
	cancel()

	var stopErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case stopErr = <-serveErr:
		log.Error("server stopped", "err", stopErr)
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := publicSrv.Shutdown(shutdownCtx); err != nil {
		log.Warn("public server did not finish in-flight requests in time", "err", err)
	}
	if err := adminSrv.Shutdown(shutdownCtx); err != nil {
		log.Warn("admin server shutdown", "err", err)
	}
	stopDrain()
	select {
	case <-drained:
	case <-shutdownCtx.Done():
		log.Warn("spool drainer did not stop in time")
	}
	if err := pub.Close(shutdownCtx); err != nil {
		log.Warn("nats drain", "err", err)
	}
	log.Info("stopped")
	return stopErr
}

// serve runs srv on ln until Shutdown; it returns nil after a Shutdown.
func serve(srv *http.Server, ln net.Listener) error {
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
