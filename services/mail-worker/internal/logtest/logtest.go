// Package logtest collects a program's log output for a test's assertions.
// It is for tests only.
package logtest

import (
	"bytes"
	"sync"
)

// Buffer is an io.Writer that goroutines may write to while the test reads
// what they wrote. The zero value is ready to use.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
