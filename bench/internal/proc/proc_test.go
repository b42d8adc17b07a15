package proc

import (
	"os"
	"testing"
	"time"
)

func TestParseStatCPUCountsFromTheLastParenthesis(t *testing.T) {
	// A command name with spaces and parentheses, utime 150, stime 25.
	stat := []byte("4242 (auth (gw) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 150 25 0 0 20 0 9 0 100 0 0")
	got, err := parseStatCPU(stat)
	if err != nil || got.User != 1500*time.Millisecond || got.System != 250*time.Millisecond {
		t.Errorf("parseStatCPU = %+v, %v; want 1.5s user, 250ms system", got, err)
	}
	if _, err := parseStatCPU([]byte("4242 (x) S 1")); err == nil {
		t.Error("a short stat line parsed")
	}
}

func TestParseStatusKB(t *testing.T) {
	status := []byte("Name:\tmail-worker\nVmPeak:\t 1300000 kB\nVmHWM:\t   25600 kB\nVmRSS:\t   20000 kB\n")
	if got, err := parseStatusKB(status, "VmHWM"); err != nil || got != 25600<<10 {
		t.Errorf("VmHWM = %d, %v; want %d", got, err, 25600<<10)
	}
	if _, err := parseStatusKB(status, "VmSwap"); err == nil {
		t.Error("a missing line gave no error")
	}
}

func TestThisProcessHasCPUAndPeakRSS(t *testing.T) {
	cpu, err := CPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	rss, err := PeakRSS(os.Getpid())
	if err != nil || rss < 1<<20 {
		t.Errorf("PeakRSS = %d, %v; want over 1 MiB", rss, err)
	}
	if cpu.Total() < 0 {
		t.Errorf("CPU = %+v", cpu)
	}
}

func TestSamplerInterpolatesBetweenSamples(t *testing.T) {
	t0 := time.Unix(1000, 0)
	s := &Sampler{samples: []sample{
		{t0, 0}, {t0.Add(time.Second), 100 * time.Millisecond}, {t0.Add(2 * time.Second), 300 * time.Millisecond},
	}}
	if got := s.Between(t0.Add(500*time.Millisecond), t0.Add(1500*time.Millisecond)); got != 150*time.Millisecond {
		t.Errorf("Between = %v, want 150ms (50ms + 100ms)", got)
	}
	if got := s.Between(t0.Add(-time.Hour), t0.Add(time.Hour)); got != 300*time.Millisecond {
		t.Errorf("Between beyond the samples = %v, want all 300ms", got)
	}
}
