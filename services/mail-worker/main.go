// Command mail-worker consumes user.authenticated events from NATS JetStream
// and emails people: a welcome on their first sign-in, an alert when they
// sign in from a new device. See docs/configuration.md for its settings and docs/design.md for its place.
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
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	_ "time/tzdata" // MAIL_TIME_ZONE works in images without a zone database

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/doorbell/doorbell/platform/admin"
	"github.com/doorbell/doorbell/platform/replicas"
	"github.com/doorbell/doorbell/platform/telemetry"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/config"
	"github.com/doorbell/doorbell/services/mail-worker/internal/consume"
	"github.com/doorbell/doorbell/services/mail-worker/internal/deadletter"
	"github.com/doorbell/doorbell/services/mail-worker/internal/deliver"
	"github.com/doorbell/doorbell/services/mail-worker/internal/ledger"
	"github.com/doorbell/doorbell/services/mail-worker/internal/relay"
	"github.com/doorbell/doorbell/services/mail-worker/internal/render"
	"github.com/doorbell/doorbell/services/mail-worker/internal/smtpsend"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	if len(os.Args) > 1 {
		code := 2
		switch os.Args[1] {
		case "dlq":
			code = runDLQ(ctx, os.Args[2:], os.Getenv, os.Stdout, os.Stderr)
		case "preview":
			code = runPreview(ctx, os.Args[2:], os.Getenv, os.Stdout, os.Stderr)
		default:
			fmt.Fprintf(os.Stderr, "mail-worker: unknown command %q\n\n%s", os.Args[1], usage)
		}
		stop()
		os.Exit(code)
	}
	processorsUnlessSet(os.Getenv)
	lessGarbageCollectionUnlessSet(os.Getenv)
	err := run(ctx, os.Getenv, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "mail-worker:", err)
		os.Exit(1)
	}
}

// processorsUnlessSet runs the worker on one processor per eight SMTP
// connections (GOMAXPROCS = SMTP_POOL_SIZE/8, rounded up: one at the
// default four), at most the processors Go would use here (it counts the
// container's CPU limit), unless the GOMAXPROCS variable says otherwise.
//
// The worker's work is many short steps handed between goroutines
// (handlers, the NATS client's reader and flusher, SMTP connections). Each
// processor more wakes threads for them: measured with make bench (2
// cores), a second processor costs 20–30% more worker CPU per email. One
// processor keeps up to about eight connections busy. Past that, a
// connection's reply waits for the processor to run through the handlers
// ready before it (Go polls the network when it has nothing else to run).
// A second processor takes the replies as they come. At 4 connections it
// added nothing (0.64–0.68× net/smtp either way), at 8 about 4%, at 16 it
// took the worker from 0.48× to 0.57× net/smtp.
func processorsUnlessSet(getenv func(string) string) {
	if n, err := strconv.Atoi(getenv("GOMAXPROCS")); err == nil && n > 0 {
		return // Go's own reading of it, which ignores other values
	}
	if n := processors(config.PoolSize(getenv), runtime.GOMAXPROCS(0)); n != runtime.GOMAXPROCS(0) {
		// Only when it changes: setting it stops Go from following a
		// container's CPU limit as that changes.
		runtime.GOMAXPROCS(n)
	}
}

// processors is GOMAXPROCS for pool SMTP connections where Go would use
// most.
func processors(pool, most int) int {
	return max(1, min(most, (pool+connectionsPerProcessor-1)/connectionsPerProcessor))
}

const connectionsPerProcessor = 8

// gcPercentNow is the GOGC in force (-1: off).
func gcPercentNow() int {
	p := debug.SetGCPercent(-1)
	debug.SetGCPercent(p)
	return p
}

// lessGarbageCollectionUnlessSet collects garbage when the heap has grown
// by twice what was live after the last collection (GOGC=200) rather than
// by as much (Go's 100), unless the GOGC variable says otherwise. The
// worker's live heap is small (tens of MB at full speed) and every email
// leaves about 16 KB of garbage, so at thousands of emails a second it
// collected ten times a second, an eighth of its CPU. Measured with make
// bench at SMTP_POOL_SIZE 16: 68 µs of worker CPU per email against 78,
// for a peak RSS of 52 MB against 43; GOGC=400 saved no more and took 73 MB.
func lessGarbageCollectionUnlessSet(getenv func(string) string) {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
}

const gcPercent = 200

const usage = `usage:
  mail-worker              run the worker (settings from the environment, see docs/configuration.md)
  mail-worker dlq ...      inspect and redrive dead letters (mail-worker dlq help)
  mail-worker preview ...  render an email with the configured templates (mail-worker preview help)
`

// startupCheckTimeout bounds the SMTP check at start.
const startupCheckTimeout = 5 * time.Second

// serviceName names the worker in its logs and is the service.name of its
// spans unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names another.
const serviceName = "mail-worker"

// shutdownReserve is the part of WORKER_SHUTDOWN_TIMEOUT kept for closing
// SMTP connections, draining NATS and stopping the admin server after the
// messages in flight are done.
func shutdownReserve(total time.Duration) time.Duration {
	return min(3*time.Second, total/4)
}

// run wires the worker and runs it until ctx is done, then shuts down
// gracefully. It returns an error only when the worker cannot start.
func run(ctx context.Context, getenv func(string) string, logOut io.Writer) error {
	cfg, err := config.Load(getenv)
	if err != nil {
		return err
	}
	log := newLogger(cfg, logOut)

	tracer, flushTracing, err := startTracing(ctx, cfg, log)
	if err != nil {
		return err
	}
	// Last, so that the spans of the messages finished during the shutdown
	// go out too.
	defer flushTracing()
	reg, deliverMetrics, smtpMetrics, err := newMetrics()
	if err != nil {
		return err
	}

	renderer, err := newRenderer(cfg)
	if err != nil {
		return err
	}
	sender, err := newSender(cfg, smtpMetrics, log)
	if err != nil {
		return err
	}
	defer func() { _ = sender.Close() }()
	gate, err := newGate(cfg, sender, reg, log)
	if err != nil {
		return err
	}
	logStarting(cfg, getenv, sender, log)

	nc, err := connectNATS(cfg, log)
	if err != nil {
		return err
	}
	defer nc.conn.Close()
	var consumer atomic.Pointer[jetstream.Consumer] // set once consuming starts
	if err := registerConsumerStats(reg, &consumer); err != nil {
		return err
	}
	adminSrv, err := startAdmin(cfg.AdminAddr, reg, readinessChecks(nc.conn, &consumer, sender), log)
	if err != nil {
		return err
	}

	checkSMTP(ctx, cfg, sender, gate, log)
	h := newHandler(cfg, sender, renderer, gate, deliverMetrics, tracer, log)
	runErr := consumeUntilDone(ctx, nc.js, cfg, &consumer, h, log)
	shutdown(ctx, cfg, sender, nc, adminSrv, log)
	if runErr != nil {
		return runErr
	}
	log.Info("stopped")
	return nil
}

// startTracing sets up the tracer provider (exporting only when
// cfg.TraceExport) and returns the tracer of deliveries. The caller defers
// flush, which sends the spans still buffered within the shutdown reserve.
func startTracing(ctx context.Context, cfg config.Config, log *slog.Logger) (tracer trace.Tracer, flush func(), err error) {
	tracerProvider, stopTracing, err := telemetry.Setup(ctx, serviceName, cfg.TraceExport)
	if err != nil {
		return nil, nil, err
	}
	flush = func() {
		flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownReserve(cfg.ShutdownTimeout))
		defer cancel()
		if err := stopTracing(flushCtx); err != nil {
			log.Warn("tracing: flushing spans at shutdown", "error", err)
		}
	}
	if cfg.TraceExport {
		otelLog := log.With("component", "telemetry")
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			otelLog.Warn("tracing: spans not exported", "error", err)
		}))
		log.Info("tracing on: spans are exported over OTLP/HTTP to the collector OTEL_EXPORTER_OTLP_* names")
	}
	return tracerProvider.Tracer(deliver.TracerName), flush, nil
}

// newMetrics builds the registry the admin server serves, with the Go
// runtime's and the process's collectors and the series of deliveries and
// of SMTP sends.
func newMetrics() (reg *prometheus.Registry, dm *deliver.Metrics, sm *smtpsend.Metrics, err error) {
	reg = admin.NewRegistry()
	if dm, err = deliver.NewMetrics(reg); err != nil {
		return nil, nil, nil, err
	}
	if sm, err = smtpsend.NewMetrics(reg); err != nil {
		return nil, nil, nil, err
	}
	return reg, dm, sm, nil
}

// newRenderer loads the email templates: the embedded ones, overridden and
// added to by those in MAIL_TEMPLATES_DIR.
func newRenderer(cfg config.Config) (*render.Renderer, error) {
	renderer, err := render.New(render.Config{
		TemplatesDir: cfg.TemplatesDir,
		Language:     cfg.Locale,
		Location:     cfg.TimeZone,
		SiteName:     cfg.SiteName,
		SecurityURL:  cfg.SecurityURL,
	})
	if err != nil {
		return nil, fmt.Errorf("templates: %w", err)
	}
	return renderer, nil
}

// newSender builds the SMTP sender from the SMTP_* and MAIL_FROM settings;
// the caller closes it.
func newSender(cfg config.Config, metrics *smtpsend.Metrics, log *slog.Logger) (*smtpsend.Sender, error) {
	return smtpsend.New(smtpsend.Config{
		Host:            cfg.SMTPHost,
		Port:            cfg.SMTPPort,
		Username:        cfg.SMTPUsername,
		Password:        cfg.SMTPPassword,
		Auth:            smtpsend.AuthMode(cfg.SMTPAuth),
		OAuth2TokenFile: cfg.SMTPOAuth2TokenFile,
		TLS:             smtpsend.TLSMode(cfg.SMTPTLS),
		CAFile:          cfg.SMTPCAFile,
		Timeout:         cfg.SMTPTimeout,
		FinalTimeout:    cfg.SMTPFinalTimeout,
		From:            cfg.MailFrom,
		PoolSize:        cfg.SMTPPoolSize,
		IdleTimeout:     cfg.SMTPIdleTimeout,
		RateLimit:       cfg.SMTPRateLimit,
	}, metrics, log)
}

// newGate builds the gate that stops pulling messages while the relay fails
// every email, and probes it with sender.Check until it answers again.
func newGate(cfg config.Config, sender *smtpsend.Sender, reg prometheus.Registerer, log *slog.Logger) (*relay.Gate, error) {
	return relay.New(sender.Check, relay.Config{
		ProbeBase:    cfg.RelayProbeBase,
		ProbeMax:     cfg.RelayProbeMax,
		ProbeTimeout: 2 * cfg.SMTPTimeout,
	}, reg, log)
}

// logStarting logs the settings the worker runs with (never a secret), and
// warns of each setting of an earlier version that is set and ignored.
func logStarting(cfg config.Config, getenv func(string) string, sender *smtpsend.Sender, log *slog.Logger) {
	log.Info("mail-worker starting",
		"admin_addr", cfg.AdminAddr, "nats_url", redactURL(cfg.NATSURL), "nats_stream_replicas", replicas.Setting(cfg.NATSReplicas),
		"smtp", sender.Addr(), "smtp_auth", smtpAuth(cfg), "smtp_pool_size", cfg.SMTPPoolSize,
		"smtp_rate_limit", cfg.SMTPRateLimit, "mail_from", cfg.MailFrom,
		"templates_dir", cfg.TemplatesDir, "retry_horizon", cfg.RetryHorizon, "ack_wait", cfg.AckWait,
		"smtp_final_timeout", cfg.SMTPFinalTimeout, "shutdown_timeout", cfg.ShutdownTimeout,
		"tracing", cfg.TraceExport, "log_emails", cfg.LogEmails, "gomaxprocs", runtime.GOMAXPROCS(0), "gogc", gcPercentNow())
	for _, v := range config.Ignored(getenv) {
		log.Warn("a setting of an earlier version is set and ignored", "variable", v)
	}
}

// smtpAuth is the AUTH mechanism as the logs show it: "none" without
// SMTP_USERNAME.
func smtpAuth(cfg config.Config) string {
	if cfg.SMTPUsername == "" {
		return "none"
	}
	return cfg.SMTPAuth
}

// natsConn is the worker's connection to NATS and JetStream.
type natsConn struct {
	conn   *nats.Conn
	js     jetstream.JetStream
	closed <-chan struct{} // closed once conn is closed (after a drain)
}

// connectNATS connects to NATS_URL, retrying the first connect and every
// reconnect without end, and logs each change of connection. The caller
// closes conn.
func connectNATS(cfg config.Config, log *slog.Logger) (*natsConn, error) {
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
		return nil, fmt.Errorf("nats: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return &natsConn{conn: nc, js: js, closed: natsClosed}, nil
}

// drain drains the connection and waits until it is closed, at most until
// deadline.
func (c *natsConn) drain(deadline time.Time, log *slog.Logger) {
	if err := c.conn.Drain(); err == nil {
		select {
		case <-c.closed:
		case <-time.After(time.Until(deadline)):
			log.Warn("nats drain timed out")
		}
	}
}

// registerConsumerStats registers the gauges of the consumer's pending
// messages on reg; none is exposed until consumer is set.
func registerConsumerStats(reg prometheus.Registerer, consumer *atomic.Pointer[jetstream.Consumer]) error {
	return consume.RegisterConsumerStats(reg, func(ctx context.Context) (*jetstream.ConsumerInfo, error) {
		cons := consumer.Load()
		if cons == nil {
			return nil, errors.New("no consumer yet")
		}
		return (*cons).Info(ctx)
	})
}

// readinessChecks are what /readyz runs: the NATS connection, the consumer
// (not ready until consumer is set) and the SMTP relay.
func readinessChecks(nc *nats.Conn, consumer *atomic.Pointer[jetstream.Consumer], sender *smtpsend.Sender) map[string]admin.Checker {
	return map[string]admin.Checker{
		"nats": admin.CheckFunc(func(context.Context) error {
			if !nc.IsConnected() {
				return fmt.Errorf("not connected (%s)", nc.Status())
			}
			return nil
		}),
		"consumer": admin.CheckFunc(func(ctx context.Context) error {
			cons := consumer.Load()
			if cons == nil {
				return fmt.Errorf("waiting for stream %s", eventsv1.StreamAuthEvents)
			}
			if _, err := (*cons).Info(ctx); err != nil {
				return fmt.Errorf("consumer %s: %w", eventsv1.ConsumerMailWorker, err)
			}
			return nil
		}),
		"smtp": admin.CheckFunc(func(context.Context) error { return sender.Status() }),
	}
}

// adminServer serves the admin routes (/metrics, /healthz, /readyz) from
// startAdmin until shutdown.
type adminServer struct {
	srv  *http.Server
	done chan error // what Serve returned
}

// startAdmin listens on addr and serves reg and checks in the background.
// The caller must call shutdown.
func startAdmin(addr string, reg prometheus.Gatherer, checks map[string]admin.Checker, log *slog.Logger) (*adminServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	a := &adminServer{
		srv: &http.Server{
			Handler:           admin.Handler(reg, checks, log),
			ReadHeaderTimeout: 5 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		done: make(chan error, 1),
	}
	go func() { a.done <- a.srv.Serve(ln) }()
	log.Info("admin listening", "addr", ln.Addr().String())
	return a, nil
}

// shutdown stops the server, letting requests in progress finish until
// deadline, and waits for Serve to return.
func (a *adminServer) shutdown(ctx context.Context, deadline time.Time, log *slog.Logger) {
	shutdownCtx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	defer cancel()
	if err := a.srv.Shutdown(shutdownCtx); err != nil {
		log.Warn("admin server shutdown", "error", err)
	}
	if err := <-a.done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("admin server", "error", err)
	}
}

// hint is what to check for a failed SMTP check (smtpsend.Error.Hint).
func hint(err error) string {
	if se, ok := errors.AsType[*smtpsend.Error](err); ok {
		return se.Hint()
	}
	return ""
}

// checkSMTP tries the relay once at start. When it is not usable, it logs
// why and what to check, and pauses gate: nothing is pulled until a probe
// succeeds.
func checkSMTP(ctx context.Context, cfg config.Config, sender *smtpsend.Sender, gate *relay.Gate, log *slog.Logger) {
	checkCtx, cancel := context.WithTimeout(ctx, startupCheckTimeout)
	defer cancel()
	if err := sender.Check(checkCtx); err != nil {
		log.Error("SMTP relay is not usable; emails wait in JetStream until it is (see /readyz)",
			"host", cfg.SMTPHost, "port", cfg.SMTPPort, "tls", cfg.SMTPTLS, "auth", smtpAuth(cfg),
			"error", err, "hint", hint(err))
		gate.Report(ctx, "", err) // pull nothing until a probe succeeds
	} else {
		log.Info("SMTP relay reachable", "smtp", sender.Addr(), "auth", smtpAuth(cfg))
	}
}

// newHandler builds the handler of deliveries; consumeUntilDone gives it
// its stores.
func newHandler(cfg config.Config, sender *smtpsend.Sender, renderer *render.Renderer, gate *relay.Gate,
	metrics *deliver.Metrics, tracer trace.Tracer, log *slog.Logger,
) *deliver.Handler {
	return &deliver.Handler{
		Sender:     sender,
		Renderer:   renderer,
		Gate:       gate,
		Metrics:    metrics,
		Log:        log,
		AckWait:    cfg.AckWait,
		Retry:      deliver.Retry{BackoffBase: cfg.BackoffBase, BackoffMax: cfg.BackoffMax, Horizon: cfg.RetryHorizon},
		Policy:     ledger.Policy{AlertWindow: cfg.AlertWindow},
		Tracer:     tracer,
		Propagator: propagation.TraceContext{},
		LogEmails:  cfg.LogEmails,
	}
}

// handlers is how many messages the worker handles at once with pool SMTP
// connections: sixteen per connection, since a handler holds one only
// while it sends and spends the rest on NATS round trips and rendering, and
// a connection sends the emails waiting for it one round trip each; and at
// least minHandlers, since each pull from JetStream costs about as much as
// handling a message and should bring several (Run pulls only for idle
// handlers). Measured with make bench: at SMTP_POOL_SIZE 4, 16 handlers
// cost 235 µs of worker CPU per email, 64 handlers 160–175 µs; at 16, with
// emails pipelined behind one another, eight per connection reached 0.43×
// net/smtp, sixteen 0.47–0.49×, thirty-two 0.46×.
func handlers(pool int) int {
	return max(minHandlers, 16*pool)
}

const minHandlers = 64

// consumeUntilDone waits for JetStream to be ready, opens the people's
// records and the dead-letter stream, and consumes until ctx is done. h
// gets its stores here.
func consumeUntilDone(ctx context.Context, js jetstream.JetStream, cfg config.Config,
	ready *atomic.Pointer[jetstream.Consumer], h *deliver.Handler, log *slog.Logger,
) error {
	ccfg := consume.Config{
		AckWait:         cfg.AckWait,
		Concurrency:     handlers(cfg.SMTPPoolSize),
		Horizon:         cfg.RetryHorizon,
		ShutdownTimeout: cfg.ShutdownTimeout - shutdownReserve(cfg.ShutdownTimeout),
	}
	stopped := func(err error) error {
		if ctx.Err() != nil {
			return nil // stopped while setting up
		}
		return err
	}
	cons, err := consume.Setup(ctx, js, ccfg, log)
	if err != nil {
		return stopped(err)
	}
	stream, err := js.Stream(ctx, eventsv1.StreamAuthEvents)
	if err != nil {
		return stopped(fmt.Errorf("look up stream %s: %w", eventsv1.StreamAuthEvents, err))
	}
	people, err := ledger.Open(ctx, js, cfg.NATSReplicas, log)
	if err != nil {
		return stopped(err)
	}
	if err := deadletter.Ensure(ctx, js, cfg.NATSReplicas, log); err != nil {
		return stopped(err)
	}
	h.People, h.InStream, h.Acks = people, deliver.StreamHas(stream), deliver.ConsumerAcks(cons)
	h.DeadLetters = deadletter.NewPublisher(js, cfg.NATSReplicas, log)
	ready.Store(&cons)
	return consume.Run(ctx, cons, h.Handle, h.Gate, ccfg, log)
}

// shutdown runs once consuming has stopped (consume.Run gave the messages
// in flight the rest of WORKER_SHUTDOWN_TIMEOUT): it closes the SMTP
// sessions, drains NATS and stops the admin server, all within the reserve.
func shutdown(ctx context.Context, cfg config.Config, sender *smtpsend.Sender, nc *natsConn, adminSrv *adminServer, log *slog.Logger) {
	log.Info("shutting down")
	done := time.Now().Add(shutdownReserve(cfg.ShutdownTimeout))
	_ = sender.Close()
	nc.drain(done, log)
	adminSrv.shutdown(ctx, done, log)
}

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)).With("service", serviceName)
	}
	return slog.New(slog.NewTextHandler(w, opts)).With("service", serviceName)
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
