package natstest

import (
	"net"
	"testing"
	"time"
)

// A server on a chosen port that is briefly taken (a client dialling the
// port can connect to itself when the kernel gives it that port as its
// source port) starts once the port is free again, rather than waiting out
// the minute and failing the test.
func TestRunOnAPortTakenForAMomentStartsOnceItIsFree(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	released := make(chan struct{})
	go func() {
		defer close(released)
		time.Sleep(time.Second)
		ln.Close()
	}()
	s := RunOn(t, port)
	<-released
	if got := s.Addr().(*net.TCPAddr).Port; got != port {
		t.Errorf("server on port %d, want %d", got, port)
	}
}
