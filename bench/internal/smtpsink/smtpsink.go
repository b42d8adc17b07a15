// Package smtpsink is a discard SMTP server for benchmarks: it speaks enough
// real SMTP for any client (greeting, EHLO/HELO, MAIL, RCPT, DATA read to the
// final dot, RSET, NOOP, QUIT), offers PIPELINING as most relays do (RFC
// 2920: the mail-worker uses it, the plain net/smtp yardstick does not),
// throws every message away and reports when each one arrived, with its
// first recipient and event id.
//
// It checks nothing and keeps nothing: never point anything but a benchmark
// at it.
package smtpsink

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Receipt is one accepted message.
type Receipt struct {
	// At is when the final dot was read (before any Delay).
	At time.Time
	// Size is the message's size in bytes as sent, dot-stuffing included.
	Size int
	// Rcpt is the first RCPT TO address, without angle brackets.
	Rcpt string
	// EventID is the X-Doorbell-Event-Id header, or "" when there is none.
	EventID string
}

// String is the receipt as one line of the sink's report: Unix nanoseconds,
// size, recipient and event id ("-" when empty), separated by spaces.
func (r Receipt) String() string {
	id := r.EventID
	if id == "" {
		id = "-"
	}
	return fmt.Sprintf("%d %d %s %s", r.At.UnixNano(), r.Size, r.Rcpt, id)
}

// ParseReceipt reads a line written by Receipt.String.
func ParseReceipt(line string) (Receipt, error) {
	f := strings.Fields(line)
	if len(f) != 4 {
		return Receipt{}, fmt.Errorf("smtpsink: receipt %q: want 4 fields, got %d", line, len(f))
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return Receipt{}, fmt.Errorf("smtpsink: receipt time: %w", err)
	}
	size, err := strconv.Atoi(f[1])
	if err != nil {
		return Receipt{}, fmt.Errorf("smtpsink: receipt size: %w", err)
	}
	r := Receipt{At: time.Unix(0, ns), Size: size, Rcpt: f[2], EventID: f[3]}
	if r.EventID == "-" {
		r.EventID = ""
	}
	return r, nil
}

// Server accepts SMTP sessions and reports every message to Report.
type Server struct {
	// Delay is how long the server waits after the final dot before it
	// answers 250: a slow relay.
	Delay time.Duration
	// Report is called once per accepted message, from the session's
	// goroutine; it must be safe for concurrent use.
	Report func(Receipt)
}

// Serve answers sessions on ln until ctx is done, then closes ln and every
// open session and returns once their goroutines have ended.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("smtpsink: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			closeOnDone := context.AfterFunc(ctx, func() { conn.Close() })
			defer closeOnDone()
			defer conn.Close()
			s.session(ctx, conn)
		}()
	}
}

// session runs one SMTP conversation. Any read or write error ends it.
func (s *Server) session(ctx context.Context, conn net.Conn) {
	r := bufio.NewReaderSize(conn, 32<<10)
	w := bufio.NewWriterSize(conn, 4<<10)
	// Replies wait while more commands are buffered: a client that
	// pipelines (RFC 2920) sends several and reads the replies after.
	reply := func(lines string) bool {
		w.WriteString(lines)
		if r.Buffered() > 0 {
			return true
		}
		return w.Flush() == nil
	}
	if !reply("220 sink ESMTP discard\r\n") {
		return
	}
	var rcpt string
	for {
		line, err := readLine(r)
		if err != nil {
			return
		}
		verb := strings.ToUpper(string(line[:min(4, len(line))]))
		var ok bool
		switch verb {
		case "EHLO":
			ok = reply("250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 52428800\r\n")
		case "HELO":
			ok = reply("250 sink\r\n")
		case "MAIL":
			rcpt = ""
			ok = reply("250 2.1.0 ok\r\n")
		case "RCPT":
			if rcpt == "" {
				rcpt = address(line)
			}
			ok = reply("250 2.1.5 ok\r\n")
		case "DATA":
			ok = s.data(ctx, r, rcpt, reply)
		case "RSET":
			rcpt = ""
			ok = reply("250 2.0.0 ok\r\n")
		case "NOOP":
			ok = reply("250 2.0.0 ok\r\n")
		case "QUIT":
			reply("221 2.0.0 bye\r\n")
			return
		default:
			ok = reply("502 5.5.2 not implemented\r\n")
		}
		if !ok {
			return
		}
	}
}

// data takes one message after DATA, reports it, waits Delay and accepts
// it; false ends the session.
func (s *Server) data(ctx context.Context, r *bufio.Reader, rcpt string, reply func(string) bool) bool {
	if !reply("354 end with <CRLF>.<CRLF>\r\n") {
		return false
	}
	rec, err := readData(r)
	if err != nil {
		return false
	}
	rec.Rcpt = rcpt
	if rec.Rcpt == "" {
		rec.Rcpt = "-"
	}
	s.Report(rec)
	if s.Delay > 0 {
		select {
		case <-time.After(s.Delay):
		case <-ctx.Done():
			return false
		}
	}
	return reply("250 2.0.0 queued\r\n")
}

// readLine returns one line without its line ending. The slice is only
// valid until the next read.
func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return nil, errors.New("smtpsink: command line too long")
	}
	if err != nil {
		return nil, err
	}
	return bytes.TrimRight(line, "\r\n"), nil
}

// address is the mailbox between the angle brackets of a MAIL or RCPT
// command, or what follows the colon when there are none.
func address(line []byte) string {
	_, arg, _ := bytes.Cut(line, []byte(":"))
	arg = bytes.TrimSpace(arg)
	if i := bytes.IndexByte(arg, '<'); i >= 0 {
		if j := bytes.IndexByte(arg[i:], '>'); j > 0 {
			return string(arg[i+1 : i+j])
		}
	}
	if sp := bytes.IndexByte(arg, ' '); sp >= 0 {
		arg = arg[:sp]
	}
	return string(arg)
}

var eventIDHeader = []byte("x-doorbell-event-id:")

// readData reads a message up to and including the line holding only a
// dot, noting its size and its X-Doorbell-Event-Id header.
func readData(r *bufio.Reader) (Receipt, error) {
	var rec Receipt
	inHeader, lineStart := true, true
	for {
		chunk, err := r.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return rec, err
		}
		if lineStart {
			switch {
			case bytes.Equal(chunk, []byte(".\r\n")) || bytes.Equal(chunk, []byte(".\n")):
				rec.At = time.Now()
				return rec, nil
			case inHeader && len(bytes.TrimRight(chunk, "\r\n")) == 0:
				inHeader = false
			case inHeader && rec.EventID == "" && len(chunk) > len(eventIDHeader) &&
				bytes.EqualFold(chunk[:len(eventIDHeader)], eventIDHeader):
				rec.EventID = string(bytes.TrimSpace(chunk[len(eventIDHeader):]))
			}
		}
		rec.Size += len(chunk)
		lineStart = err == nil
	}
}
