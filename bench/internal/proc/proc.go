// Package proc runs the programs a benchmark measures as child processes and
// reads what they cost from /proc: CPU time and peak resident memory. It is
// Linux-only, like the figures it reports.
package proc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat:
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// Process is a running child process.
type Process struct {
	// Name says which program this is in errors and logs.
	Name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done closes
	log  *os.File
}

// Spec says how to start a process.
type Spec struct {
	Name string
	Path string
	Args []string
	// Env is the whole environment: nothing is inherited, so a variable
	// set in the caller's shell cannot change what is measured.
	Env []string
	// Stdout receives the process's standard output; nil sends it to Log.
	Stdout io.Writer
	// Log is a file that receives standard error (and standard output
	// when Stdout is nil); nil discards them.
	Log *os.File
}

// Start starts the process described by s. It is not waited for: call
// Stop.
func Start(s Spec) (*Process, error) {
	cmd := exec.Command(s.Path, s.Args...)
	cmd.Env = s.Env
	if s.Log != nil {
		cmd.Stderr = s.Log
		cmd.Stdout = s.Log
	}
	if s.Stdout != nil {
		cmd.Stdout = s.Stdout
	}
	// Its own process group, so that a Ctrl-C at the terminal reaches the
	// benchmark only, which then stops its children in order; and a
	// signal when the benchmark dies without doing so.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", s.Name, err)
	}
	p := &Process{Name: s.Name, cmd: cmd, done: make(chan struct{}), log: s.Log}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited is closed when the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.done }

// Stop sends SIGTERM, waits up to grace for the process to exit, then
// kills it. It returns the exit error of a process that had already
// stopped by itself, else nil.
func (p *Process) Stop(grace time.Duration) error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited early: %v", p.Name, p.err)
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	return nil
}

// CPU is the CPU time the process (all its threads) has used so far, in
// steps of 10 ms.
func (p *Process) CPU() (Times, error) {
	return CPU(p.Pid())
}

// PeakRSS is the process's peak resident set size (VmHWM) in bytes.
func (p *Process) PeakRSS() (int64, error) {
	return PeakRSS(p.Pid())
}

// Times is the CPU time a process has used, in user space and in the
// kernel on its behalf.
type Times struct {
	User, System time.Duration
}

// Total is user plus system time.
func (t Times) Total() time.Duration { return t.User + t.System }

// Sub is the time used between u and t.
func (t Times) Sub(u Times) Times { return Times{t.User - u.User, t.System - u.System} }

// CPU is the CPU time process pid has used so far.
func CPU(pid int) (Times, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Times{}, err
	}
	return parseStatCPU(b)
}

// parseStatCPU reads utime and stime (fields 14 and 15) from the contents
// of /proc/<pid>/stat. The command name (field 2) may hold spaces and
// parentheses, so counting starts after its last ')'.
func parseStatCPU(stat []byte) (Times, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return Times{}, errors.New("proc: stat: no command name")
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state): utime is field 14, f[11].
	if len(f) < 13 {
		return Times{}, fmt.Errorf("proc: stat: %d fields after the name, want at least 13", len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return Times{}, fmt.Errorf("proc: stat: %w", err)
	}
	tick := time.Second / clockTicks
	return Times{User: time.Duration(utime) * tick, System: time.Duration(stime) * tick}, nil
}

// PeakRSS is process pid's peak resident set size (VmHWM) in bytes.
func PeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return parseStatusKB(b, "VmHWM")
}

// ResetPeakRSS sets process pid's peak RSS (VmHWM) back to its current
// RSS, so that the next PeakRSS tells the peak from now on (Linux 4.0+;
// it needs the right to write the process's clear_refs).
func ResetPeakRSS(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// parseStatusKB finds "name: N kB" in the contents of /proc/<pid>/status
// and returns N in bytes.
func parseStatusKB(status []byte, name string) (int64, error) {
	for line := range strings.Lines(string(status)) {
		v, ok := strings.CutPrefix(line, name+":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("proc: status %s: %w", name, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("proc: status: no %s line", name)
}

// WaitReady polls url until it answers 200, the process exits or ctx is
// done.
func (p *Process) WaitReady(ctx context.Context, url string) error {
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last string
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(body))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s (last answer: %s): %w", p.Name, url, last, ctx.Err())
		case <-p.done:
			return fmt.Errorf("%s exited before it was ready: %v%s", p.Name, p.err, p.logTail())
		case <-tick.C:
		}
	}
}

// logTail is the end of the process's log file, for error messages.
func (p *Process) logTail() string {
	if p.log == nil {
		return ""
	}
	b, err := os.ReadFile(p.log.Name())
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "\n--- " + p.log.Name() + " (end) ---\n" + string(b)
}

// announcePrefix starts the first line a helper process (the sink, the
// NATS server) writes on standard output: where it listens.
const announcePrefix = "listening "

// Announce writes the line StartAnnounced waits for.
func Announce(w io.Writer, addr string) error {
	_, err := fmt.Fprintf(w, "%s%s\n", announcePrefix, addr)
	return err
}

// StartAnnounced starts a helper process whose first line of output says
// where it listens (see Announce), and returns that address and a scanner
// over the rest of its output, which the caller must read to the end.
func StartAnnounced(ctx context.Context, s Spec) (*Process, string, *bufio.Scanner, error) {
	pr, pw := io.Pipe()
	s.Stdout = pw
	p, err := Start(s)
	if err != nil {
		return nil, "", nil, err
	}
	go func() {
		<-p.Exited()
		pw.Close()
	}()
	lines := bufio.NewScanner(pr)
	addr := make(chan string, 1)
	go func() {
		defer close(addr)
		if lines.Scan() {
			if a, ok := strings.CutPrefix(lines.Text(), announcePrefix); ok {
				addr <- a
			}
		}
	}()
	select {
	case a, ok := <-addr:
		if ok {
			return p, a, lines, nil
		}
		p.Stop(time.Second)
		return nil, "", nil, fmt.Errorf("%s did not say where it listens%s", s.Name, p.logTail())
	case <-ctx.Done():
		p.Stop(time.Second)
		return nil, "", nil, ctx.Err()
	}
}
