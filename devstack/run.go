package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/doorbell/doorbell/devstack/devidp"
	"github.com/doorbell/doorbell/devstack/inbox"
	"github.com/doorbell/doorbell/devstack/natsdev"
)

// run brings the stack up, runs it until ctx is done or a service exits,
// and takes it down again: services first (SIGTERM, then a kill after the
// stop timeout), then the inbox, the identity provider and NATS. It returns
// nil after a requested stop and an error when anything failed. Prometheus
// is an extra: when it is missing, cannot start or exits, the stack runs on
// without it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	stdout, stderr = &lockedWriter{w: stdout}, &lockedWriter{w: stderr}
	logger := newLogger(stderr, "stack", slog.LevelInfo)

	if err := cfg.check(); err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.dataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	key, err := cookieKey(cfg.dataDir)
	if err != nil {
		return err
	}
	prom, promLine := prometheusPart(cfg, logger)
	parts, err := startEmbedded(cfg, stderr)
	if err != nil {
		return err
	}
	defer parts.close(logger)

	svcs := services(cfg, parts, key)
	if prom != nil {
		svcs = append(svcs, *prom)
	}
	banner := func(ready map[string]bool) string {
		var b strings.Builder
		fmt.Fprintf(&b, "\nDoorbell is running.\n"+
			"  Sign in:    %s/   (type any email on the dev sign-in page)\n"+
			"  Inbox:      %s/\n"+
			"  Metrics:    http://%s/metrics, http://%s/metrics\n"+
			"  NATS:       %s\n",
			cfg.publicURL(), parts.inbox.HTTPURL(), cfg.gwAdminAddr, cfg.wkAdminAddr, parts.nats.ClientURL())
		const noDashboard = "  Dashboard:  none without Prometheus (see the line above)\n"
		switch {
		case prom == nil:
			b.WriteString(promLine + noDashboard)
		case ready[promName]:
			fmt.Fprintf(&b, "  Prometheus: http://%s/  (alerts: /alerts, targets: /targets)\n"+
				"  Dashboard:  %s\n",
				cfg.prometheusAddr, dashboardURL(cfg.prometheusAddr, dashboardGraphs))
		default:
			b.WriteString("  Prometheus: exited (see the prom lines above)\n" + noDashboard)
		}
		b.WriteString("Press Ctrl-C to stop.\n\n")
		return b.String()
	}
	sup := supervisor{stdout: stdout, stderr: stderr, logger: logger, stopTimeout: cfg.stopTimeout}
	return sup.run(ctx, svcs, banner)
}

// prometheusPart decides whether the stack runs Prometheus. It returns the
// service to run, or nil and the banner line saying why not, after logging
// a warning about anything that needs fixing.
func prometheusPart(cfg config, logger *slog.Logger) (*service, string) {
	if !cfg.prometheus {
		return nil, "  Prometheus: off (-prometheus=false)\n"
	}
	svc, err := prometheusService(cfg)
	switch {
	case errors.Is(err, errPrometheusNotInstalled):
		return nil, "  Prometheus: not installed; to get it: sudo apt-get install prometheus\n"
	case err != nil:
		logger.Warn("starting without Prometheus", "reason", err.Error())
		return nil, "  Prometheus: not started (see the warning above)\n"
	}
	return &svc, ""
}

// embedded are the parts devstack runs in its own process.
type embedded struct {
	nats   *natsdev.Server
	idp    *devidp.Server
	inbox  *inbox.Inbox
	caFile string // absolute path of the inbox certificate, for the worker to trust
}

// startEmbedded starts NATS, the identity provider and the inbox, and saves
// the inbox certificate in the data directory. On error nothing is left
// running.
func startEmbedded(cfg config, stderr io.Writer) (_ *embedded, err error) {
	var e embedded
	defer func() {
		if err != nil {
			e.close(slog.New(slog.DiscardHandler))
		}
	}()

	host, port, err := splitAddr(cfg.natsAddr)
	if err != nil {
		return nil, fmt.Errorf("-nats-addr: %w", err)
	}
	if port == 0 {
		port = -1 // nats-server's "any port"; its 0 means 4222
	}
	e.nats, err = natsdev.Start(natsdev.Config{
		Host:     host,
		Port:     port,
		StoreDir: filepath.Join(cfg.dataDir, natsStoreDir),
		Logger:   newLogger(stderr, "nats", slog.LevelWarn),
	})
	if err != nil {
		return nil, err
	}
	e.idp, err = devidp.Start(devidp.Config{
		Addr:         cfg.idpAddr,
		RedirectURIs: []string{cfg.publicURL() + "/auth/callback"},
	}, newLogger(stderr, "idp", slog.LevelInfo))
	if err != nil {
		return nil, err
	}
	e.inbox, err = inbox.Start(inbox.Config{SMTPAddr: cfg.smtpAddr, HTTPAddr: cfg.inboxAddr, TLS: true},
		newLogger(stderr, "inbox", slog.LevelInfo))
	if err != nil {
		return nil, err
	}
	if e.caFile, err = filepath.Abs(filepath.Join(cfg.dataDir, inboxCAFile)); err != nil {
		return nil, fmt.Errorf("inbox certificate: %w", err)
	}
	if err := os.WriteFile(e.caFile, e.inbox.CertPEM(), 0o644); err != nil {
		return nil, fmt.Errorf("save inbox certificate: %w", err)
	}
	return &e, nil
}

// close stops the inbox, the identity provider and NATS, in that order.
func (e *embedded) close(logger *slog.Logger) {
	if e.inbox != nil {
		if err := e.inbox.Close(); err != nil {
			logger.Warn("stop inbox", "error", err)
		}
	}
	if e.idp != nil {
		if err := e.idp.Close(); err != nil {
			logger.Warn("stop identity provider", "error", err)
		}
	}
	if e.nats != nil {
		e.nats.Shutdown()
	}
}

// services describes the two service binaries and the environment that
// wires them to the embedded parts.
func services(cfg config, e *embedded, cookieKey string) []service {
	smtpHost, smtpPort, _ := net.SplitHostPort(e.inbox.SMTPAddr())
	return []service{
		{
			name: "gateway",
			path: cfg.gatewayBin,
			env: map[string]string{
				"GATEWAY_ADDR":       cfg.gatewayAddr,
				"GATEWAY_PUBLIC_URL": cfg.publicURL(),
				"GATEWAY_ADMIN_ADDR": cfg.gwAdminAddr,
				"GATEWAY_COOKIE_KEY": cookieKey,
				"OIDC_ISSUER":        e.idp.Issuer(),
				"OIDC_CLIENT_ID":     e.idp.ClientID(),
				"OIDC_CLIENT_SECRET": e.idp.ClientSecret(),
				"OIDC_PROVIDER_ID":   "dev",
				"OIDC_PROVIDER_NAME": "the dev identity provider",
				"NATS_URL":           e.nats.ClientURL(),
			},
			readyURL: "http://" + cfg.gwAdminAddr + "/readyz",
		},
		{
			name: "worker",
			path: cfg.workerBin,
			env: map[string]string{
				"WORKER_ADMIN_ADDR": cfg.wkAdminAddr,
				"NATS_URL":          e.nats.ClientURL(),
				"SMTP_HOST":         smtpHost,
				"SMTP_PORT":         smtpPort,
				"SMTP_TLS":          "mandatory",
				"SMTP_CA_FILE":      e.caFile,
				"MAIL_FROM":         "Doorbell <doorbell@localhost>",
			},
			readyURL: "http://" + cfg.wkAdminAddr + "/readyz",
		},
	}
}

func splitAddr(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return "", 0, errors.New("port is not a number")
	}
	return host, n, nil
}
