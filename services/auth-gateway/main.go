// Command auth-gateway signs people in with OpenID Connect and publishes a
// user.authenticated event to NATS JetStream for each sign-in with a
// verified email. Configuration comes from the environment; see
// internal/config.
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
	"syscall"
	"time"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/admin"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/config"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/cookie"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/login"
	"github.com/doorbell/doorbell/services/auth-gateway/internal/publish"
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

	reg := admin.NewRegistry()
	pub, err := publish.Connect(publish.Config{
		URL:      cfg.NATSURL,
		Name:     "doorbell-auth-gateway",
		Source:   cfg.PublicURL.String(),
		Replicas: cfg.StreamReplicas,
	}, log.With("component", "publish"), publish.NewMetrics(reg))
	if err != nil {
		return err
	}
	gw, err := login.New(login.Config{
		Issuer:         cfg.Issuer,
		ClientID:       cfg.ClientID,
		ClientSecret:   cfg.ClientSecret,
		Scopes:         cfg.Scopes,
		ProviderID:     cfg.ProviderID,
		PublicURL:      cfg.PublicURL,
		PublishTimeout: cfg.PublishTimeout,
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
		ErrorLog:          serverLog,
	}
	serveErr := make(chan error, 2)
	go func() { serveErr <- serve(publicSrv, publicLn) }()
	go func() { serveErr <- serve(adminSrv, adminLn) }()
	log.Info("auth-gateway listening",
		"addr", publicLn.Addr().String(), "admin_addr", adminLn.Addr().String(),
		"public_url", cfg.PublicURL.String(), "issuer", cfg.Issuer, "provider", cfg.ProviderID)

	// First contact with the dependencies; failures are retried later.
	checkCtx, cancel := context.WithTimeout(ctx, startupCheckTimeout)
	if err := gw.Ready(checkCtx); err != nil {
		log.Error("identity provider discovery failed; sign-ins answer 503 until it succeeds (retried on each sign-in and readiness check)", "err", err)
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
