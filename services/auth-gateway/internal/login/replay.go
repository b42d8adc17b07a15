package login

import (
	"sync"
	"time"
)

// maxSpentStates bounds the memory of spent states (about 100 bytes each).
const maxSpentStates = 100_000

// spentStates remembers the states of attempts that reached the callback,
// until their attempt cookies expire, so that a copy of an attempt cookie
// cannot be used a second time on this replica. Other replicas do not share
// it; there the provider's single-use codes are what stops a replay. When
// full it forgets the oldest state first. It is safe for concurrent use.
type spentStates struct {
	mu    sync.Mutex
	max   int
	until map[string]time.Time
	// order holds the states in the order they were spent.
	order []string
}

func newSpentStates(maxStates int) *spentStates {
	return &spentStates{max: maxStates, until: make(map[string]time.Time)}
}

// spend marks state used until until and reports whether it was unused.
func (s *spentStates) spend(state string, now, until time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.order) > 0 {
		oldest := s.order[0]
		if exp, ok := s.until[oldest]; ok && now.Before(exp) && len(s.order) < s.max {
			break
		}
		delete(s.until, oldest)
		s.order[0] = ""
		s.order = s.order[1:]
	}
	if exp, ok := s.until[state]; ok && now.Before(exp) {
		return false
	}
	s.until[state] = until
	s.order = append(s.order, state)
	return true
}
