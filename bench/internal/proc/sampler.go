package proc

import (
	"sync"
	"time"
)

// Sampler records a process's CPU time at a fixed interval, so that the CPU
// it spent between two instants learned only afterwards (the first and the
// last email a sink received) can be read back.
type Sampler struct {
	pid  int
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	samples []sample
}

type sample struct {
	at  time.Time
	cpu time.Duration
}

// Sample starts recording p's CPU time every interval until Stop.
func (p *Process) Sample(interval time.Duration) *Sampler {
	s := &Sampler{pid: p.Pid(), stop: make(chan struct{}), done: make(chan struct{})}
	s.take()
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				s.take()
				return
			case <-t.C:
				s.take()
			}
		}
	}()
	return s
}

func (s *Sampler) take() {
	cpu, err := CPU(s.pid)
	if err != nil {
		return // the process is gone; the samples so far stand
	}
	now := time.Now()
	s.mu.Lock()
	s.samples = append(s.samples, sample{now, cpu.Total()})
	s.mu.Unlock()
}

// Stop takes a last sample and stops recording. It may be called once.
func (s *Sampler) Stop() {
	close(s.stop)
	<-s.done
}

// Between is the CPU time spent from a to b, interpolated linearly between
// the samples around each instant.
func (s *Sampler) Between(a, b time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.at(b) - s.at(a)
}

// at is the CPU time at t; before the first or after the last sample it is
// that sample's.
func (s *Sampler) at(t time.Time) time.Duration {
	n := len(s.samples)
	if n == 0 {
		return 0
	}
	if !t.After(s.samples[0].at) {
		return s.samples[0].cpu
	}
	for i := 1; i < n; i++ {
		hi := s.samples[i]
		if t.After(hi.at) {
			continue
		}
		lo := s.samples[i-1]
		frac := float64(t.Sub(lo.at)) / float64(hi.at.Sub(lo.at))
		return lo.cpu + time.Duration(frac*float64(hi.cpu-lo.cpu))
	}
	return s.samples[n-1].cpu
}

// Started is when the first sample was taken: CPU spent before it is not
// known.
func (s *Sampler) Started() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.samples) == 0 {
		return time.Time{}
	}
	return s.samples[0].at
}
