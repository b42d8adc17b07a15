//go:build !unix

package main

import "os/exec"

func ownProcessGroup(*exec.Cmd) {}

// terminate stops the child; without SIGTERM that means killing it.
func terminate(cmd *exec.Cmd) error { return cmd.Process.Kill() }
