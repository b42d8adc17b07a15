// Package natsdev runs an embedded NATS server with JetStream for development
// and tests.
//
// It is not a production deployment: there is no authentication, no TLS and no
// clustering, and messages are not fsynced one by one (the server's default
// sync interval applies; a clean Shutdown flushes everything to StoreDir).
package natsdev

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// readyTimeout bounds how long Start waits for the server to accept
// connections. It is generous because the machines this runs on are often
// busy compiling.
const readyTimeout = 30 * time.Second

// Config says where the server listens and stores its JetStream data.
type Config struct {
	// Host to listen on, e.g. "127.0.0.1".
	Host string
	// Port to listen on, e.g. 4222; -1 picks a random free port. Zero means
	// nats-server's default, 4222.
	Port int
	// StoreDir holds the JetStream file store. Starting a new Server with
	// the same StoreDir after Shutdown finds the previous streams and
	// messages. Required.
	StoreDir string
	// Logger receives the server's notices, warnings and errors. Nil keeps
	// the server quiet; start-up failures are still returned by Start.
	Logger *slog.Logger
}

// Server is a running embedded NATS server.
type Server struct {
	ns *server.Server
}

// Start runs an embedded nats-server with JetStream enabled and returns once
// it accepts client connections. A port already in use, an unusable StoreDir
// or a server that is not ready within 30 seconds is an error, and nothing is
// left running.
func Start(cfg Config) (*Server, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("natsdev: StoreDir is required")
	}
	opts := &server.Options{
		ServerName:             "doorbell-dev",
		Host:                   cfg.Host,
		Port:                   cfg.Port,
		JetStream:              true,
		StoreDir:               cfg.StoreDir,
		NoSigs:                 true, // the embedding process owns signals
		NoLog:                  cfg.Logger == nil,
		DisableJetStreamBanner: true,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsdev: configure server: %w", err)
	}
	logs := &logger{log: cfg.Logger, fatal: make(chan string, 1)}
	ns.SetLogger(logs, false, false)

	go ns.Start()

	if err := waitReady(ns, logs.fatal); err != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, fmt.Errorf("natsdev: start server on %s: %w", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)), err)
	}
	if !ns.JetStreamEnabled() {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, errors.New("natsdev: JetStream did not start")
	}
	return &Server{ns: ns}, nil
}

// ClientURL is the URL clients connect to, e.g. nats://127.0.0.1:4222.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// Shutdown stops the server, disconnecting every client, and returns once it
// has fully stopped and released its port and StoreDir. Calling it more than
// once is harmless.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// waitReady returns once ns accepts connections, or with the first fatal
// start-up error it logged, or after readyTimeout.
func waitReady(ns *server.Server, fatal <-chan string) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		select {
		case msg := <-fatal:
			return errors.New(msg)
		default:
		}
		if ns.ReadyForConnections(250 * time.Millisecond) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s", readyTimeout)
		}
	}
}

// logger adapts nats-server logging to slog and reports fatal start-up
// errors (such as a port in use) to Start instead of exiting the process.
type logger struct {
	log   *slog.Logger // may be nil
	fatal chan string  // buffered, first fatal message only
}

func (l *logger) Noticef(format string, v ...any) { l.emit(slog.LevelInfo, format, v) }
func (l *logger) Warnf(format string, v ...any)   { l.emit(slog.LevelWarn, format, v) }
func (l *logger) Errorf(format string, v ...any)  { l.emit(slog.LevelError, format, v) }
func (l *logger) Debugf(format string, v ...any)  { l.emit(slog.LevelDebug, format, v) }
func (l *logger) Tracef(format string, v ...any)  { l.emit(slog.LevelDebug-4, format, v) }

func (l *logger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	select {
	case l.fatal <- msg:
	default:
	}
	if l.log != nil {
		l.log.Error(msg)
	}
}

func (l *logger) emit(level slog.Level, format string, v []any) {
	if l.log == nil {
		return
	}
	l.log.Log(context.Background(), level, fmt.Sprintf(format, v...))
}
