// Package machine describes where a benchmark ran and what it ran: the
// host (cores, memory, CPU model, kernel) and the versions of Go, of the
// repository and of the modules in each measured binary.
package machine

import (
	"crypto/sha256"
	"debug/buildinfo"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// Host is the machine.
type Host struct {
	Cores    int    `json:"cores"`
	MemoryMB int64  `json:"memory_mb"`
	CPUModel string `json:"cpu_model"`
	Kernel   string `json:"kernel"`
	OS       string `json:"os"`
	Arch     string `json:"arch"`
}

// ReadHost reads the host's description from /proc; what it cannot read
// stays empty.
func ReadHost() Host {
	h := Host{Cores: runtime.NumCPU(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		h.MemoryMB = fieldKB(string(b), "MemTotal") >> 10
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		h.CPUModel = field(string(b), "model name")
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Kernel = strings.TrimSpace(string(b))
	}
	return h
}

// field is the value of the first "name : value" line of s.
func field(s, name string) string {
	for line := range strings.Lines(s) {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// fieldKB is the number in the first "name: N kB" line of s.
func fieldKB(s, name string) int64 {
	n, _ := strconv.ParseInt(strings.TrimSuffix(field(s, name), " kB"), 10, 64)
	return n
}

// Versions is what was measured.
type Versions struct {
	// Go is the toolchain that built the benchmark.
	Go string `json:"go"`
	// Commit is the repository's HEAD, with "-dirty" when the work tree
	// has changes; empty outside a git work tree.
	Commit string `json:"git_commit"`
	// Binaries maps each measured program to the Go version that built
	// it and its module versions (main module and dependencies).
	Binaries map[string]Binary `json:"binaries"`
}

// Binary is one program's build information.
type Binary struct {
	Path    string            `json:"path"`
	Go      string            `json:"go"`
	Main    string            `json:"main"`
	Modules map[string]string `json:"modules"`
}

// ReadVersions reads the versions of the benchmark itself (as "bench"),
// of each binary in bins (name → path) and of the repository in dir.
func ReadVersions(dir string, bins map[string]string) Versions {
	v := Versions{Go: runtime.Version(), Commit: gitCommit(dir), Binaries: map[string]Binary{}}
	if bi, ok := debug.ReadBuildInfo(); ok {
		v.Binaries["bench"] = fromBuildInfo("", bi)
	}
	for name, path := range bins {
		bi, err := buildinfo.ReadFile(path)
		if err != nil {
			v.Binaries[name] = Binary{Path: path, Go: "unknown: " + err.Error()}
			continue
		}
		v.Binaries[name] = fromBuildInfo(path, bi)
	}
	return v
}

func fromBuildInfo(path string, bi *debug.BuildInfo) Binary {
	b := Binary{Path: path, Go: bi.GoVersion, Main: bi.Main.Path + " " + bi.Main.Version, Modules: map[string]string{}}
	for _, m := range bi.Deps {
		ver := m.Version
		if m.Replace != nil {
			ver += " => " + m.Replace.Path + " " + m.Replace.Version
		}
		b.Modules[m.Path] = strings.TrimSpace(ver)
	}
	return b
}

// gitCommit is HEAD of the work tree at dir, "-dirty" added when it has
// uncommitted changes; "" when git cannot tell.
func gitCommit(dir string) string {
	out, err := exec.Command("git", "-C", dir, "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return ""
	}
	commit := strings.TrimSpace(string(out))
	status, err := exec.Command("git", "-C", dir, "status", "--porcelain", "--untracked-files=no").Output()
	if err == nil && len(strings.TrimSpace(string(status))) > 0 {
		commit += "-dirty"
	}
	return commit
}

// SpeedMBps is how fast one core hashes with SHA-256 right now, in MB/s: a
// rough gauge, taken while the machine is otherwise idle, of whether a
// shared host gave this run the same CPU throughout.
func SpeedMBps() float64 {
	buf := make([]byte, 1<<20)
	h := sha256.New()
	start := time.Now()
	const mb = 64
	for range mb {
		h.Write(buf)
	}
	h.Sum(nil)
	return mb / time.Since(start).Seconds()
}
