package login

import (
	"fmt"
	"testing"
	"time"
)

func TestSpentStatesAreUsedOnceAndBounded(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	s := newSpentStates(3)
	if !s.spend("a", now, now.Add(time.Minute)) {
		t.Fatal("fresh state refused")
	}
	if s.spend("a", now, now.Add(time.Minute)) {
		t.Fatal("state spent twice")
	}
	// After its attempt expired, the state is forgotten (the attempt cookie
	// would be refused for its age anyway).
	if !s.spend("a", now.Add(2*time.Minute), now.Add(3*time.Minute)) {
		t.Error("expired state still remembered")
	}
	for i := range 10 {
		s.spend(fmt.Sprint(i), now, now.Add(time.Hour))
	}
	if n := len(s.until); n > 3 {
		t.Errorf("remembers %d states, limit 3", n)
	}
	if s.spend("9", now, now.Add(time.Hour)) {
		t.Error("the newest state was forgotten first")
	}
}
