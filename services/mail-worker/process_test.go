package main

// Fault tests at process level: the real worker binary, built once, runs as
// a child process against an embedded NATS server and a test SMTP server on
// loopback that the test makes fail. Timings are shortened through the
// environment (AckWait 8 s, SMTP timeout 3 s, small backoffs); nothing
// asserts how long anything took.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/doorbell/doorbell/platform/natstest"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/deadletter"
	"github.com/doorbell/doorbell/services/mail-worker/internal/ledger"
	"github.com/doorbell/doorbell/services/mail-worker/internal/logtest"
	"github.com/doorbell/doorbell/services/mail-worker/internal/smtptest"
)

var (
	binDir    string // removed by TestMain
	buildOnce sync.Once
	workerBin string
	buildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mail-worker-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// workerBinary builds this package once per test run ("go build -o tmp
// ."), or returns $MAIL_WORKER_BIN when set, to hold another build (an
// earlier version, say) to these tests.
func workerBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("MAIL_WORKER_BIN"); bin != "" {
		return bin
	}
	buildOnce.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		}
		bin := filepath.Join(binDir, "mail-worker")
		out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		workerBin = bin
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return workerBin
}

// proc is one worker process.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	logs   *logtest.Buffer
	admin  string
	exited chan struct{}
	err    error // the exit status, once exited is closed
}

var adminRE = regexp.MustCompile(`msg="admin listening".* addr=(127\.0\.0\.1:\d+)`)

// startProc runs the worker binary with exactly env until the test ends.
func startProc(t *testing.T, env map[string]string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, cmd: exec.Command(workerBinary(t), args...), logs: &logtest.Buffer{}, exited: make(chan struct{})}
	for k, v := range env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(p.kill)
	if len(args) > 0 {
		return p // a command, not the worker
	}
	eventually(t, "the worker's admin server", func() (bool, string) {
		select {
		case <-p.exited:
			t.Fatalf("the worker exited early (%v):\n%s", p.err, p.logs.String())
		default:
		}
		m := adminRE.FindStringSubmatch(p.logs.String())
		if m == nil {
			return false, p.logs.String()
		}
		p.admin = "http://" + m[1]
		return true, ""
	})
	return p
}

// kill ends the process with SIGKILL, as a crash would.
func (p *proc) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// terminate sends SIGTERM and returns the exit status.
func (p *proc) terminate() error {
	p.t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return p.err
	case <-time.After(waitLong):
		p.t.Fatalf("the worker did not exit after SIGTERM:\n%s", p.logs.String())
		return nil
	}
}

// wait waits for a command to exit and returns its exit code.
func (p *proc) wait() int {
	p.t.Helper()
	select {
	case <-p.exited:
	case <-time.After(waitLong):
		p.t.Fatalf("%v did not exit:\n%s", p.cmd.Args, p.logs.String())
	}
	var exit *exec.ExitError
	if errors.As(p.err, &exit) {
		return exit.ExitCode()
	}
	if p.err != nil {
		p.t.Fatal(p.err)
	}
	return 0
}

func (p *proc) metric(name string) string {
	_, body := get(p.admin + "/metrics")
	for line := range strings.Lines(body) {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// stack is NATS with AUTH_EVENTS, as the auth-gateway leaves it, and a test
// SMTP server requiring STARTTLS.
type stack struct {
	t    *testing.T
	nats *natstest.Server
	js   jetstream.JetStream
	smtp *smtptest.Server
	env  map[string]string
}

func newStack(t *testing.T) *stack {
	t.Helper()
	natsSrv := natstest.StartServer(t)
	url := natsSrv.URL
	_, js := natstest.Connect(t, url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	natstest.CreateAuthEvents(t, js, 1)
	smtp := smtptest.Start(t, smtptest.Options{TLS: smtptest.RequireStartTLS})
	env := map[string]string{
		"WORKER_ADMIN_ADDR":       "127.0.0.1:0",
		"NATS_URL":                url,
		"SMTP_HOST":               smtp.Host,
		"SMTP_PORT":               strconv.Itoa(smtp.Port),
		"SMTP_CA_FILE":            smtp.CAFile,
		"SMTP_TLS":                "mandatory",
		"SMTP_TIMEOUT":            "3s",
		"SMTP_POOL_SIZE":          "4",
		"MAIL_FROM":               "Doorbell <doorbell@example.com>",
		"WORKER_ACK_WAIT":         "8s",
		"WORKER_BACKOFF_BASE":     "20ms",
		"WORKER_BACKOFF_MAX":      "200ms",
		"WORKER_RELAY_PROBE_BASE": "20ms",
		"WORKER_RELAY_PROBE_MAX":  "200ms",
		// Generous: a drain takes only as long as the sends in flight, and
		// a quarter of it (at most 3 s) is what the span flush gets.
		"SMTP_FINAL_TIMEOUT":      "10s",
		"WORKER_SHUTDOWN_TIMEOUT": "20s",
	}
	return &stack{t: t, nats: natsSrv, js: js, smtp: smtp, env: env}
}

// event is the sign-in of person i, who gets a welcome.
func event(i int) *eventsv1.UserAuthenticated {
	return &eventsv1.UserAuthenticated{
		EventId: fmt.Sprintf("0190c4b2-%04d-7abc-8def-0123456789ab", i), AuthenticatedAt: timestamppb.Now(),
		Issuer: "https://idp.example.com", Subject: fmt.Sprintf("user-%d", i), Provider: "dev",
		Email: fmt.Sprintf("user%d@example.com", i), Name: fmt.Sprintf("User %d", i),
		Client: &eventsv1.Client{Ip: "192.0.2.1", UserAgent: "Firefox", DeviceId: "d1"},
	}
}

func (s *stack) publish(ev *eventsv1.UserAuthenticated, msgID string) uint64 {
	s.t.Helper()
	b, err := proto.Marshal(ev)
	if err != nil {
		s.t.Fatal(err)
	}
	return s.publishRaw(b, msgID)
}

func (s *stack) publishRaw(data []byte, msgID string) uint64 {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	msg := nats.NewMsg(eventsv1.SubjectUserAuthenticated)
	msg.Data = data
	msg.Header.Set(eventsv1.HeaderContentType, eventsv1.ContentTypeProtobuf)
	ack, err := s.js.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID))
	if err != nil {
		s.t.Fatal(err)
	}
	return ack.Sequence
}

// publishPeople publishes the sign-ins of people from..to-1 and returns
// their event ids.
func (s *stack) publishPeople(from, to int) []string {
	s.t.Helper()
	var ids []string
	for i := from; i < to; i++ {
		ev := event(i)
		s.publish(ev, ev.EventId)
		ids = append(ids, ev.EventId)
	}
	return ids
}

// waitSettled waits until the worker's consumer has nothing pending and
// nothing unacknowledged.
func (s *stack) waitSettled() {
	s.t.Helper()
	eventually(s.t, "every message settled", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cons, err := s.js.Consumer(ctx, eventsv1.StreamAuthEvents, eventsv1.ConsumerMailWorker)
		if err != nil {
			return false, err.Error()
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return info.NumPending == 0 && info.NumAckPending == 0, fmt.Sprintf("%+v", info)
	})
}

func (s *stack) deadLetters() []deadletter.Entry {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	q, err := deadletter.Open(ctx, s.js)
	if err != nil {
		s.t.Fatal(err)
	}
	entries, err := q.List(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	return entries
}

// markedSent returns the Message-IDs of the emails of event(0) to
// event(n-1) that a worker would now read as sent: claimed in the people's
// records by a message at or below the consumer's ack floor.
func (s *stack) markedSent(n int) map[string]bool {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	kv, err := s.js.KeyValue(ctx, ledger.Bucket)
	if err != nil {
		s.t.Fatal(err)
	}
	cons, err := s.js.Consumer(ctx, eventsv1.StreamAuthEvents, eventsv1.ConsumerMailWorker)
	if err != nil {
		s.t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	marked := make(map[string]bool)
	for i := range n {
		ev := event(i)
		entry, err := kv.Get(ctx, ledger.Key(ev.GetIssuer(), ev.GetSubject()))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			s.t.Fatal(err)
		}
		var rec ledger.Record
		if err := json.Unmarshal(entry.Value(), &rec); err != nil {
			s.t.Fatal(err)
		}
		if e, ok := rec.Acked(ledger.Acks{Consumer: info.Created, Floor: info.AckFloor.Stream}).Email(ev.GetEventId()); ok && e.State == ledger.Sent {
			marked["<"+ev.GetEventId()+"@example.com>"] = true
		}
	}
	return marked
}

// duplicates checks that every id got at least one email and no other
// email was sent, and returns how many extra copies there were.
func (s *stack) duplicates(ids []string) int {
	s.t.Helper()
	counts := s.smtp.CountByMessageID()
	extra := 0
	for _, id := range ids {
		n := counts["<"+id+"@example.com>"]
		if n == 0 {
			s.t.Errorf("event %s: no email", id)
		}
		extra += max(0, n-1)
		delete(counts, "<"+id+"@example.com>")
	}
	for id, n := range counts {
		s.t.Errorf("unexpected email %s (%d)", id, n)
	}
	return extra
}

// The worker runs on a processor per eight SMTP connections, as far as
// the machine allows, unless GOMAXPROCS says otherwise (see
// processorsUnlessSet), and says so at start.
func TestProcessRunsOnAProcessorPerEightConnectionsUnlessGOMAXPROCSIsSet(t *testing.T) {
	s := newStack(t)
	most := runtime.NumCPU() // what Go uses in the worker, which has no GOMAXPROCS
	if os.Getenv("GOMAXPROCS") == "" {
		most = runtime.GOMAXPROCS(0) // also counts a container's CPU limit
	}
	for _, tt := range []struct{ set, pool, want string }{
		{"", "", "1"},
		{"", "16", strconv.Itoa(min(2, most))},
		{"3", "16", "3"},
		{"two", "", "1"}, // Go ignores it: as if unset
	} {
		env := maps.Clone(s.env)
		if tt.set != "" {
			env["GOMAXPROCS"] = tt.set
		}
		if tt.pool != "" {
			env["SMTP_POOL_SIZE"] = tt.pool
		}
		w := startProc(t, env)
		eventually(t, "the worker's Go metrics", func() (bool, string) {
			v := w.metric("go_sched_gomaxprocs_threads")
			return v == tt.want, fmt.Sprintf("GOMAXPROCS=%q SMTP_POOL_SIZE=%q: go_sched_gomaxprocs_threads %q, want %s", tt.set, tt.pool, v, tt.want)
		})
		if !strings.Contains(w.logs.String(), "gomaxprocs="+tt.want) {
			t.Errorf("GOMAXPROCS=%q SMTP_POOL_SIZE=%q: the start line does not say gomaxprocs=%s:\n%s", tt.set, tt.pool, tt.want, w.logs.String())
		}
		w.kill()
	}
}

// The worker collects garbage at GOGC=200 unless GOGC says otherwise (see
// lessGarbageCollectionUnlessSet), and says so at start.
func TestProcessCollectsGarbageLessOftenUnlessGOGCIsSet(t *testing.T) {
	s := newStack(t)
	for _, tt := range []struct{ set, want string }{{"", "200"}, {"100", "100"}} {
		env := maps.Clone(s.env)
		if tt.set != "" {
			env["GOGC"] = tt.set
		}
		w := startProc(t, env)
		eventually(t, "the worker's Go metrics", func() (bool, string) {
			v := w.metric("go_gc_gogc_percent")
			return v == tt.want, fmt.Sprintf("GOGC=%q: go_gc_gogc_percent %q, want %s", tt.set, v, tt.want)
		})
		if !strings.Contains(w.logs.String(), "gogc="+tt.want) {
			t.Errorf("GOGC=%q: the start line does not say gogc=%s:\n%s", tt.set, tt.want, w.logs.String())
		}
		w.kill()
	}
}

func TestProcessSMTPOutageThenBack(t *testing.T) {
	s := newStack(t)
	s.smtp.SetDelay(20 * time.Millisecond)
	w := startProc(t, s.env)
	ids := s.publishPeople(0, 30)
	s.smtp.WaitForMessages(t, 5, waitLong)

	s.smtp.Refuse()
	eventually(t, "the worker pauses and keeps probing", func() (bool, string) {
		logs := w.logs.String()
		return w.metric("doorbell_mailworker_relay_paused") == "1" && strings.Count(logs, "SMTP relay still unusable") >= 5, logs
	})
	eventually(t, "/readyz reports the relay", func() (bool, string) {
		code, body := get(w.admin + "/readyz")
		return code == 503 && strings.Contains(body, "connection refused"), body
	})
	s.smtp.Accept(t)
	s.smtp.WaitForMessageIDs(t, 30, waitLong)
	s.waitSettled()

	if extra := s.duplicates(ids); extra != 0 {
		t.Errorf("%d duplicate emails", extra)
	}
	if dl := s.deadLetters(); len(dl) != 0 {
		t.Errorf("%d dead letters after an outage, want none", len(dl))
	}
	eventually(t, "the worker resumes", func() (bool, string) {
		code, body := get(w.admin + "/readyz")
		return code == 200 && w.metric("doorbell_mailworker_relay_paused") == "0", body
	})
	if v := w.metric(`doorbell_mailworker_retries_total{cause="email"}`); v != "0" {
		t.Errorf("retries_total{email} = %s: the outage was charged to emails", v)
	}
}

func TestProcessPermanentRejection(t *testing.T) {
	s := newStack(t)
	s.smtp.RejectRecipient("user3@example.com", 550, "5.1.1")
	w := startProc(t, s.env)
	ids := s.publishPeople(0, 10)
	s.smtp.WaitForMessageIDs(t, 9, waitLong)
	s.waitSettled()

	dl := s.deadLetters()
	if len(dl) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dl))
	}
	e := dl[0]
	if e.EventID() != ids[3] || e.Reason != "permanent" || e.Detail != "smtp 550 5.1.1 at rcpt to" || e.Attempts != 1 {
		t.Errorf("dead letter = reason %q detail %q attempts %d event %s", e.Reason, e.Detail, e.Attempts, e.EventID())
	}
	for k, vs := range e.Header {
		if strings.Contains(strings.Join(vs, ""), "@") {
			t.Errorf("dead-letter header %s shows an address: %v", k, vs)
		}
	}
	// The worker counts the dead letter after JetStream has the term (which
	// is all waitSettled sees), then logs the message's line.
	eventually(t, "the worker logs the rejected event", func() (bool, string) {
		logs := w.logs.String()
		return strings.Contains(logs, "event_id="+ids[3]+" kind=welcome result=failed"), logs
	})
	if v := w.metric(`doorbell_mailworker_deadletters_total{reason="permanent"}`); v != "1" {
		t.Errorf("deadletters_total{permanent} = %s", v)
	}
	if logs := w.logs.String(); strings.Contains(logs, "user3@example.com") {
		t.Errorf("the logs show the address:\n%s", logs)
	}

	// The mailbox exists again: the operator redrives the dead letter.
	s.smtp.RejectRecipient("user3@example.com", 0, "")
	redrive := startProc(t, map[string]string{"NATS_URL": s.env["NATS_URL"]}, "dlq", "redrive", "--all")
	if code := redrive.wait(); code != 0 {
		t.Fatalf("dlq redrive --all: exit %d\n%s", code, redrive.logs.String())
	}
	s.smtp.WaitForMessageIDs(t, 10, waitLong)
	s.waitSettled()
	if extra := s.duplicates(ids); extra != 0 {
		t.Errorf("%d duplicate emails", extra)
	}
	if dl := s.deadLetters(); len(dl) != 0 {
		t.Errorf("%d dead letters after the redrive", len(dl))
	}
}

func TestProcessKilledMidStreamAndRestarted(t *testing.T) {
	s := newStack(t)
	s.smtp.SetDelay(2 * time.Millisecond)
	w := startProc(t, s.env)
	ids := s.publishPeople(0, 200)
	s.smtp.WaitForMessageIDs(t, 50, waitLong)
	w.kill()
	// What the dead worker had written is still read from its sockets: the
	// relay has all it will get from it once those sessions end.
	eventually(t, "the dead worker's SMTP sessions end", func() (bool, string) {
		return s.smtp.Active() == 0, fmt.Sprintf("%d sessions", s.smtp.Active())
	})
	storedAtKill := s.smtp.CountByMessageID()
	markedAtKill := s.markedSent(200)

	w2 := startProc(t, s.env)
	defer func() {
		if t.Failed() {
			for line := range strings.Lines(w2.logs.String()) {
				if !strings.Contains(line, "result=sent") {
					t.Log(line)
				}
			}
		}
	}()
	s.smtp.WaitForMessageIDs(t, 200, waitLong)
	s.waitSettled()
	extra := s.duplicates(ids)
	t.Logf("killed after %d emails (%d marked sent); %d duplicates", len(storedAtKill), len(markedAtKill), extra)
	// Only a send accepted by the relay but not yet marked at the kill can go
	// out twice (mail-worker README, "Delivery semantics"), each holding a
	// handler.
	for id, n := range s.smtp.CountByMessageID() {
		if n > 1 && (storedAtKill[id] == 0 || markedAtKill[id]) {
			t.Errorf("%s went out %d times; at the kill the relay had it %d times and the record said sent: %v",
				id, n, storedAtKill[id], markedAtKill[id])
		}
	}
	if extra > handlers(4) {
		t.Errorf("%d duplicates, want at most the worker's %d handlers", extra, handlers(4))
	}
	if dl := s.deadLetters(); len(dl) != 0 {
		t.Errorf("%d dead letters, want none", len(dl))
	}
}

func TestProcessSameEventPublishedTwice(t *testing.T) {
	s := newStack(t)
	s.smtp.SetDelay(10 * time.Millisecond)
	startProc(t, s.env)
	var ids []string
	for i := range 20 {
		ev := event(i)
		ids = append(ids, ev.EventId)
		s.publish(ev, ev.EventId)
		s.publish(ev, ev.EventId+"-again") // e.g. re-published from the gateway's spool after the dedup window
	}
	s.smtp.WaitForMessageIDs(t, 20, waitLong)
	s.waitSettled()
	if extra := s.duplicates(ids); extra != 0 {
		t.Errorf("%d duplicate emails", extra)
	}
}

func TestProcessMalformedPayload(t *testing.T) {
	s := newStack(t)
	w := startProc(t, s.env)
	ids := s.publishPeople(0, 3)
	garbage := []byte("\x00\x01 definitely not protobuf \xff")
	badSeq := s.publishRaw(garbage, "garbage-1")
	ids = append(ids, s.publishPeople(3, 6)...)
	s.smtp.WaitForMessageIDs(t, 6, waitLong)
	s.waitSettled()

	if extra := s.duplicates(ids); extra != 0 {
		t.Errorf("%d duplicate emails", extra)
	}
	dl := s.deadLetters()
	if len(dl) != 1 || dl[0].Reason != "undecodable" || string(dl[0].Data) != string(garbage) || dl[0].StreamSeq != badSeq {
		t.Fatalf("dead letters = %+v, want the garbage, undecodable", dl)
	}
	select {
	case <-w.exited:
		t.Fatalf("the worker exited: %v", w.err)
	default:
	}
	code, body := get(w.admin + "/healthz")
	if code != 200 {
		t.Errorf("/healthz = %d %s", code, body)
	}
}

func TestProcessTwoWorkersShareTheConsumer(t *testing.T) {
	s := newStack(t)
	s.smtp.SetDelay(5 * time.Millisecond)
	a := startProc(t, s.env)
	b := startProc(t, s.env)
	ids := s.publishPeople(0, 100)
	s.smtp.WaitForMessageIDs(t, 100, waitLong)
	s.waitSettled()
	if extra := s.duplicates(ids); extra != 0 {
		t.Errorf("%d duplicate emails", extra)
	}
	sentBy := func(p *proc) int { return strings.Count(p.logs.String(), "result=sent") }
	eventually(t, "the workers log 100 emails sent in all", func() (bool, string) {
		return sentBy(a)+sentBy(b) == 100, fmt.Sprintf("%d + %d", sentBy(a), sentBy(b))
	})
	t.Logf("worker a sent %d, worker b sent %d", sentBy(a), sentBy(b))
}

func TestProcessGracefulShutdown(t *testing.T) {
	s := newStack(t)
	s.smtp.SetDelay(200 * time.Millisecond)
	w := startProc(t, s.env)
	ids := s.publishPeople(0, 20)
	s.smtp.WaitForMessages(t, 2, waitLong)
	if err := w.terminate(); err != nil {
		t.Fatalf("exit status after SIGTERM = %v, want 0\n%s", err, w.logs.String())
	}
	logs := w.logs.String()
	for _, want := range []string{"shutting down", "consumer drained", "stopped"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	// Every email that arrived was acknowledged before the exit.
	if before := len(s.smtp.Messages()); strings.Count(logs, "result=sent") != before {
		t.Errorf("%d emails arrived but the worker logged %d as sent", before, strings.Count(logs, "result=sent"))
	}

	startProc(t, s.env)
	s.smtp.WaitForMessageIDs(t, 20, waitLong)
	s.waitSettled()
	if extra := s.duplicates(ids); extra != 0 {
		t.Errorf("%d duplicate emails", extra)
	}
}

// The relay stores each email but answers the final "." only after a
// content scan longer than SMTP_TIMEOUT: one copy each, nothing retried.
func TestProcessSlowContentFilterGetsOneCopy(t *testing.T) {
	s := newStack(t)
	s.env["SMTP_TIMEOUT"] = "1s"
	s.smtp.SetReplyDelay(2500 * time.Millisecond)
	startProc(t, s.env)
	ids := s.publishPeople(0, 3)
	s.smtp.WaitForMessageIDs(t, 3, waitLong)
	s.waitSettled()
	if extra := s.duplicates(ids); extra != 0 {
		t.Errorf("%d extra copies stored by the relay", extra)
	}
	if dl := s.deadLetters(); len(dl) != 0 {
		t.Errorf("%d dead letters, want none", len(dl))
	}
}

// The relay defers every recipient (451) for longer than the emails'
// backoff: nothing is dead-lettered, everything arrives once after it
// recovers.
func TestProcessRelayWideDeferralLosesNothing(t *testing.T) {
	s := newStack(t)
	s.smtp.FailNext(1<<20, 451)
	w := startProc(t, s.env)
	ids := s.publishPeople(0, 5)
	time.Sleep(3 * time.Second) // the outage: many times WORKER_BACKOFF_MAX (200ms)
	s.smtp.FailNext(0, 451)
	eventually(t, "every email delivered, or a dead letter", func() (bool, string) {
		return len(s.smtp.CountByMessageID()) == len(ids) || len(s.deadLetters()) > 0, w.logs.String()
	})
	s.waitSettled()
	if dl := s.deadLetters(); len(dl) != 0 {
		t.Fatalf("%d dead letters after a relay-wide deferral, want none:\n%s", len(dl), w.logs.String())
	}
	if extra := s.duplicates(ids); extra != 0 {
		t.Errorf("%d extra copies", extra)
	}
}

// SIGTERM while the relay scans an email it already stored: the worker
// waits for the reply, records and acknowledges it, and exits 0; the next
// worker sends nothing again.
func TestProcessSIGTERMDuringASlowSendFinishesIt(t *testing.T) {
	s := newStack(t)
	s.env["SMTP_TIMEOUT"] = "1s"
	s.env["SMTP_FINAL_TIMEOUT"] = "30s"
	s.env["WORKER_SHUTDOWN_TIMEOUT"] = "45s"
	s.smtp.SetReplyDelay(3 * time.Second)
	w := startProc(t, s.env)
	ids := s.publishPeople(0, 1)
	s.smtp.WaitForMessages(t, 1, waitLong) // stored; the reply is pending
	if err := w.terminate(); err != nil {
		t.Fatalf("exit status after SIGTERM = %v, want 0\n%s", err, w.logs.String())
	}
	if logs := w.logs.String(); !strings.Contains(logs, "result=sent") {
		t.Errorf("the send in flight was not finished:\n%s", logs)
	}
	startProc(t, s.env)
	s.waitSettled()
	if extra := s.duplicates(ids); extra != 0 {
		t.Errorf("%d extra copies", extra)
	}
}

// The network to NATS breaks (a partition: bytes are lost, not queued)
// right after the relay took an email, before the worker recorded it, for
// longer than AckWait: the worker keeps trying, and one copy goes out.
func TestProcessNATSPartitionJustAfterTheRelayAccepted(t *testing.T) {
	s := newStack(t)
	proxy := natstest.StartProxy(t, s.env["NATS_URL"])
	s.env["NATS_URL"] = proxy.URL
	s.smtp.SetReplyDelay(time.Second)
	w := startProc(t, s.env)
	ids := s.publishPeople(0, 1)
	s.smtp.WaitForMessages(t, 1, waitLong) // stored; the 250 comes in a second
	proxy.Partition()
	time.Sleep(12 * time.Second) // longer than AckWait (8 s) and than any one write may take
	proxy.Heal()
	eventually(t, "the worker reconnected", func() (bool, string) {
		return strings.Contains(w.logs.String(), "nats reconnected"), w.logs.String()
	})
	eventually(t, "the email recorded and acknowledged", func() (bool, string) {
		logs := w.logs.String()
		return strings.Contains(logs, "result=sent") || strings.Contains(logs, "result=duplicate"), logs
	})
	s.waitSettled()
	if extra := s.duplicates(ids); extra != 0 {
		t.Errorf("%d extra copies:\n%s", extra, w.logs.String())
	}
}
