package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// child is a service binary running under devstack.
type child struct {
	name     string
	optional bool // its exit does not stop the stack
	cmd      *exec.Cmd
	done     chan struct{} // closed once the process has exited and its output is copied
	err      error         // Wait's result, set before done is closed
}

// startChild runs svc's binary with its arguments and environment, copying
// its output line by line (less the lines svc hides) with the service's name
// as a prefix. When ctx is done the child gets SIGTERM, and is killed if it
// has not exited stopTimeout later.
func startChild(ctx context.Context, svc service, stdout, stderr io.Writer, stopTimeout time.Duration) (*child, error) {
	cmd := exec.CommandContext(ctx, svc.path, svc.args...)
	cmd.Env = environ(svc.env)
	out, errOut := newLineWriter(stdout, svc.name), newLineWriter(stderr, svc.name)
	out.hide, errOut.hide = svc.hide, svc.hide
	cmd.Stdout, cmd.Stderr = out, errOut
	cmd.Cancel = func() error { return terminate(cmd) }
	cmd.WaitDelay = stopTimeout
	ownProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", svc.name, svc.path, err)
	}
	c := &child{name: svc.name, optional: svc.optional, cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		out.Flush()
		errOut.Flush()
		close(c.done)
	}()
	return c, nil
}

// status describes how the child ended, e.g. "exit status 1" or
// "signal: killed". Call it only after done is closed.
func (c *child) status() string {
	if c.cmd.ProcessState == nil {
		return c.err.Error()
	}
	return c.cmd.ProcessState.String()
}

// stoppedCleanly reports whether the child exited with status 0. Call it
// only after done is closed.
func (c *child) stoppedCleanly() bool {
	return c.cmd.ProcessState != nil && c.cmd.ProcessState.Success()
}

// environ is the parent's environment with vars set on top; vars win over
// the parent's values of the same names.
func environ(vars map[string]string) []string {
	env := make([]string, 0, len(os.Environ())+len(vars))
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if _, ours := vars[name]; !ours {
			env = append(env, kv)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(vars)) {
		env = append(env, name+"="+vars[name])
	}
	return env
}
