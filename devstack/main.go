// Command devstack runs all of Doorbell on loopback for development, with no
// Docker and no accounts: an embedded NATS server with JetStream, the dev
// OpenID Connect provider, the dev inbox (SMTP with STARTTLS, a web page and
// a JSON API), and the auth-gateway and mail-worker binaries as child
// processes, plus Prometheus, with deploy's rules, when it is installed.
// `make run` starts it; Ctrl-C stops everything.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "devstack:", err)
		os.Exit(1)
	}
}
