package smtpsend

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	netmail "net/mail"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/wneessen/go-mail/smtp"
)

// scriptedRelay is a minimal SMTP server for pipelining tests: it offers
// PIPELINING, answers RCPT TO with rcptReply and DATA with dataReply, and
// records each burst of commands as it arrived in one read.
type scriptedRelay struct {
	port int

	mu        sync.Mutex
	plain     bool // no PIPELINING offered
	rcptReply string
	dataReply string
	bursts    []string // each transaction's commands as they arrived with its MAIL FROM
	messages  int      // data ended with a "." after a 354

	// Misbehaviour, each for the next time only unless said otherwise:
	hold354       chan struct{} // the reply to DATA waits until it is closed
	holdMark      chan struct{} // the reply to the end-of-data mark waits until it is closed
	atMark        chan struct{} // closed when the relay holds back that reply
	markReplies   []string      // replies to the next marks (then 250)
	dropAtMark    int           // this many marks get no reply: the connection closes
	perConnection int           // emails a connection takes before MAIL gets 421 (0: any number)
	behindMark    int           // marks that arrived with more commands behind them
}

// script sets the replies to RCPT TO and DATA.
func (r *scriptedRelay) script(rcpt, data string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rcptReply, r.dataReply = rcpt, data
}

func startScriptedRelay(t *testing.T, rcptReply, dataReply string) *scriptedRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &scriptedRelay{port: ln.Addr().(*net.TCPAddr).Port, rcptReply: rcptReply, dataReply: dataReply}

	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { r.serve(c) })
		}
	})
	return r
}

func (r *scriptedRelay) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(waitLong))
	br := bufio.NewReader(c)
	say := func(s string) { _, _ = c.Write([]byte(s)) }
	say("220 scripted ESMTP\r\n")
	inData := false
	taken := 0 // emails on this connection
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if inData {
			if line == ".\r\n" {
				inData = false
				taken++
				if !r.endOfData(br.Buffered() > 0, say) {
					return
				}
			}
			continue
		}
		cmd := strings.ToUpper(strings.TrimSpace(line))
		r.mu.Lock()
		rcptReply, dataReply := r.rcptReply, r.dataReply
		if strings.HasPrefix(cmd, "MAIL") {
			// What else came in the same write is already buffered.
			burst := strings.TrimSpace(line)
			if n := br.Buffered(); n > 0 {
				more, _ := br.Peek(n)
				burst += " | " + strings.ReplaceAll(strings.TrimSpace(string(more)), "\r\n", " | ")
			}
			r.bursts = append(r.bursts, burst)
		}
		r.mu.Unlock()
		switch {
		case strings.HasPrefix(cmd, "EHLO") && r.offersPipelining():
			say("250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
		case strings.HasPrefix(cmd, "EHLO"):
			say("250-scripted\r\n250 8BITMIME\r\n")
		case strings.HasPrefix(cmd, "MAIL") && r.full(taken):
			say("421 4.7.0 too many messages on this connection\r\n")
			return
		case strings.HasPrefix(cmd, "MAIL"), strings.HasPrefix(cmd, "RSET"):
			say("250 2.1.0 ok\r\n")
		case strings.HasPrefix(cmd, "RCPT"):
			say(rcptReply + "\r\n")
		case strings.HasPrefix(cmd, "DATA"):
			r.mu.Lock()
			hold := r.hold354
			r.hold354 = nil
			r.mu.Unlock()
			if hold != nil && strings.HasPrefix(dataReply, "354") {
				<-hold
			}
			say(dataReply + "\r\n")
			inData = strings.HasPrefix(dataReply, "354")
		case strings.HasPrefix(cmd, "QUIT"):
			say("221 bye\r\n")
			return
		default:
			say("502 5.5.2 what\r\n")
		}
	}
}

// endOfData answers an end-of-data mark, which more commands followed in
// the same write when behind; false when the connection is to close.
func (r *scriptedRelay) endOfData(behind bool, say func(string)) bool {
	r.mu.Lock()
	r.messages++
	if behind {
		r.behindMark++
	}
	hold, at := r.holdMark, r.atMark
	r.holdMark = nil
	drop := r.dropAtMark > 0
	if drop {
		r.dropAtMark--
	}
	reply := "250 2.0.0 queued"
	if len(r.markReplies) > 0 {
		reply, r.markReplies = r.markReplies[0], r.markReplies[1:]
	}
	r.mu.Unlock()
	if drop {
		return false
	}
	if hold != nil {
		close(at)
		<-hold
	}
	say(reply + "\r\n")
	return true
}

// full reports whether a connection that took this many emails takes no
// more.
func (r *scriptedRelay) full(taken int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.perConnection > 0 && taken >= r.perConnection
}

func (r *scriptedRelay) offersPipelining() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.plain
}

func (r *scriptedRelay) sender(t *testing.T) (*Sender, *Metrics) {
	t.Helper()
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Host: "127.0.0.1", Port: r.port, TLS: TLSNone, Timeout: 10 * time.Second,
		From: "Doorbell <doorbell@example.com>", HELO: "worker.test", PoolSize: 1}, m, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, m
}

// A relay that offers PIPELINING gets MAIL FROM, RCPT TO and DATA in one
// write (RFC 2920): two round trips per email instead of four.
func TestPipeliningSendsTheEnvelopeInOneWrite(t *testing.T) {
	r := startScriptedRelay(t, "250 2.1.5 ok", "354 go ahead")
	s, _ := r.sender(t)
	if _, err := s.Send(context.Background(), message("evt-pipe")); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.messages != 1 || len(r.bursts) != 1 {
		t.Fatalf("relay got %d messages in %d transactions, want 1", r.messages, len(r.bursts))
	}
	want := "MAIL FROM:<doorbell@example.com> BODY=8BITMIME | RCPT TO:<ann@example.com> | DATA"
	if r.bursts[0] != want {
		t.Errorf("the envelope arrived as %q, want %q in one write", r.bursts[0], want)
	}
}

// With pipelining the replies come after the commands: the first refusal
// is the failure, and a relay that answers 354 to the DATA of a refused
// transaction gets an empty message, so that nothing is delivered.
// A relay without PIPELINING gets one command at a time, and its
// connection carries email after email, also after a refused DATA.
func TestARelayWithoutPipeliningTakesEmailAfterEmail(t *testing.T) {
	r := startScriptedRelay(t, "250 2.1.5 ok", "354 go ahead")
	r.mu.Lock()
	r.plain = true
	r.mu.Unlock()
	s, m := r.sender(t)
	send := func(id string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := s.Send(ctx, message(id))
		return err
	}
	for _, id := range []string{"evt-1", "evt-2"} {
		if err := send(id); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	r.script("250 2.1.5 ok", "451 4.3.0 queue full")
	var se *Error
	if err := send("evt-3"); !errors.As(err, &se) || se.Code != 451 || se.Stage != StageData {
		t.Fatalf("a refused DATA = %v, want 451 at data", err)
	}
	r.script("250 2.1.5 ok", "354 go ahead")
	if err := send("evt-4"); err != nil {
		t.Fatalf("the email after a refused DATA: %v", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.messages != 3 {
		t.Errorf("the relay got %d messages, want 3", r.messages)
	}
	if strings.Contains(strings.Join(r.bursts, "\n"), "|") {
		t.Errorf("commands were pipelined to a relay that does not offer it: %q", r.bursts)
	}
	if got := testutil.ToFloat64(m.connections); got != 1 {
		t.Errorf("%v connections open, want the one reused", got)
	}
}

func TestPipeliningTakesTheFirstRefusal(t *testing.T) {
	tests := []struct {
		name       string
		rcpt, data string
		wantCode   int
		wantPerm   bool
		wantStage  Stage
	}{
		{"a refused recipient, DATA refused as well", "550 5.1.1 no such user", "554 5.5.1 no valid recipients", 550, true, StageRcpt},
		{"a deferred recipient", "451 4.3.0 try later", "503 5.5.1 no recipients", 451, false, StageRcpt},
		{"a refused recipient, DATA taken all the same", "550 5.1.1 no such user", "354 go ahead", 550, true, StageRcpt},
		{"DATA refused", "250 2.1.5 ok", "451 4.3.0 queue full", 451, false, StageData},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := startScriptedRelay(t, tt.rcpt, tt.data)
			s, m := r.sender(t)
			_, err := s.Send(context.Background(), message("evt-refused"))
			var se *Error
			if !errors.As(err, &se) || se.Code != tt.wantCode || se.Permanent != tt.wantPerm || se.Stage != tt.wantStage {
				t.Fatalf("Send = %v, want %d at %s (permanent %v)", err, tt.wantCode, tt.wantStage, tt.wantPerm)
			}
			r.mu.Lock()
			delivered := r.messages
			r.mu.Unlock()
			if tt.data[:3] == "354" {
				// The empty message the client ended at once.
				delivered--
			}
			if delivered != 0 {
				t.Errorf("the relay got %d messages with content, want none", delivered)
			}
			// The connection carries the next email after RSET.
			r.script("250 2.1.5 ok", "354 go ahead")
			if _, err := s.Send(context.Background(), message("evt-next")); err != nil {
				t.Errorf("the next email: %v", err)
			}
			if got := testutil.ToFloat64(m.connections); got != 1 {
				t.Errorf("%v connections open, want the one reused", got)
			}
		})
	}
}

// writeCounter counts the writes on a connection once counting is on.
type writeCounter struct {
	net.Conn
	counting atomic.Bool
	writes   atomic.Int32
}

func (w *writeCounter) Write(p []byte) (int, error) {
	if w.counting.Load() {
		w.writes.Add(1)
	}
	return w.Conn.Write(p)
}

// The content and its end-of-data mark go out in one write, with
// PIPELINING or without: one write per email fewer, and a failure before
// that write ends cannot have delivered the email (the mark is its last
// bytes).
func TestTheContentAndItsMarkGoOutInOneWrite(t *testing.T) {
	for _, pipelining := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipelining %v", pipelining), func(t *testing.T) {
			client, server := net.Pipe()
			defer client.Close()
			cw := &writeCounter{Conn: client}
			r := pipeRelay{pipelining: pipelining, onData: func() { cw.counting.Store(true) }, got: make(chan string, 1)}
			go r.serve(server)
			sc := helloOver(t, cw)
			data := []byte("Subject: hi\r\n\r\n.a line that begins with a dot\r\nbye\r\n")
			j := &job{ctx: context.Background(), data: data, to: "ann@example.com"}
			if healthy, _, _ := bareSender().transact(&conn{sc: sc, raw: cw}, j, false); j.err != nil || !healthy {
				t.Fatalf("transact: %v (healthy %v)", j.err, healthy)
			}
			if n := cw.writes.Load(); n != 1 {
				t.Errorf("the content and its mark took %d writes, want 1", n)
			}
			if c := <-r.got; c != "Subject: hi\r\n\r\n..a line that begins with a dot\r\nbye\r\n" {
				t.Errorf("the relay got %q", c)
			}
		})
	}
}

// pipeRelay serves one SMTP session on one end of a net.Pipe: 250 to
// every command, 354 to DATA (after onData), and 250 to the end of the
// data after finalDelay, handing the content to got.
type pipeRelay struct {
	pipelining bool
	finalDelay time.Duration
	onData     func()
	got        chan string
}

func (r pipeRelay) serve(conn net.Conn) {
	defer conn.Close()
	br := bufio.NewReader(conn)
	say := func(s string) { _, _ = conn.Write([]byte(s)) }
	say("220 relay.test ESMTP\r\n")
	var content strings.Builder
	inData := false
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		switch cmd := strings.ToUpper(line); {
		case inData && line == ".\r\n":
			time.Sleep(r.finalDelay)
			if r.got != nil {
				r.got <- content.String()
			}
			say("250 2.0.0 queued\r\n")
			content.Reset()
			inData = false
		case inData:
			content.WriteString(line)
		case strings.HasPrefix(cmd, "EHLO") && r.pipelining:
			say("250-relay.test\r\n250 PIPELINING\r\n")
		case strings.HasPrefix(cmd, "EHLO"):
			say("250 relay.test\r\n")
		case strings.HasPrefix(cmd, "DATA"):
			if r.onData != nil {
				r.onData()
			}
			say("354 go ahead\r\n")
			inData = true
		default:
			say("250 ok\r\n")
		}
	}
}

// bareSender is a Sender for calling transact on a session of the
// test's own: nothing is queued to follow an email.
func bareSender() *Sender {
	return &Sender{
		cfg:  Config{Timeout: 5 * time.Second, FinalTimeout: 10 * time.Second},
		from: &netmail.Address{Address: "doorbell@example.com"},
		pool: &pool{},
	}
}

// helloOver opens an SMTP session over conn.
func helloOver(t *testing.T, conn net.Conn) *smtp.Client {
	t.Helper()
	sc, err := smtp.NewClient(conn, "relay.test")
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.Hello("worker.test"); err != nil {
		t.Fatal(err)
	}
	return sc
}

// slowCutConn: a deadline "now" (the ctx cut) takes effect a little late,
// as when the AfterFunc goroutine is scheduled after transact moves on.
type slowCutConn struct {
	net.Conn
	onMark func()
	fired  atomic.Bool
}

func (c *slowCutConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err == nil && bytes.HasSuffix(p, []byte("\r\n.\r\n")) && c.fired.CompareAndSwap(false, true) {
		c.onMark()
	}
	return n, err
}

func (c *slowCutConn) SetDeadline(t time.Time) error {
	if time.Until(t) < time.Second {
		time.Sleep(50 * time.Millisecond)
	}
	return c.Conn.SetDeadline(t)
}

// A shutdown that comes as the end-of-data mark goes out does not cut the
// wait for the reply: the relay has the email, and its 250 is read. (The
// cut's deadline is set from a goroutine of its own, which may run after
// transact has set the final one; slowCutConn makes it late every time.)
func TestACutAsTheMarkGoesOutStillReadsTheReply(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	go pipeRelay{pipelining: true, finalDelay: 200 * time.Millisecond}.serve(server) // scanning the stored message
	ctx, cancel := context.WithCancel(context.Background())
	raw := &slowCutConn{Conn: client, onMark: cancel}
	sc := helloOver(t, raw)
	j := &job{ctx: ctx, data: []byte("Subject: hi\r\n\r\nbody\r\n"), to: "b@example.com"}
	healthy, _, _ := bareSender().transact(&conn{sc: sc, raw: raw}, j, false)
	if j.err != nil {
		t.Errorf("the relay accepted the email, but transact says healthy=%v err=%v (maybe sent: %v)", healthy, j.err, j.err.MaybeSent)
	}
}
