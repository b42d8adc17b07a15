package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"time"
)

// readyPollInterval is how often the supervisor asks services whether they
// are ready, until they all are.
const readyPollInterval = 250 * time.Millisecond

// service is a binary the supervisor runs.
type service struct {
	name     string
	path     string
	env      map[string]string // set on top of devstack's own environment
	readyURL string            // answers 200 once the service is ready
}

// supervisor runs services as child processes and stops them all as soon as
// one exits on its own.
type supervisor struct {
	stdout, stderr io.Writer
	logger         *slog.Logger
	stopTimeout    time.Duration
}

// run starts every service, prints banner once all are ready, and returns
// when ctx is done (nil) or a service exits on its own (an error), after
// stopping the others and waiting for them.
func (s supervisor) run(ctx context.Context, services []service, banner string) error {
	childCtx, stopChildren := context.WithCancel(ctx)
	defer stopChildren()

	var children []*child
	exited := make(chan *child, len(services))
	for _, svc := range services {
		c, err := startChild(childCtx, svc.name, svc.path, environ(svc.env), s.stdout, s.stderr, s.stopTimeout)
		if err != nil {
			stopChildren()
			s.wait(children)
			return err
		}
		children = append(children, c)
		go func() {
			<-c.done
			exited <- c
		}()
	}

	announced := make(chan struct{})
	go func() {
		defer close(announced)
		urls := make(map[string]string, len(services))
		for _, svc := range services {
			urls[svc.name] = svc.readyURL
		}
		if waitReady(childCtx, s.logger, urls) {
			_, _ = io.WriteString(s.stdout, banner)
		}
	}()

	var failure error
	select {
	case <-ctx.Done():
		s.logger.Info("stopping")
	case c := <-exited:
		failure = fmt.Errorf("%s exited unexpectedly (%s)", c.name, c.status())
		s.logger.Info("stopping everything", "reason", failure.Error())
	}
	stopChildren()
	<-announced
	s.wait(children)
	return failure
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

// waitReady polls each service's readiness URL until all answer 200, and
// reports whether they did before ctx was done. It warns once about
// services still not ready after a minute.
func waitReady(ctx context.Context, logger *slog.Logger, urls map[string]string) bool {
	client := &http.Client{Timeout: 2 * time.Second}
	ready := func(url string) bool {
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
	pending := maps.Clone(urls)
	tick := time.NewTicker(readyPollInterval)
	defer tick.Stop()
	slow := time.After(time.Minute)
	for {
		for name, url := range pending {
			if ready(url) {
				delete(pending, name)
			}
		}
		if len(pending) == 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-slow:
			for name, url := range pending {
				logger.Warn("still waiting for a service to report ready", "service", name, "url", url)
			}
		case <-tick.C:
		}
	}
}
