//go:build unix

package main

import (
	"os/exec"
	"syscall"
)

// ownProcessGroup puts the child in its own process group, so the Ctrl-C
// the terminal sends to devstack's group does not reach it: devstack stops
// the children itself, in order.
func ownProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// terminate asks the child to stop.
func terminate(cmd *exec.Cmd) error { return cmd.Process.Signal(syscall.SIGTERM) }
