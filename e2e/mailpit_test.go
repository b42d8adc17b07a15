package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// Delivering through Mailpit: the SMTP server docker-compose.yml uses as the
// relay, which this repository did not write (bin/mailpit, built by make
// from the version pinned in tools/mailpit). It requires STARTTLS with a
// certificate made here, and its chaos triggers make it answer RCPT TO with
// the error a test asks for.

type mailpit struct {
	t      *testing.T
	api    string // http://127.0.0.1:port
	host   string
	port   int
	caFile string
}

func startMailpit(t *testing.T) *mailpit {
	t.Helper()
	bin := builtTool(t, "mailpit")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeSelfSignedCert(t, certFile, keyFile)
	m := &mailpit{t: t, host: "127.0.0.1", port: freePort(t), caFile: certFile}
	m.api = fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	startProcess(t, "mailpit", bin, nil,
		"--smtp", net.JoinHostPort(m.host, strconv.Itoa(m.port)),
		"--listen", strings.TrimPrefix(m.api, "http://"),
		"--database", filepath.Join(dir, "mailpit.db"),
		"--smtp-tls-cert", certFile, "--smtp-tls-key", keyFile,
		"--smtp-require-starttls",
		"--enable-chaos",
	)
	waitReady(t, "mailpit", m.api+"/readyz")
	return m
}

// workerEnv points the worker at Mailpit, STARTTLS required, with short
// backoffs so that retries come quickly.
func (m *mailpit) workerEnv() []string {
	return []string{
		"SMTP_HOST=" + m.host,
		"SMTP_PORT=" + strconv.Itoa(m.port),
		"SMTP_TLS=mandatory",
		"SMTP_CA_FILE=" + m.caFile,
		"WORKER_BACKOFF_BASE=100ms",
		"WORKER_BACKOFF_MAX=500ms",
	}
}

// recipientError makes Mailpit answer every RCPT TO with code (0: none).
func (m *mailpit) recipientError(code int) {
	m.t.Helper()
	body := map[string]any{"Recipient": map[string]int{"ErrorCode": code, "Probability": 100}}
	if code == 0 {
		body = map[string]any{"Recipient": map[string]int{"ErrorCode": 451, "Probability": 0}}
	}
	if err := callJSON(http.MethodPut, m.api+"/api/v1/chaos", body, nil); err != nil {
		m.t.Fatal(err)
	}
}

type mailpitMessage struct {
	MessageID string
	Subject   string
	To        []struct{ Address string }
}

// mailTo returns the messages Mailpit holds for addr.
func (m *mailpit) mailTo(addr string) []mailpitMessage {
	m.t.Helper()
	var list struct {
		Messages []mailpitMessage `json:"messages"`
	}
	if err := callJSON(http.MethodGet, m.api+"/api/v1/messages?limit=1000", nil, &list); err != nil {
		m.t.Fatal(err)
	}
	var out []mailpitMessage
	for _, msg := range list.Messages {
		for _, to := range msg.To {
			if strings.EqualFold(to.Address, addr) {
				out = append(out, msg)
				break
			}
		}
	}
	return out
}

// workerCounter reads one sample of the worker's /metrics (0 when absent).
func (s *stack) workerCounter(series string) float64 {
	s.t.Helper()
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get("http://" + s.wkAdmin + "/metrics")
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	match := re.FindSubmatch(body)
	if match == nil {
		return 0
	}
	v, err := strconv.ParseFloat(string(match[1]), 64)
	if err != nil {
		s.t.Fatalf("%s: %v", series, err)
	}
	return v
}

// deadLetters returns the reason header and the event of every letter in
// MAIL_DEADLETTER.
func (s *stack) deadLetters(ctx context.Context) map[string]string {
	s.t.Helper()
	st, err := s.jetStream().Stream(ctx, eventsv1.StreamDeadLetter)
	if err != nil {
		return nil // the worker makes it at start; not there yet
	}
	info, err := st.Info(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	byEmail := map[string]string{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		raw, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		var ev eventsv1.UserAuthenticated
		if err := proto.Unmarshal(raw.Data, &ev); err != nil {
			s.t.Fatalf("dead letter %d does not hold a UserAuthenticated: %v", seq, err)
		}
		byEmail[ev.Email] = raw.Header.Get("Doorbell-Dlq-Reason") + ": " + raw.Header.Get("Doorbell-Dlq-Detail")
	}
	return byEmail
}

func TestDeliveryThroughMailpitSurvivesItsFailures(t *testing.T) {
	relay := startMailpit(t)
	s := startStack(t, relay.workerEnv()...)
	ctx := context.Background()
	signIn := func(email string) {
		t.Helper()
		if p := newBrowser(t).signIn(s.publicURL, email, true); p.status != http.StatusOK {
			t.Fatalf("sign-in of %s: status %d\n%s", email, p.status, p.body)
		}
	}

	// A healthy relay: the welcome arrives, over STARTTLS (Mailpit
	// refuses mail without it here).
	const first = "ada@example.test"
	signIn(first)
	eventually(t, 60*time.Second, "the first welcome in Mailpit", func() bool { return len(relay.mailTo(first)) > 0 })

	// 451 on RCPT TO: the worker retries, and once Mailpit takes mail
	// again the email arrives, once.
	relay.recipientError(451)
	const deferred = "grace@example.test"
	transient := `doorbell_mailworker_send_attempts_total{outcome="transient"}`
	before := s.workerCounter(transient)
	signIn(deferred)
	eventually(t, 60*time.Second, "the worker to retry after 451 answers", func() bool {
		return s.workerCounter(transient) >= before+2
	})
	if n := len(relay.mailTo(deferred)); n != 0 {
		t.Fatalf("%d emails accepted while Mailpit answered 451", n)
	}
	relay.recipientError(0)
	eventually(t, 60*time.Second, "the deferred welcome once Mailpit accepts again", func() bool {
		return len(relay.mailTo(deferred)) > 0
	})

	// 550 on RCPT TO: one dead letter saying why, no email, and the queue
	// keeps flowing for the next person.
	relay.recipientError(550)
	const rejected = "mallory@example.test"
	signIn(rejected)
	eventually(t, 60*time.Second, "a dead letter for the rejected address", func() bool {
		_, ok := s.deadLetters(ctx)[rejected]
		return ok
	})
	relay.recipientError(0)
	const next = "katherine@example.test"
	signIn(next)
	eventually(t, 60*time.Second, "the next person's welcome", func() bool { return len(relay.mailTo(next)) > 0 })
	s.waitConsumerIdle(ctx)

	letters := s.deadLetters(ctx)
	if reason := letters[rejected]; !strings.HasPrefix(reason, "permanent: ") || !strings.Contains(reason, "550") {
		t.Errorf("dead letter for %s says %q, want permanent with the 550", rejected, reason)
	}
	if len(letters) != 1 {
		t.Errorf("dead letters: %v, want only %s", letters, rejected)
	}
	for _, addr := range []string{first, deferred, next} {
		if got := relay.mailTo(addr); len(got) != 1 {
			t.Errorf("Mailpit holds %d emails for %s, want exactly 1", len(got), addr)
		}
	}
	if got := relay.mailTo(rejected); len(got) != 0 {
		t.Errorf("Mailpit holds %d emails for the rejected %s, want 0", len(got), rejected)
	}
	for _, ev := range s.publishedEvents(ctx) {
		if got := relay.mailTo(ev.Email); len(got) == 1 && !strings.Contains(got[0].MessageID, ev.EventId) {
			t.Errorf("Message-ID %q of %s does not derive from event %s", got[0].MessageID, ev.Email, ev.EventId)
		}
	}
}

// writeSelfSignedCert writes a certificate for 127.0.0.1 and localhost and
// its key, as PEM.
func writeSelfSignedCert(t *testing.T, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mailpit.e2e.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:    []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
}
