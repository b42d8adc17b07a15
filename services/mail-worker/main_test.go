package main

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/doorbell/doorbell/platform/natstest"
	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/ledger"
	"github.com/doorbell/doorbell/services/mail-worker/internal/logtest"
	"github.com/doorbell/doorbell/services/mail-worker/internal/smtptest"
)

const waitLong = 60 * time.Second

// eventually polls cond until it holds; the test fails after waitLong.
// One processor per eight connections, rounded up, within what Go would
// use.
func TestProcessors(t *testing.T) {
	for _, tt := range []struct{ pool, most, want int }{
		{1, 2, 1}, {4, 2, 1}, {8, 2, 1}, {9, 2, 2}, {16, 2, 2}, {16, 1, 1}, {64, 16, 8}, {64, 4, 4},
	} {
		if got := processors(tt.pool, tt.most); got != tt.want {
			t.Errorf("processors(%d connections, at most %d) = %d, want %d", tt.pool, tt.most, got, tt.want)
		}
	}
}

func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s; last: %s", what, waitLong, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

type worker struct {
	admin string // http://127.0.0.1:port
	logs  *logtest.Buffer
	stop  func() error
}

// startWorker runs the real wiring with env until the test ends or stop is
// called.
func startWorker(t *testing.T, env map[string]string) *worker {
	t.Helper()
	logs := &logtest.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, func(k string) string { return env[k] }, logs) }()

	var stopOnce sync.Once
	var stopErr error
	stop := func() error {
		stopOnce.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(waitLong):
				t.Errorf("run did not return after cancel; logs:\n%s", logs.String())
			}
		})
		return stopErr
	}
	t.Cleanup(func() { _ = stop() })

	re := regexp.MustCompile(`msg="admin listening".* addr=(127\.0\.0\.1:\d+)`)
	var addr string
	eventually(t, "admin listening", func() (bool, string) {
		m := re.FindStringSubmatch(logs.String())
		if m == nil {
			select {
			case err := <-done:
				t.Fatalf("run returned early: %v\n%s", err, logs.String())
			default:
			}
			return false, logs.String()
		}
		addr = m[1]
		return true, ""
	})
	return &worker{admin: "http://" + addr, logs: logs, stop: stop}
}

func baseEnv(natsURL string, smtp *smtptest.Server) map[string]string {
	return map[string]string{
		"WORKER_ADMIN_ADDR":       "127.0.0.1:0",
		"NATS_URL":                natsURL,
		"SMTP_HOST":               smtp.Host,
		"SMTP_PORT":               strconv.Itoa(smtp.Port),
		"SMTP_CA_FILE":            smtp.CAFile,
		"SMTP_TIMEOUT":            "5s",
		"MAIL_FROM":               "Doorbell <doorbell@example.com>",
		"WORKER_BACKOFF_BASE":     "10ms",
		"WORKER_BACKOFF_MAX":      "100ms",
		"WORKER_ACK_WAIT":         "30s",
		"SMTP_FINAL_TIMEOUT":      "10s",
		"WORKER_SHUTDOWN_TIMEOUT": "20s", // a drain takes only as long as the sends in flight
	}
}

func TestWorkerEndToEnd(t *testing.T) {
	natsURL := natstest.Start(t)
	smtp := smtptest.Start(t, smtptest.Options{TLS: smtptest.RequireStartTLS})
	w := startWorker(t, baseEnv(natsURL, smtp))

	if code, body := get(w.admin + "/healthz"); code != 200 || !strings.Contains(body, `"status":"ok"`) {
		t.Errorf("/healthz = %d %s", code, body)
	}
	// No stream yet: not ready, and /readyz says why.
	eventually(t, "/readyz reports the missing stream", func() (bool, string) {
		code, body := get(w.admin + "/readyz")
		return code == 503 && strings.Contains(body, "waiting for stream AUTH_EVENTS"), body
	})

	_, js := natstest.Connect(t, natsURL)
	natstest.CreateAuthEvents(t, js, 1)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	eventually(t, "/readyz turns ready", func() (bool, string) {
		code, body := get(w.admin + "/readyz")
		return code == 200, body
	})

	data, err := proto.Marshal(&eventsv1.UserAuthenticated{
		EventId: "0190c4b2-0009-7abc-8def-0123456789ab", AuthenticatedAt: timestamppb.Now(),
		Issuer: "https://idp.example.com", Subject: "u1", Email: "ann@example.com", Name: "Ann",
		Client: &eventsv1.Client{DeviceId: "d1", Ip: "192.0.2.1", UserAgent: "Firefox"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, eventsv1.SubjectUserAuthenticated, data,
		jetstream.WithMsgID("0190c4b2-0009-7abc-8def-0123456789ab")); err != nil {
		t.Fatal(err)
	}
	msgs := smtp.WaitForMessages(t, 1, waitLong)
	if got := msgs[0].Header(t).Get("Message-Id"); got != "<0190c4b2-0009-7abc-8def-0123456789ab@example.com>" {
		t.Errorf("Message-ID = %q", got)
	}
	eventually(t, "/metrics counts the email", func() (bool, string) {
		_, body := get(w.admin + "/metrics")
		return strings.Contains(body, `doorbell_mailworker_emails_total{kind="welcome",result="sent"} 1`), body
	})
	_, metrics := get(w.admin + "/metrics")
	for _, want := range []string{
		`doorbell_mailworker_events_received_total 1`,
		`doorbell_mailworker_emails_total{kind="new_device",result="failed"} 0`,
		`doorbell_mailworker_decisions_total{kind="none"} 0`,
		`doorbell_mailworker_deadletters_total{reason="expired"} 0`,
		`doorbell_mailworker_deadletters_total{reason="poison"} 0`,
		`doorbell_mailworker_deadletters_total{reason="unconfirmed"} 0`,
		`doorbell_mailworker_send_attempts_total{outcome="success"} 1`,
		`doorbell_mailworker_send_attempts_total{outcome="config"} 0`,
		`doorbell_mailworker_send_attempts_total{outcome="maybe_sent"} 0`,
		`doorbell_mailworker_deadletters_total{reason="undecodable"} 0`,
		`doorbell_mailworker_relay_paused 0`,
		`doorbell_mailworker_smtp_pool_wait_seconds_count 1`,
		`doorbell_mailworker_retries_total{cause="email"} 0`,
		`doorbell_mailworker_retries_total{cause="relay"} 0`,
		`doorbell_mailworker_smtp_connections_open 1`,
		`doorbell_mailworker_login_to_email_seconds_count 1`,
		`doorbell_mailworker_smtp_send_duration_seconds_count 1`,
		`doorbell_mailworker_last_success_timestamp_seconds`,
		`doorbell_mailworker_consumer_pending_messages 0`,
		`go_goroutines`,
		`process_start_time_seconds`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	if err := w.stop(); err != nil {
		t.Fatalf("run returned %v on shutdown", err)
	}
	logs := w.logs.String()
	for _, want := range []string{"SMTP relay reachable", "consumer drained", "stopped"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "ann@example.com") {
		t.Errorf("logs contain the email address:\n%s", logs)
	}
}

func TestWorkerReportsAnUnusableRelayClearly(t *testing.T) {
	tests := []struct {
		name      string
		server    smtptest.Options
		env       map[string]string
		wantLog   []string
		wantReady string
	}{
		{name: "nothing listens",
			server:    smtptest.Options{TLS: smtptest.RequireStartTLS},
			env:       map[string]string{"SMTP_PORT": "closed"},
			wantLog:   []string{"connection refused", `hint="nothing listens on SMTP_HOST:SMTP_PORT"`},
			wantReady: `"smtp":"smtp relay unusable at connect (connection refused)"`},
		{name: "wrong password",
			server:    smtptest.Options{TLS: smtptest.RequireStartTLS, Username: "worker", Password: "s3cret"},
			env:       map[string]string{"SMTP_USERNAME": "worker", "SMTP_PASSWORD": "hunter2"},
			wantLog:   []string{"auth=auto", "smtp 535 5.7.8", "check SMTP_USERNAME, SMTP_PASSWORD"},
			wantReady: `"smtp":"smtp configuration problem at auth (smtp 535 5.7.8)"`},
		{name: "implicit TLS against a STARTTLS port",
			server:    smtptest.Options{TLS: smtptest.RequireStartTLS},
			env:       map[string]string{"SMTP_TLS": "implicit"},
			wantLog:   []string{"tls=implicit", "not a tls server", "use SMTP_TLS=mandatory (STARTTLS) for 587"},
			wantReady: `"smtp":"smtp configuration problem at connect (not a tls server)"`},
		{name: "a mechanism the relay does not offer",
			server:    smtptest.Options{TLS: smtptest.RequireStartTLS, Username: "worker", Password: "s3cret"},
			env:       map[string]string{"SMTP_USERNAME": "worker", "SMTP_PASSWORD": "s3cret", "SMTP_AUTH": "cram-md5"},
			wantLog:   []string{"auth=cram-md5", "auth mechanism not offered", "set SMTP_AUTH=auto"},
			wantReady: `"smtp":"smtp configuration problem at auth (auth mechanism not offered)"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			natsURL := natstest.Start(t)
			smtp := smtptest.Start(t, tt.server)
			env := baseEnv(natsURL, smtp)
			for k, v := range tt.env {
				env[k] = v
			}
			if env["SMTP_PORT"] == "closed" {
				env["SMTP_PORT"] = strconv.Itoa(smtptest.ClosedPort(t))
			}
			w := startWorker(t, env)
			eventually(t, "an ERROR log names the relay, the cause and what to check", func() (bool, string) {
				logs := w.logs.String()
				ok := strings.Contains(logs, `level=ERROR msg="SMTP relay is not usable`) &&
					strings.Contains(logs, "host=127.0.0.1 port="+env["SMTP_PORT"])
				for _, want := range tt.wantLog {
					ok = ok && strings.Contains(logs, want)
				}
				return ok, logs
			})
			eventually(t, "/readyz reports SMTP", func() (bool, string) {
				code, body := get(w.admin + "/readyz")
				return code == 503 && strings.Contains(body, tt.wantReady), body
			})
			eventually(t, "the worker pulls nothing and probes", func() (bool, string) {
				_, body := get(w.admin + "/metrics")
				return strings.Contains(body, "doorbell_mailworker_relay_paused 1"), body
			})
			if err := w.stop(); err != nil {
				t.Fatalf("run returned %v on shutdown", err)
			}
			if logs := w.logs.String(); strings.Contains(logs, "hunter2") || strings.Contains(logs, "s3cret") {
				t.Errorf("the logs show a password:\n%s", logs)
			}
		})
	}
}

func TestRunRefusesBadConfiguration(t *testing.T) {
	err := run(context.Background(), func(k string) string {
		return map[string]string{"SMTP_TLS": "starttls", "WORKER_RETRY_HORIZON": "0", "SMTP_PASSWORD": "hunter2"}[k]
	}, io.Discard)
	if err == nil {
		t.Fatal("run accepted a bad configuration")
	}
	for _, want := range []string{"SMTP_TLS", "WORKER_RETRY_HORIZON", "SMTP_PASSWORD"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error reveals the password: %v", err)
	}
}

// In a three-node cluster the worker keeps what it owns on every node
// (NATS_STREAM_REPLICAS=auto, the default, finds three), and a later start
// asking for fewer does not lower the count. On a single server auto is one
// (every other test).
func TestWorkerReplicatesWhatItOwnsInACluster(t *testing.T) {
	natsURL := natstest.StartCluster(t, 3).URL()
	_, js := natstest.Connect(t, natsURL)
	natstest.CreateAuthEvents(t, js, 3)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	smtp := smtptest.Start(t, smtptest.Options{TLS: smtptest.RequireStartTLS})
	owned := []string{eventsv1.StreamDeadLetter, "KV_" + ledger.Bucket}
	wantReplicas := func(when string) {
		t.Helper()
		for _, name := range owned {
			s, err := js.Stream(ctx, name)
			if err != nil {
				t.Fatalf("%s: stream %s: %v", when, name, err)
			}
			if got := s.CachedInfo().Config.Replicas; got != 3 {
				t.Errorf("%s: stream %s has %d replicas, want 3", when, name, got)
			}
		}
	}
	for _, replicas := range []string{"", "1"} { // the default, then fewer
		env := baseEnv(natsURL, smtp)
		if replicas != "" {
			env["NATS_STREAM_REPLICAS"] = replicas
		}
		w := startWorker(t, env)
		eventually(t, "the worker ready on the cluster", func() (bool, string) {
			code, body := get(w.admin + "/readyz")
			return code == http.StatusOK, body
		})
		wantReplicas("NATS_STREAM_REPLICAS=" + replicas)
		if err := w.stop(); err != nil {
			t.Fatalf("run: %v", err)
		}
	}
}
