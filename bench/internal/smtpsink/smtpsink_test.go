package smtpsink

import (
	"context"
	"net"
	"net/smtp"
	"strings"
	"sync"
	"testing"
	"time"
)

// serve runs a Server on a loopback port until the test ends and returns
// its address and the receipts it reported so far.
func serve(t *testing.T, delay time.Duration) (string, func() []Receipt) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		got  []Receipt
		done = make(chan error, 1)
	)
	srv := &Server{Delay: delay, Report: func(r Receipt) {
		mu.Lock()
		got = append(got, r)
		mu.Unlock()
	}}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String(), func() []Receipt {
		mu.Lock()
		defer mu.Unlock()
		return append([]Receipt(nil), got...)
	}
}

func TestNetSMTPDeliversAndTheSinkReportsRecipientEventIDAndSize(t *testing.T) {
	addr, receipts := serve(t, 0)
	msg := "From: a@example.com\r\nX-Doorbell-Event-Id: 0190-abc\r\nSubject: hi\r\n\r\n" +
		"X-Doorbell-Event-Id: not-a-header\r\n.leading dot\r\nbody\r\n"
	before := time.Now()
	if err := smtp.SendMail(addr, nil, "a@example.com", []string{"b@example.com", "c@example.com"}, []byte(msg)); err != nil {
		t.Fatalf("SendMail: %v", err)
	}
	got := receipts()
	if len(got) != 1 {
		t.Fatalf("got %d receipts, want 1", len(got))
	}
	r := got[0]
	if r.Rcpt != "b@example.com" || r.EventID != "0190-abc" {
		t.Errorf("receipt = %+v, want the first recipient and the header's event id", r)
	}
	// The client dot-stuffs ".leading dot" into "..leading dot".
	if want := len(msg) + 1; r.Size != want {
		t.Errorf("size = %d, want %d", r.Size, want)
	}
	if r.At.Before(before) || r.At.After(time.Now()) {
		t.Errorf("receipt time %v is not during the send", r.At)
	}
}

func TestDelayHoldsTheFinalReplyButNotTheReceipt(t *testing.T) {
	const delay = 200 * time.Millisecond
	addr, receipts := serve(t, delay)
	start := time.Now()
	if err := smtp.SendMail(addr, nil, "a@example.com", []string{"b@example.com"}, []byte("Subject: x\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("SendMail: %v", err)
	}
	if took := time.Since(start); took < delay {
		t.Errorf("send took %v, want at least the %v delay", took, delay)
	}
	if got := receipts(); len(got) != 1 || got[0].At.Sub(start) >= delay {
		t.Errorf("receipts = %+v, want one stamped before the delay", got)
	}
}

func TestReceiptLineRoundTrips(t *testing.T) {
	for _, r := range []Receipt{
		{At: time.Unix(0, 1_700_000_000_123_456_789), Size: 2248, Rcpt: "x@example.com", EventID: "0190-abc"},
		{At: time.Unix(0, 1), Size: 0, Rcpt: "-", EventID: ""},
	} {
		got, err := ParseReceipt(r.String())
		if err != nil || !got.At.Equal(r.At) || got.Size != r.Size || got.Rcpt != r.Rcpt || got.EventID != r.EventID {
			t.Errorf("ParseReceipt(%q) = %+v, %v; want %+v", r.String(), got, err, r)
		}
	}
	if _, err := ParseReceipt("1 2 3"); err == nil || !strings.Contains(err.Error(), "4 fields") {
		t.Errorf("a short line gave %v, want a field count error", err)
	}
}
