package main

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"sync"
)

// maxLine is the longest line kept whole; longer ones are split.
const maxLine = 64 << 10

// lockedWriter lets several goroutines write whole lines to one terminal.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// lineWriter copies what is written to it to out line by line, each line
// prefixed with a label such as "gateway | ". It never fails, so a child
// process writing to it is never blocked or stopped by a terminal error.
type lineWriter struct {
	mu     sync.Mutex
	out    io.Writer
	prefix []byte
	buf    []byte // the unfinished last line
	// hide, when set, drops the lines it reports true for. It is given
	// each line without the prefix, and must not keep it.
	hide func(line []byte) bool
}

// newLineWriter labels lines with name padded to the width of "gateway".
func newLineWriter(out io.Writer, name string) *lineWriter {
	return &lineWriter{out: out, prefix: fmt.Appendf(nil, "%-7s | ", name)}
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	rest := w.buf
	for {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		w.emit(rest[:i+1])
		rest = rest[i+1:]
	}
	for len(rest) >= maxLine {
		w.emit(append(rest[:maxLine:maxLine], '\n'))
		rest = rest[maxLine:]
	}
	w.buf = w.buf[:copy(w.buf, rest)]
	return len(p), nil
}

// Flush writes out an unfinished last line.
func (w *lineWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.emit(append(w.buf, '\n'))
		w.buf = w.buf[:0]
	}
}

func (w *lineWriter) emit(line []byte) {
	if w.hide != nil && w.hide(line) {
		return
	}
	_, _ = w.out.Write(append(append([]byte(nil), w.prefix...), line...))
}

// newLogger logs text lines labelled with name to out.
func newLogger(out io.Writer, name string, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(newLineWriter(out, name), &slog.HandlerOptions{Level: level}))
}
