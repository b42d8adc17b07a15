package publish

import (
	"context"
	"sync"
	"time"
)

// link follows the state of the NATS connection as its handlers report
// it, so that a publish can wait for a reconnection and give up an attempt
// the connection dropped under it. It is safe for concurrent use.
type link struct {
	mu    sync.Mutex
	up    bool
	since time.Time
	// epoch is cancelled when the state changes, and replaced.
	epoch  context.Context
	cancel context.CancelFunc
}

// newLink returns a link that is down since now.
func newLink(now time.Time) *link {
	l := &link{since: now}
	l.epoch, l.cancel = context.WithCancel(context.Background())
	return l
}

// set records that the connection is up or down, waking everyone waiting
// on the previous state. Setting the state it is already in does nothing.
func (l *link) set(up bool, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.up == up {
		return
	}
	l.up, l.since = up, now
	l.cancel()
	l.epoch, l.cancel = context.WithCancel(context.Background())
}

// state returns whether the connection is up, since when, and a context
// that is cancelled as soon as that changes.
func (l *link) state() (up bool, since time.Time, changed context.Context) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.up, l.since, l.epoch
}
