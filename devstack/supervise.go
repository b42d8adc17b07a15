package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"time"
)

// readyPollInterval is how often the supervisor asks services whether they
// are ready, until they all are.
const readyPollInterval = 250 * time.Millisecond

// service is a binary the supervisor runs.
type service struct {
	name     string
	path     string
	args     []string
	env      map[string]string // set on top of devstack's own environment
	readyURL string            // answers 200 once the service is ready
	// optional services are extras: one that cannot start or exits is
	// logged and left out, and the rest of the stack keeps running.
	optional bool
	// hide, when set, drops the output lines it reports true for.
	hide func(line []byte) bool
}

// supervisor runs services as child processes and stops them all as soon as
// one that is not optional exits on its own.
type supervisor struct {
	stdout, stderr io.Writer
	logger         *slog.Logger
	stopTimeout    time.Duration
}

// run starts every service, prints the banner once all are ready (or, for
// optional ones, gone), and returns when ctx is done (nil) or a service that
// is not optional exits on its own (an error), after stopping the others
// and waiting for them. banner is given the names of the services that
// answered ready.
func (s supervisor) run(ctx context.Context, services []service, banner func(ready map[string]bool) string) error {
	childCtx, stopChildren := context.WithCancel(ctx)
	defer stopChildren()

	var children []*child
	var probes []probe
	exited := make(chan *child, len(services))
	for _, svc := range services {
		c, err := startChild(childCtx, svc, s.stdout, s.stderr, s.stopTimeout)
		if err != nil && svc.optional {
			s.logger.Warn("not started; the rest of the stack runs without it", "service", svc.name, "error", err)
			continue
		}
		if err != nil {
			stopChildren()
			s.wait(children)
			return err
		}
		children = append(children, c)
		p := probe{name: svc.name, url: svc.readyURL}
		if svc.optional {
			p.gone = c.done
		}
		probes = append(probes, p)
		go func() {
			<-c.done
			exited <- c
		}()
	}

	announced := make(chan struct{})
	go func() {
		defer close(announced)
		if ready, ok := waitReady(childCtx, s.logger, probes); ok {
			_, _ = io.WriteString(s.stdout, banner(ready))
		}
	}()

	failure := s.watch(ctx, exited, &children)
	stopChildren()
	<-announced
	s.wait(children)
	return failure
}

// watch returns when ctx is done (nil) or a child that is not optional
// exits on its own (why); an optional child that exits is dropped from
// children and the rest run on.
func (s supervisor) watch(ctx context.Context, exited <-chan *child, children *[]*child) error {
	for {
		select {
		case <-ctx.Done():
			s.logger.Info("stopping")
			return nil
		case c := <-exited:
			switch {
			case ctx.Err() != nil: // it got the stop signal too
				s.logger.Info("stopping")
				return nil
			case c.optional:
				s.logger.Warn("exited unexpectedly; the rest of the stack keeps running", "service", c.name, "status", c.status())
				*children = slices.DeleteFunc(*children, func(o *child) bool { return o == c })
			default:
				failure := fmt.Errorf("%s exited unexpectedly (%s)", c.name, c.status())
				s.logger.Info("stopping everything", "reason", failure.Error())
				return failure
			}
		}
	}
}

// wait waits for children that have been told to stop and says how each
// one ended.
func (s supervisor) wait(children []*child) {
	for _, c := range children {
		<-c.done
		if c.stoppedCleanly() {
			s.logger.Info("stopped", "service", c.name)
		} else {
			s.logger.Warn("stopped", "service", c.name, "status", c.status())
		}
	}
}

// probe is how waitReady learns that a service is ready.
type probe struct {
	name string
	url  string          // answers 200 once the service is ready
	gone <-chan struct{} // closed once an optional service has exited; nil for the others
}

// waitReady polls each probe's URL until every one has answered 200 or is
// gone, and returns the names of those that answered; ok reports whether
// that happened before ctx was done. It warns once about services still
// not ready after a minute.
func waitReady(ctx context.Context, logger *slog.Logger, probes []probe) (ready map[string]bool, ok bool) {
	client := &http.Client{Timeout: 2 * time.Second}
	answers := func(url string) bool {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false
		}
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	gone := func(p probe) bool {
		select {
		case <-p.gone:
			return true
		default:
			return false
		}
	}
	ready = make(map[string]bool, len(probes))
	pending := slices.Clone(probes)
	tick := time.NewTicker(readyPollInterval)
	defer tick.Stop()
	slow := time.After(time.Minute)
	for {
		pending = slices.DeleteFunc(pending, func(p probe) bool {
			if answers(p.url) {
				ready[p.name] = true
				return true
			}
			return gone(p)
		})
		if len(pending) == 0 {
			return ready, true
		}
		select {
		case <-ctx.Done():
			return nil, false
		case <-slow:
			for _, p := range pending {
				logger.Warn("still waiting for a service to report ready", "service", p.name, "url", p.url)
			}
		case <-tick.C:
		}
	}
}
