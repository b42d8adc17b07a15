// Command mail-worker consumes user.authenticated events from NATS JetStream
// and emails people: a welcome on their first sign-in, an alert when they
// sign in from a new device. See README and DESIGN.md for its settings.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/admin"
	"github.com/doorbell/doorbell/services/mail-worker/internal/config"
	"github.com/doorbell/doorbell/services/mail-worker/internal/consume"
	"github.com/doorbell/doorbell/services/mail-worker/internal/history"
	"github.com/doorbell/doorbell/services/mail-worker/internal/render"
	"github.com/doorbell/doorbell/services/mail-worker/internal/smtpsend"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, os.Getenv, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "mail-worker:", err)
		os.Exit(1)
	}
}

// startupCheckTimeout bounds the SMTP check at start.
const startupCheckTimeout = 5 * time.Second

// run wires the worker and runs it until ctx is done, then shuts down
// gracefully. It returns an error only when the worker cannot start.
func run(ctx context.Context, getenv func(string) string, logOut io.Writer) error {
	cfg, err := config.Load(getenv)
	if err != nil {
		return err
	}
	log := newLogger(cfg, logOut)

	reg := prometheus.NewRegistry()
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return fmt.Errorf("register go collector: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return fmt.Errorf("register process collector: %w", err)
	}
	consumeMetrics, err := consume.NewMetrics(reg)
	if err != nil {
		return err
	}
	smtpMetrics, err := smtpsend.NewMetrics(reg)
	if err != nil {
		return err
	}

	renderer, err := render.New(cfg.TemplatesDir)
	if err != nil {
		return fmt.Errorf("templates: %w", err)
	}
	sender, err := smtpsend.New(smtpsend.Config{
		Host:     cfg.SMTPHost,
		Port:     cfg.SMTPPort,
		Username: cfg.SMTPUsername,
		Password: cfg.SMTPPassword,
		TLS:      smtpsend.TLSMode(cfg.SMTPTLS),
		CAFile:   cfg.SMTPCAFile,
		Timeout:  cfg.SMTPTimeout,
		From:     cfg.MailFrom,
	}, smtpMetrics, log)
	if err != nil {
		return err
	}
	defer func() { _ = sender.Close() }()

	log.Info("mail-worker starting",
		"admin_addr", cfg.AdminAddr, "nats_url", redactURL(cfg.NATSURL),
		"smtp", sender.Addr(), "smtp_auth", cfg.SMTPUsername != "", "mail_from", cfg.MailFrom,
		"templates_dir", cfg.TemplatesDir, "max_deliver", cfg.MaxDeliver, "ack_wait", cfg.AckWait)

	natsClosed := make(chan struct{})
	nc, err := nats.Connect(cfg.NATSURL,
		nats.Name("doorbell-mail-worker"),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info("nats connected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: our own drain or close
				log.Warn("nats disconnected; reconnecting", "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ClosedHandler(func(*nats.Conn) { close(natsClosed) }),
	)
	if err != nil {
		return fmt.Errorf("nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}

	var consumer atomic.Pointer[jetstream.Consumer]
	if err := consume.RegisterConsumerStats(reg, func(ctx context.Context) (*jetstream.ConsumerInfo, error) {
		cons := consumer.Load()
		if cons == nil {
			return nil, errors.New("no consumer yet")
		}
		return (*cons).Info(ctx)
	}); err != nil {
		return err
	}
	checks := map[string]admin.Check{
		"nats": func(context.Context) error {
			if !nc.IsConnected() {
				return fmt.Errorf("not connected (%s)", nc.Status())
			}
			return nil
		},
		"consumer": func(ctx context.Context) error {
			cons := consumer.Load()
			if cons == nil {
				return fmt.Errorf("waiting for stream %s", eventsv1.StreamAuthEvents)
			}
			if _, err := (*cons).Info(ctx); err != nil {
				return fmt.Errorf("consumer %s: %w", eventsv1.ConsumerMailWorker, err)
			}
			return nil
		},
		"smtp": func(context.Context) error { return sender.Status() },
	}
	ln, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	adminSrv := &http.Server{
		Handler:           admin.Handler(reg, checks),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	adminDone := make(chan error, 1)
	go func() { adminDone <- adminSrv.Serve(ln) }()
	log.Info("admin listening", "addr", ln.Addr().String())

	checkCtx, cancelCheck := context.WithTimeout(ctx, startupCheckTimeout)
	if err := sender.Check(checkCtx); err != nil {
		log.Error("SMTP relay is not usable; emails wait in JetStream until it is (see /readyz)",
			"host", cfg.SMTPHost, "port", cfg.SMTPPort, "tls", cfg.SMTPTLS, "error", err)
	} else {
		log.Info("SMTP relay reachable", "smtp", sender.Addr())
	}
	cancelCheck()

	runErr := consumeUntilDone(ctx, js, cfg, &consumer, &consume.Handler{
		Sender:   sender,
		Renderer: renderer,
		Metrics:  consumeMetrics,
		Log:      log,
		SiteName: cfg.SiteName,
		Retry:    consume.Retry{MaxDeliver: cfg.MaxDeliver, BackoffBase: cfg.BackoffBase, BackoffMax: cfg.BackoffMax},
	}, log)

	// Shut down: consuming has stopped; finish the SMTP session, flush NATS,
	// stop the admin server.
	log.Info("shutting down")
	_ = sender.Close()
	if err := nc.Drain(); err == nil {
		select {
		case <-natsClosed:
		case <-time.After(5 * time.Second):
			log.Warn("nats drain timed out")
		}
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := adminSrv.Shutdown(shutdownCtx); err != nil {
		log.Warn("admin server shutdown", "error", err)
	}
	if err := <-adminDone; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("admin server", "error", err)
	}
	if runErr != nil {
		return runErr
	}
	log.Info("stopped")
	return nil
}

// consumeUntilDone waits for JetStream to be ready, opens the buckets and
// consumes until ctx is done. h gets its stores here.
func consumeUntilDone(ctx context.Context, js jetstream.JetStream, cfg config.Config,
	ready *atomic.Pointer[jetstream.Consumer], h *consume.Handler, log *slog.Logger,
) error {
	ccfg := consume.Config{
		AckWait:         cfg.AckWait,
		MaxDeliver:      cfg.MaxDeliver,
		ShutdownTimeout: cfg.ShutdownTimeout,
	}
	cons, err := consume.Setup(ctx, js, ccfg, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for the stream
		}
		return err
	}
	store, err := history.Open(ctx, js, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	h.Sent, h.Users = store, store
	ready.Store(&cons)
	return consume.Run(ctx, cons, h.Handle, ccfg, log)
}

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)).With("service", "mail-worker")
	}
	return slog.New(slog.NewTextHandler(w, opts)).With("service", "mail-worker")
}

// redactURL hides credentials (user, password or token) in a NATS URL or a
// comma-separated list of them.
func redactURL(raw string) string {
	parts := strings.Split(raw, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		switch {
		case err != nil:
			parts[i] = "(unparsable)"
		case u.User != nil:
			u.User = url.User("redacted")
			parts[i] = u.String()
		default:
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}
