package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// config is what the flags say.
type config struct {
	gatewayBin  string
	workerBin   string
	dataDir     string
	natsAddr    string
	idpAddr     string
	smtpAddr    string
	inboxAddr   string
	gatewayAddr string
	gwAdminAddr string
	wkAdminAddr string
	// stopTimeout bounds how long children get to exit after SIGTERM
	// before they are killed.
	stopTimeout time.Duration

	deployDir      string // the repository's deploy directory
	prometheus     bool   // run Prometheus when it is installed
	prometheusBin  string
	prometheusAddr string
	// debugLogs is LOG_LEVEL=debug, which the services get too: devstack
	// then shows all of Prometheus's log lines, not just warnings and errors.
	debugLogs bool
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("devstack", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: devstack [flags]\n\n"+
			"Runs Doorbell on loopback: embedded NATS, the dev identity provider, the dev inbox\n"+
			"and the two service binaries, plus Prometheus when it is installed. Ctrl-C stops\n"+
			"everything.\n\nFlags:")
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.gatewayBin, "gateway", "bin/auth-gateway", "`path` of the auth-gateway binary")
	fs.StringVar(&cfg.workerBin, "worker", "bin/mail-worker", "`path` of the mail-worker binary")
	fs.StringVar(&cfg.dataDir, "data", ".devstack", "`dir`ectory for the NATS store, the inbox certificate, the gateway cookie key and Prometheus's data")
	fs.StringVar(&cfg.natsAddr, "nats-addr", "127.0.0.1:4222", "NATS client `address`")
	fs.StringVar(&cfg.idpAddr, "idp-addr", "127.0.0.1:5556", "dev identity provider `address`")
	fs.StringVar(&cfg.smtpAddr, "smtp-addr", "127.0.0.1:1025", "dev inbox SMTP `address`")
	fs.StringVar(&cfg.inboxAddr, "inbox-addr", "127.0.0.1:8025", "dev inbox web `address`")
	fs.StringVar(&cfg.gatewayAddr, "gateway-addr", "127.0.0.1:8080", "auth-gateway `address` (also its public URL)")
	fs.StringVar(&cfg.gwAdminAddr, "gateway-admin-addr", "127.0.0.1:9101", "auth-gateway admin `address` (/metrics, /readyz)")
	fs.StringVar(&cfg.wkAdminAddr, "worker-admin-addr", "127.0.0.1:9102", "mail-worker admin `address` (/metrics, /readyz)")
	fs.StringVar(&cfg.deployDir, "deploy", "deploy", "the repository's deploy `dir`ectory, where Prometheus's configuration and rules are read")
	fs.BoolVar(&cfg.prometheus, "prometheus", true, "run Prometheus too, when it is installed")
	fs.StringVar(&cfg.prometheusBin, "prometheus-bin", "prometheus", "the Prometheus `binary`: a path, or a name looked up on PATH")
	fs.StringVar(&cfg.prometheusAddr, "prometheus-addr", "127.0.0.1:9090", "Prometheus web `address` (UI and API)")
	fs.DurationVar(&cfg.stopTimeout, "stop-timeout", 15*time.Second, "how long the services get to stop after SIGTERM before they are killed")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments %q; see devstack -h", fs.Args())
	}
	cfg.debugLogs = strings.EqualFold(os.Getenv("LOG_LEVEL"), "debug")
	return cfg, nil
}

// publicURL is where people reach the gateway.
func (c config) publicURL() string { return "http://" + c.gatewayAddr }

// check finds what would make start-up fail half-way, before anything
// starts: a missing service binary or a port already taken. Prometheus is
// not checked here: without it the stack still runs (see prometheusService).
func (c config) check() error {
	for _, bin := range []struct{ name, path, flag string }{
		{"auth-gateway", c.gatewayBin, "-gateway"},
		{"mail-worker", c.workerBin, "-worker"},
	} {
		if err := checkExecutable(bin.path); err != nil {
			return fmt.Errorf("%s binary %s: %w; build it with `make build` or pass %s PATH", bin.name, bin.path, err, bin.flag)
		}
	}
	for _, p := range []struct{ name, addr, flag string }{
		{"NATS", c.natsAddr, "-nats-addr"},
		{"dev identity provider", c.idpAddr, "-idp-addr"},
		{"dev inbox SMTP", c.smtpAddr, "-smtp-addr"},
		{"dev inbox web", c.inboxAddr, "-inbox-addr"},
		{"auth-gateway", c.gatewayAddr, "-gateway-addr"},
		{"auth-gateway admin", c.gwAdminAddr, "-gateway-admin-addr"},
		{"mail-worker admin", c.wkAdminAddr, "-worker-admin-addr"},
	} {
		if err := checkFree(p.addr); err != nil {
			return fmt.Errorf("%s address %s: %w; is another devstack running? Stop it or pass %s", p.name, p.addr, err, p.flag)
		}
	}
	return nil
}

func checkExecutable(path string) error {
	info, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return errors.New("not found")
	case err != nil:
		return err
	case info.IsDir():
		return errors.New("is a directory")
	case info.Mode()&0o111 == 0:
		return errors.New("is not executable")
	}
	return nil
}

// checkFree reports whether addr can be listened on now. Port 0 (any port)
// is always free.
func checkFree(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("bad port %q", port)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		var opErr *net.OpError
		if errors.As(err, &opErr) && opErr.Err != nil {
			return fmt.Errorf("cannot listen: %w", opErr.Err)
		}
		return err
	}
	return ln.Close()
}
