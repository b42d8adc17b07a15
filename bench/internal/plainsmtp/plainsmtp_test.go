package plainsmtp_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"

	"github.com/doorbell/doorbell/bench/internal/plainsmtp"
	"github.com/doorbell/doorbell/bench/internal/smtpsink"
)

func TestSendDeliversEveryMessageOfTheAskedSize(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		got = map[string]smtpsink.Receipt{}
	)
	srv := &smtpsink.Server{Report: func(r smtpsink.Receipt) {
		mu.Lock()
		got[r.EventID] = r
		mu.Unlock()
	}}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	const n, size = 40, 2250
	err = plainsmtp.Send(ctx, ln.Addr().String(), 3, n, func(i int) plainsmtp.Message {
		to := fmt.Sprintf("p%d@example.com", i)
		return plainsmtp.Message{From: "d@example.com", To: to, Data: plainsmtp.Compose("d@example.com", to, fmt.Sprint(i), size)}
	})
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != n {
		t.Fatalf("%d distinct messages arrived, want %d", len(got), n)
	}
	for id, r := range got {
		if r.Size < size-10 || r.Size > size+10 || r.Rcpt != "p"+id+"@example.com" {
			t.Errorf("message %s: %+v, want about %d bytes to its own recipient", id, r, size)
		}
	}
}
