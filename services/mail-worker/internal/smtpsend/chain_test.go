package smtpsend

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// queueSends starts a Send for each id on s, whose pool has one connection
// to r, in order: the first holds the connection (r holds back its 354)
// until the others wait in the queue behind it, in order, and then goes
// on. ctxs gives an email a context of its own. It returns each Send's
// result.
func queueSends(t *testing.T, r *scriptedRelay, s *Sender, ctxs map[string]context.Context, ids ...string) map[string]chan error {
	t.Helper()
	hold := make(chan struct{})
	r.mu.Lock()
	r.hold354 = hold
	r.mu.Unlock()
	defer close(hold)
	results := make(map[string]chan error, len(ids))
	for i, id := range ids {
		ctx, ok := ctxs[id]
		if !ok {
			ctx = context.Background()
		}
		result := make(chan error, 1)
		results[id] = result
		go func() {
			_, err := s.Send(ctx, message(id))
			result <- err
		}()
		deadline := time.Now().Add(waitLong)
		for !s.pool.holds(i) {
			if time.Now().After(deadline) {
				t.Fatalf("%s never reached its place in the queue", id)
			}
			time.Sleep(time.Millisecond)
		}
	}
	return results
}

// holds reports whether every worker is busy and n jobs wait.
func (p *pool) holds(n int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.free) == 0 && len(p.queue) == n
}

// Emails queued for a connection go out one round trip each: the next
// one's MAIL FROM, RCPT TO and DATA follow the content and end-of-data mark
// of the one before in the same write (RFC 2920), and each arrives once.
func TestQueuedEmailsGoOutBehindTheMarkOfTheOneBefore(t *testing.T) {
	r := startScriptedRelay(t, "250 2.1.5 ok", "354 go ahead")
	s, m := r.sender(t)
	results := queueSends(t, r, s, nil, "evt-1", "evt-2", "evt-3")
	for id, result := range results {
		if err := <-result; err != nil {
			t.Errorf("%s: %v", id, err)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.messages != 3 || r.behindMark != 2 {
		t.Errorf("the relay got %d emails, %d of them with the next one's commands behind the mark; want 3 and 2", r.messages, r.behindMark)
	}
	want := "MAIL FROM:<doorbell@example.com> BODY=8BITMIME | RCPT TO:<ann@example.com> | DATA"
	for i, burst := range r.bursts {
		if burst != want {
			t.Errorf("email %d's commands arrived as %q, want %q", i+1, burst, want)
		}
	}
	if got := testutil.ToFloat64(m.connections); got != 1 {
		t.Errorf("%v connections open, want 1", got)
	}
}

// The relay stores an email and closes the connection without a reply,
// with the next email's commands already sent behind the mark: the first is
// maybe sent, and the next goes out once, on a new connection.
func TestAnEmailBehindAMarkThatGetsNoReplyGoesOnANewConnection(t *testing.T) {
	r := startScriptedRelay(t, "250 2.1.5 ok", "354 go ahead")
	r.dropAtMark = 1
	s, m := r.sender(t)
	results := queueSends(t, r, s, nil, "evt-1", "evt-2")
	var se *Error
	if err := <-results["evt-1"]; !errors.As(err, &se) || !se.MaybeSent {
		t.Errorf("the email without a reply to its mark: %v, want maybe sent", err)
	}
	if err := <-results["evt-2"]; err != nil {
		t.Errorf("the email behind it: %v, want sent on a new connection", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.messages != 2 || r.behindMark != 1 {
		t.Errorf("the relay got %d emails, %d with commands behind the mark; want 2 (each once) and 1", r.messages, r.behindMark)
	}
	if got := testutil.ToFloat64(m.connections); got != 1 {
		t.Errorf("%v connections open, want the new one", got)
	}
}

// An email whose caller gives up while its commands wait behind another's
// mark gets no content, not even an empty one, and its caller does not wait
// for the other's reply: the session waiting for the content is closed, and
// the next email opens another.
func TestAnEmailWhoseCallerGaveUpBehindAMarkSendsNothing(t *testing.T) {
	r := startScriptedRelay(t, "250 2.1.5 ok", "354 go ahead")
	holdMark, atMark := make(chan struct{}), make(chan struct{})
	r.holdMark, r.atMark = holdMark, atMark
	s, _ := r.sender(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	results := queueSends(t, r, s, map[string]context.Context{"evt-2": ctx}, "evt-1", "evt-2")
	<-atMark // evt-1's mark is in, evt-2's commands behind it
	cancel()
	select {
	case err := <-results["evt-2"]:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("evt-2, given up behind the mark: %v, want context.Canceled", err)
		}
	case <-time.After(waitLong):
		t.Error("evt-2's caller still waits for the reply to evt-1")
	}
	close(holdMark)
	if err := <-results["evt-1"]; err != nil {
		t.Errorf("evt-1: %v", err)
	}
	if _, err := s.Send(context.Background(), message("evt-3")); err != nil {
		t.Errorf("the next email: %v", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.messages != 2 || r.behindMark != 1 {
		t.Errorf("the relay got %d emails, %d with commands behind the mark; want 2 (evt-1, evt-3) and 1", r.messages, r.behindMark)
	}
}

// An email the relay refuses at its mark leaves the connection to the one
// behind it.
func TestAnEmailRefusedAtItsMarkLeavesTheConnectionToTheNext(t *testing.T) {
	r := startScriptedRelay(t, "250 2.1.5 ok", "354 go ahead")
	r.markReplies = []string{"554 5.7.1 rejected as spam"}
	s, m := r.sender(t)
	results := queueSends(t, r, s, nil, "evt-1", "evt-2")
	var se *Error
	if err := <-results["evt-1"]; !errors.As(err, &se) || se.Code != 554 || se.Stage != StageEndOfData {
		t.Errorf("the refused email: %v, want 554 at the end of data", err)
	}
	if err := <-results["evt-2"]; err != nil {
		t.Errorf("the email behind it: %v", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.behindMark != 1 {
		t.Errorf("%d marks had commands behind them, want 1", r.behindMark)
	}
	if got := testutil.ToFloat64(m.connections); got != 1 {
		t.Errorf("%v connections open, want the one kept", got)
	}
}

// A relay that takes only so many emails on a connection answers the next
// MAIL FROM with 421 and closes it, also when that MAIL FROM came behind a
// mark: the email goes out on a new connection, and each arrives once.
func TestARelayThatTakesFewEmailsPerConnectionGetsEachOnce(t *testing.T) {
	r := startScriptedRelay(t, "250 2.1.5 ok", "354 go ahead")
	r.perConnection = 2
	s, _ := r.sender(t)
	ids := []string{"evt-1", "evt-2", "evt-3", "evt-4", "evt-5"}
	results := queueSends(t, r, s, nil, ids...)
	for _, id := range ids {
		if err := <-results[id]; err != nil {
			t.Errorf("%s: %v", id, err)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.messages != 5 || r.behindMark == 0 {
		t.Errorf("the relay got %d emails, %d with commands behind the mark; want 5, and some", r.messages, r.behindMark)
	}
}

// failAfter takes left bytes, then fails every write.
type failAfter struct {
	left int
	got  bytes.Buffer
}

func (f *failAfter) Write(p []byte) (int, error) {
	n := min(len(p), f.left)
	f.got.Write(p[:n])
	f.left -= n
	if n < len(p) {
		return n, errors.New("connection reset")
	}
	return n, nil
}

// Whatever byte a write breaks at, writeContent says the end-of-data mark
// went out exactly when all of it did, also with the next email's commands
// behind it, and commands too long to go out with the mark stay unwritten.
func TestWriteContentKnowsWhetherTheMarkWentOut(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef\r\n"), 300) // past the buffer
	for _, size := range []int{0, 100, 4000, 4093, 4094, 5000} {
		commands := bytes.Repeat([]byte("x"), size)
		fits := len(endOfData)+size <= 4096
		whole := len(data) + len(endOfData)
		if fits {
			whole += size
		}
		for cut := 0; cut <= whole; cut++ {
			f := &failAfter{left: cut}
			markOut, commandsOut, err := writeContent(bufio.NewWriterSize(f, 4096), data, commands)
			sent := f.got.Bytes()
			realMark := len(sent) >= len(data)+len(endOfData) && bytes.Equal(sent[len(data):len(data)+len(endOfData)], endOfData)
			realCommands := size > 0 && len(sent) == len(data)+len(endOfData)+size
			where := fmt.Sprintf("commands of %d bytes, a write failing after %d of %d bytes", size, cut, whole)
			if markOut != realMark || commandsOut != realCommands {
				t.Fatalf("%s: markOut %v, commandsOut %v (err %v), but the mark went out: %v, the commands: %v", where, markOut, commandsOut, err, realMark, realCommands)
			}
			if (err == nil) != (cut == whole) {
				t.Fatalf("%s: err %v", where, err)
			}
		}
	}
}
