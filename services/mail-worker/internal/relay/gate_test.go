package relay

import (
	"context"
	"errors"
	"log/slog"
	"net/textproto"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/doorbell/doorbell/services/mail-worker/internal/smtpsend"
)

var (
	refused  = smtpsend.Classify(smtpsend.StageConnect, errors.New("connection refused"))
	deferred = smtpsend.Classify(smtpsend.StageRcpt, &textproto.Error{Code: 451, Msg: "4.3.0 try later"})
	rejected = smtpsend.Classify(smtpsend.StageRcpt, &textproto.Error{Code: 550, Msg: "5.1.1 no such user"})
)

func newGate(t *testing.T, probe Probe) (*Gate, context.Context) {
	t.Helper()
	g, err := New(probe, Config{ProbeBase: time.Millisecond, ProbeMax: 5 * time.Millisecond}, prometheus.NewRegistry(),
		slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.Watch(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return g, ctx
}

// admit waits for Admit, bounded.
func admit(t *testing.T, g *Gate) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := g.Admit(ctx)
	if err != nil {
		t.Fatalf("Admit: %v", err)
	}
	return n
}

func TestARelayFailurePausesUntilAProbeAndATrialPass(t *testing.T) {
	var up atomic.Bool
	g, ctx := newGate(t, func(context.Context) error {
		if up.Load() {
			return nil
		}
		return refused
	})
	if n := admit(t, g); n != -1 {
		t.Fatalf("a new Gate admits %d, want all", n)
	}
	if !g.Report(ctx, "e1", refused) || !g.Paused() || testutil.ToFloat64(g.paused) != 1 {
		t.Fatal("a refused connection did not pause the Gate")
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := g.Admit(short); err == nil {
		t.Fatal("a paused Gate admitted messages while the probes fail")
	}
	up.Store(true)
	if n := admit(t, g); n != 1 {
		t.Fatalf("after a passed probe the Gate admits %d, want one trial", n)
	}
	g.Report(ctx, "e1", nil)
	if n := admit(t, g); n != -1 || g.Paused() || testutil.ToFloat64(g.paused) != 0 {
		t.Fatalf("an accepted trial left the Gate admitting %d (paused %v)", n, g.Paused())
	}
}

func TestDeferralsOfDifferentEmailsInARowPause(t *testing.T) {
	g, ctx := newGate(t, func(context.Context) error { return nil })
	for range 2 {
		if g.Report(ctx, "e1", deferred) {
			t.Fatal("one email deferred twice counts as the relay's failure")
		}
	}
	g.Report(ctx, "e2", nil) // another email goes through: the deferrals were the emails'
	g.Report(ctx, "e1", deferred)
	if g.Report(ctx, "e2", deferred) {
		t.Fatal("two different emails already count as the relay's failure")
	}
	if !g.Report(ctx, "e3", deferred) || !g.Paused() {
		t.Fatalf("%d different emails deferred in a row did not pause the Gate", DefaultSuspects)
	}
	// The probe passes (MAIL FROM works); the trial email is deferred too.
	if n := admit(t, g); n != 1 {
		t.Fatalf("admits %d, want one trial", n)
	}
	if !g.Report(ctx, "e4", deferred) || !g.Paused() {
		t.Fatal("a deferred trial did not pause the Gate again")
	}
	// A refusal for good is an answer: the relay works.
	if n := admit(t, g); n != 1 {
		t.Fatalf("admits %d, want one trial", n)
	}
	if g.Report(ctx, "e5", rejected) || g.Paused() {
		t.Fatal("a trial refused for good did not open the Gate")
	}
}

func TestATrialWithNothingToSendOpensTheGate(t *testing.T) {
	g, ctx := newGate(t, func(context.Context) error { return nil })
	g.Report(ctx, "", refused)
	if n := admit(t, g); n != 1 {
		t.Fatalf("admits %d, want one trial", n)
	}
	g.TrialOver(ctx, true) // a duplicate: it never reached the relay
	if n := admit(t, g); n != 1 {
		t.Fatalf("after a trial that sent nothing the Gate admits %d, want another trial", n)
	}
	g.TrialOver(ctx, false) // nothing to pull
	if n := admit(t, g); n != -1 {
		t.Fatalf("an empty trial left the Gate admitting %d, want all", n)
	}
}

// A pull that waits for the trial to end is woken when the trial message
// turns out to have nothing to send, and becomes the next trial; it does
// not wait for a change of state that will never come.
func TestAPullWaitingOnATrialThatSendsNothingIsTheNextTrial(t *testing.T) {
	g, ctx := newGate(t, func(context.Context) error { return nil })
	g.Report(ctx, "", refused)
	if n := admit(t, g); n != 1 {
		t.Fatalf("admits %d, want one trial", n)
	}
	next := make(chan int, 1)
	go func() {
		wait, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		n, _ := g.Admit(wait)
		next <- n
	}()
	time.Sleep(50 * time.Millisecond) // the next pull now waits on the trial
	select {
	case n := <-next:
		t.Fatalf("a second pull was admitted (%d) while the trial was out", n)
	default:
	}
	g.TrialOver(ctx, true) // a sign-in from a known device: nothing to send
	if n := <-next; n != 1 {
		t.Fatalf("after a trial that sent nothing the waiting pull got %d, want the next trial", n)
	}
}
