package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/doorbell/doorbell/devstack/devidp"
	"github.com/doorbell/doorbell/devstack/inbox"
	"github.com/doorbell/doorbell/devstack/natsdev"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// binaries holds the paths of the service binaries that TestMain builds once
// for the whole package: the tests run the real programs, as an operator would.
var binaries struct {
	gateway string
	worker  string
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "doorbell-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	binaries.gateway = filepath.Join(dir, "auth-gateway")
	binaries.worker = filepath.Join(dir, "mail-worker")
	for out, pkg := range map[string]string{
		binaries.gateway: "../services/auth-gateway",
		binaries.worker:  "../services/mail-worker",
	} {
		cmd := exec.Command("go", "build", "-o", out, ".")
		cmd.Dir = pkg
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: building %s: %v\n", pkg, err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// stack is one running Doorbell: embedded NATS, the dev IdP and dev inbox
// from devstack, and the two service binaries as child processes.
type stack struct {
	t         *testing.T
	dir       string
	natsPort  int
	nats      *natsdev.Server
	idp       *devidp.Server
	inbox     *inbox.Inbox
	gateway   *process
	worker    *process
	publicURL string
	gwAdmin   string
	wkAdmin   string
}

// startStack starts a whole Doorbell; extraEnv (NAME=value) is added to
// both services' environment.
func startStack(t *testing.T, extraEnv ...string) *stack {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	s := &stack{t: t, dir: t.TempDir(), natsPort: freePort(t)}
	s.startNATS()

	gwAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s.publicURL = "http://" + gwAddr
	var err error
	s.idp, err = devidp.Start(devidp.Config{
		Addr:         "127.0.0.1:0",
		ClientID:     "doorbell-e2e",
		ClientSecret: "e2e-client-secret",
		RedirectURIs: []string{s.publicURL + "/auth/callback"},
	}, logger)
	if err != nil {
		t.Fatalf("dev IdP: %v", err)
	}
	t.Cleanup(func() { s.idp.Close() })

	s.inbox, err = inbox.Start(inbox.Config{SMTPAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", TLS: true}, logger)
	if err != nil {
		t.Fatalf("dev inbox: %v", err)
	}
	t.Cleanup(func() { s.inbox.Close() })
	caFile := filepath.Join(s.dir, "inbox-ca.pem")
	if err := os.WriteFile(caFile, s.inbox.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	smtpHost, smtpPort, err := net.SplitHostPort(s.inbox.SMTPAddr())
	if err != nil {
		t.Fatal(err)
	}

	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i * 7)
	}
	s.gwAdmin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s.wkAdmin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	// Only the variables of docs/configuration.md (plus the dev inbox's CA), as an
	// operator would set them.
	s.gateway = startProcess(t, "gateway", binaries.gateway, append([]string{
		"GATEWAY_ADDR=" + gwAddr,
		"GATEWAY_PUBLIC_URL=" + s.publicURL,
		"GATEWAY_ADMIN_ADDR=" + s.gwAdmin,
		"GATEWAY_COOKIE_KEY=" + base64.StdEncoding.EncodeToString(key),
		"OIDC_ISSUER=" + s.idp.Issuer(),
		"OIDC_CLIENT_ID=" + s.idp.ClientID(),
		"OIDC_CLIENT_SECRET=" + s.idp.ClientSecret(),
		"NATS_URL=" + s.natsURL(),
		// Above the default (5s): a sign-in's publish waits for JetStream
		// on a shared, loaded machine.
		"GATEWAY_PUBLISH_TIMEOUT=15s",
	}, extraEnv...))
	s.worker = startProcess(t, "worker", binaries.worker, append([]string{
		"WORKER_ADMIN_ADDR=" + s.wkAdmin,
		"NATS_URL=" + s.natsURL(),
		"SMTP_HOST=" + smtpHost,
		"SMTP_PORT=" + smtpPort,
		"SMTP_TLS=mandatory",
		"SMTP_CA_FILE=" + caFile,
		"MAIL_FROM=Doorbell <doorbell@example.test>",
	}, extraEnv...))
	waitReady(t, "gateway", "http://"+s.gwAdmin+"/readyz")
	waitReady(t, "worker", "http://"+s.wkAdmin+"/readyz")
	return s
}

func (s *stack) natsURL() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.natsPort) }

// startNATS starts (or restarts, with the same port and store) the embedded
// NATS server.
func (s *stack) startNATS() {
	s.t.Helper()
	srv, err := natsdev.Start(natsdev.Config{Host: "127.0.0.1", Port: s.natsPort, StoreDir: filepath.Join(s.dir, "nats")})
	if err != nil {
		s.t.Fatalf("embedded NATS: %v", err)
	}
	s.nats = srv
	s.t.Cleanup(srv.Shutdown)
}

// jetStream connects a test client to the stack's NATS server.
func (s *stack) jetStream() jetstream.JetStream {
	s.t.Helper()
	nc, err := nats.Connect(s.natsURL())
	if err != nil {
		s.t.Fatalf("connect to NATS: %v", err)
	}
	s.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		s.t.Fatal(err)
	}
	return js
}

// publishedEvents returns every UserAuthenticated in the stream, oldest first.
func (s *stack) publishedEvents(ctx context.Context) []*eventsv1.UserAuthenticated {
	s.t.Helper()
	js := s.jetStream()
	st, err := js.Stream(ctx, eventsv1.StreamAuthEvents)
	if err != nil {
		s.t.Fatalf("stream %s: %v", eventsv1.StreamAuthEvents, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	var events []*eventsv1.UserAuthenticated
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		raw, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted or expired
		}
		var ev eventsv1.UserAuthenticated
		if err := proto.Unmarshal(raw.Data, &ev); err != nil {
			s.t.Fatalf("stream seq %d is not a UserAuthenticated: %v", seq, err)
		}
		events = append(events, &ev)
	}
	return events
}

// waitConsumerIdle waits until the mail-worker consumer has been delivered
// every event in the stream so far and has nothing pending and nothing
// waiting for an ack: every published event has been handled.
//
// NumPending alone is not enough: the server counts a stored message into
// the consumer's pending a moment after it acknowledges the publish, so
// right after a publish the consumer can look idle although it has not seen
// the event yet.
func (s *stack) waitConsumerIdle(ctx context.Context) {
	s.t.Helper()
	js := s.jetStream()
	st, err := js.Stream(ctx, eventsv1.StreamAuthEvents)
	if err != nil {
		s.t.Fatalf("stream %s: %v", eventsv1.StreamAuthEvents, err)
	}
	sinfo, err := st.Info(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	last := sinfo.State.LastSeq
	eventually(s.t, 60*time.Second, fmt.Sprintf("mail-worker consumer to finish its work up to stream sequence %d", last), func() bool {
		c, err := js.Consumer(ctx, eventsv1.StreamAuthEvents, eventsv1.ConsumerMailWorker)
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.Delivered.Stream >= last &&
			info.NumPending == 0 && info.NumAckPending == 0 && info.NumRedelivered == 0
	})
}

// mailTo returns the messages the inbox received for addr.
func (s *stack) mailTo(addr string) []inbox.Message {
	var out []inbox.Message
	for _, m := range s.inbox.Messages() {
		for _, to := range m.To {
			if strings.EqualFold(to, addr) {
				out = append(out, m)
				break
			}
		}
	}
	return out
}

// process is a service binary running as a child process. Its output is
// kept and shown when the test fails.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

func startProcess(t *testing.T, name, bin string, env []string, args ...string) *process {
	t.Helper()
	p := &process{name: name, out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "LOG_LEVEL=debug"}, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("---- %s output ----\n%s", name, p.out.String())
		}
	})
	return p
}

// stop sends SIGTERM and waits (bounded) for a clean exit.
func (p *process) stop(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			t.Errorf("%s did not exit cleanly on SIGTERM: %v", p.name, p.err)
		}
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s did not stop within 30s of SIGTERM", p.name)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// freePort returns a loopback port free just now, never one it returned
// before in this process: the kernel can hand a port just closed out
// again, and two parts of one stack would then share it.
func freePort(t *testing.T) int {
	t.Helper()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if _, taken := portsHandedOut.LoadOrStore(port, true); !taken {
			return port
		}
	}
}

var portsHandedOut sync.Map

func waitReady(t *testing.T, name, url string) {
	t.Helper()
	eventually(t, 60*time.Second, name+" to report ready at "+url, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// eventually polls cond until it holds or the (generous) deadline passes.
// It bounds a wait; it never asserts how fast something happened. A
// lastSeen function, when given, says in the failure what the last poll saw.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool, lastSeen ...func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			seen := ""
			for _, f := range lastSeen {
				seen += "; last seen:\n" + f()
			}
			t.Fatalf("gave up after %s waiting for %s%s", within, what, seen)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
