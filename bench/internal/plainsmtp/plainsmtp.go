// Package plainsmtp is the yardstick the mail-worker is measured against:
// the standard library's net/smtp sending prepared messages over a fixed
// number of reused connections, with nothing else to do (no queue, no
// rendering, no bookkeeping).
package plainsmtp

import (
	"bytes"
	"context"
	"fmt"
	"net/smtp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Message is one email to send.
type Message struct {
	From, To string
	// Data is the whole message, headers and body, with CRLF line endings.
	Data []byte
}

// Send sends n messages, msg(0) to msg(n-1), over conns connections to
// addr, each connection sending one message after another. It stops at
// the first error.
func Send(ctx context.Context, addr string, conns, n int, msg func(i int) Message) error {
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(addr)
			if err != nil {
				fail(err)
				return
			}
			defer c.Close()
			if err := c.Hello("bench.localhost"); err != nil {
				fail(err)
				return
			}
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					break
				}
				if err := sendOne(c, msg(i)); err != nil {
					fail(fmt.Errorf("message %d: %w", i, err))
					return
				}
			}
			_ = c.Quit()
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

func sendOne(c *smtp.Client, m Message) error {
	if err := c.Mail(m.From); err != nil {
		return err
	}
	if err := c.Rcpt(m.To); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(m.Data); err != nil {
		return err
	}
	return w.Close()
}

// Compose builds a multipart/alternative (text and HTML) message of about
// size bytes, like the worker's welcome email, carrying eventID in the
// X-Doorbell-Event-Id header as the worker does.
func Compose(from, to, eventID string, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nSubject: Welcome to Doorbell\r\n", from, to)
	fmt.Fprintf(&b, "Date: %s\r\nMessage-ID: <%s@localhost>\r\nX-Doorbell-Event-Id: %s\r\n",
		time.Now().Format(time.RFC1123Z), eventID, eventID)
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n")
	const (
		textHead = "--b1\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\n"
		htmlHead = "--b1\r\nContent-Type: text/html; charset=UTF-8\r\n\r\n<p>"
		end      = "</p>\r\n--b1--\r\n"
	)
	room := max(size-b.Len()-len(textHead)-len(htmlHead)-len(end), 2)
	line := "Welcome aboard. This is filler text of the size of a real email.\r\n"
	b.WriteString(textHead)
	writeFiller(&b, line, room/3)
	b.WriteString(htmlHead)
	writeFiller(&b, line, room-room/3)
	b.WriteString(end)
	return b.Bytes()
}

// writeFiller writes n bytes of repeated line, cut to end in CRLF.
func writeFiller(b *bytes.Buffer, line string, n int) {
	for n >= len(line) {
		b.WriteString(line)
		n -= len(line)
	}
	if n >= 2 {
		b.WriteString(strings.Repeat("x", n-2) + "\r\n")
	}
}
