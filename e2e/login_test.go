package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A person signs in through the gateway with a verified address: they see
// themselves signed in, the gateway published one event, and exactly one
// welcome email reached their inbox, with a Message-ID derived from the event.
func TestSignInSendsOneWelcomeEmail(t *testing.T) {
	s := startStack(t)
	ctx := context.Background()
	const email = "ada@example.test"

	b := newBrowser(t)
	landed := b.signIn(s.publicURL, email, true)
	if landed.status != http.StatusOK || !strings.Contains(landed.body, "Signed in as") || !strings.Contains(landed.body, email) {
		t.Fatalf("after sign-in: %s status %d, want the signed-in page naming %s:\n%s", landed.url, landed.status, email, landed.body)
	}
	me := b.get(s.publicURL + "/me")
	var who struct {
		Email string `json:"email"`
	}
	if err := json.Unmarshal([]byte(me.body), &who); err != nil || who.Email != email {
		t.Fatalf("/me = %d %q, want JSON with email %s", me.status, me.body, email)
	}

	eventually(t, 60*time.Second, "the welcome email to arrive", func() bool { return len(s.mailTo(email)) > 0 })
	s.waitConsumerIdle(ctx)

	events := s.publishedEvents(ctx)
	if len(events) != 1 {
		t.Fatalf("stream holds %d events, want 1", len(events))
	}
	ev := events[0]
	if ev.Email != email || ev.Issuer != s.idp.Issuer() || ev.Subject == "" || ev.GetClient().GetDeviceId() == "" {
		t.Errorf("event = %+v; want email %s, issuer %s, a subject and a device id", ev, email, s.idp.Issuer())
	}
	got := s.mailTo(email)
	if len(got) != 1 {
		t.Fatalf("inbox holds %d emails for %s, want exactly 1", len(got), email)
	}
	msg := got[0]
	if !strings.Contains(msg.MessageID, ev.EventId) {
		t.Errorf("Message-ID %q does not derive from event id %s", msg.MessageID, ev.EventId)
	}
	if !msg.TLS {
		t.Errorf("email was delivered without STARTTLS; SMTP_TLS=mandatory must require it")
	}
	if !strings.Contains(strings.ToLower(msg.Subject), "welcome") {
		t.Errorf("subject %q, want a welcome", msg.Subject)
	}
	if msg.Text == "" || msg.HTML == "" {
		t.Errorf("want both text and HTML parts; text %d bytes, html %d bytes", len(msg.Text), len(msg.HTML))
	}
	if strings.Contains(msg.HTML, "<Tester>") || !strings.Contains(msg.HTML, "&lt;Tester&gt;") {
		t.Errorf("the user's name is not escaped in the HTML part:\n%s", msg.HTML)
	}

	// Sign out through the page's own form, then sign in again from the same
	// browser: that is not news, so no second email.
	out := b.submit(b.get(s.publicURL+"/"), nil)
	if out.status != http.StatusOK || strings.Contains(out.body, "Signed in as") {
		t.Fatalf("after signing out: status %d, still signed in:\n%s", out.status, out.body)
	}
	if me := b.get(s.publicURL + "/me"); me.status != http.StatusUnauthorized {
		t.Fatalf("/me after sign-out: status %d, want 401", me.status)
	}
	again := b.signIn(s.publicURL, email, true)
	if again.status != http.StatusOK {
		t.Fatalf("second sign-in: status %d\n%s", again.status, again.body)
	}
	eventually(t, 30*time.Second, "the second event to be published", func() bool { return len(s.publishedEvents(ctx)) == 2 })
	s.waitConsumerIdle(ctx)
	if n := len(s.mailTo(email)); n != 1 {
		t.Errorf("after a second sign-in from the same device the inbox holds %d emails, want 1", n)
	}
}

// The emails speak the person's language: the provider's locale claim
// first, else the browser's Accept-Language at sign-in.
func TestEmailsSpeakThePersonsLanguage(t *testing.T) {
	s := startStack(t)
	tests := []struct {
		email, browserLang, locale string
		wantSubject                string
	}{
		{"ko-claim@example.test", "en-US,en;q=0.9", "ko", "Doorbell에 오신 것을 환영합니다"},
		{"ko-browser@example.test", "ko-KR,ko;q=0.9,en;q=0.8", "", "Doorbell에 오신 것을 환영합니다"},
		{"en-browser@example.test", "en-GB,en;q=0.9", "", "Welcome to Doorbell"},
	}
	for _, tt := range tests {
		b := newBrowser(t).speaking(tt.browserLang)
		landed := b.signInWith(s.publicURL, tt.email, map[string]*string{"locale": &tt.locale})
		if landed.status != http.StatusOK || !strings.Contains(landed.body, "Signed in as") {
			t.Fatalf("%s: sign-in status %d\n%s", tt.email, landed.status, landed.body)
		}
	}
	for _, tt := range tests {
		eventually(t, 60*time.Second, "the welcome to "+tt.email, func() bool { return len(s.mailTo(tt.email)) > 0 })
		if got := s.mailTo(tt.email)[0].Subject; got != tt.wantSubject {
			t.Errorf("%s: subject %q, want %q", tt.email, got, tt.wantSubject)
		}
	}
}

// A provider that does not vouch for the address: the person gets a page
// that says why, and nothing is published or sent.
func TestSignInWithUnverifiedEmailIsRefused(t *testing.T) {
	s := startStack(t)
	ctx := context.Background()
	const email = "mallory@example.test"

	landed := newBrowser(t).signIn(s.publicURL, email, false)
	if landed.status != http.StatusForbidden {
		t.Fatalf("status %d, want 403 for an unverified email:\n%s", landed.status, landed.body)
	}
	if !strings.Contains(landed.body, "not verified") {
		t.Errorf("the error page does not say the email is not verified:\n%s", landed.body)
	}
	if strings.Contains(landed.body, "Signed in as") {
		t.Errorf("an unverified user was signed in")
	}

	// A verified sign-in afterwards is the marker: once its email is there,
	// the worker has handled everything published before it.
	const marker = "grace@example.test"
	newBrowser(t).signIn(s.publicURL, marker, true)
	eventually(t, 60*time.Second, "the marker email", func() bool { return len(s.mailTo(marker)) == 1 })
	s.waitConsumerIdle(ctx)
	for _, ev := range s.publishedEvents(ctx) {
		if ev.Email == email {
			t.Errorf("an event was published for the unverified address: %+v", ev)
		}
	}
	if n := len(s.mailTo(email)); n != 0 {
		t.Errorf("%d emails went to the unverified address, want 0", n)
	}
}

// NATS is down while someone signs in: the gateway says to try again (503)
// and does not pretend they are signed in; once NATS is back, signing in
// again sends exactly one email.
func TestSignInWhileNATSIsDownAsksToRetry(t *testing.T) {
	s := startStack(t)
	ctx := context.Background()
	const email = "linus@example.test"

	s.nats.Shutdown()
	b := newBrowser(t)
	landed := b.signIn(s.publicURL, email, true)
	if landed.status != http.StatusServiceUnavailable {
		t.Fatalf("status %d with NATS down, want 503:\n%s", landed.status, landed.body)
	}
	if strings.Contains(landed.body, "Signed in as") {
		t.Fatalf("the user was shown as signed in although the event was not stored")
	}
	me := b.get(s.publicURL + "/me")
	if me.status != http.StatusUnauthorized {
		t.Errorf("/me after a failed sign-in: status %d, want 401", me.status)
	}

	s.startNATS()
	waitReady(t, "gateway", "http://"+s.gwAdmin+"/readyz")
	waitReady(t, "worker", "http://"+s.wkAdmin+"/readyz")
	landed = b.signIn(s.publicURL, email, true)
	if landed.status != http.StatusOK {
		t.Fatalf("sign-in after NATS came back: status %d\n%s", landed.status, landed.body)
	}
	eventually(t, 60*time.Second, "the welcome email", func() bool { return len(s.mailTo(email)) > 0 })
	s.waitConsumerIdle(ctx)
	if n := len(s.mailTo(email)); n != 1 {
		t.Errorf("inbox holds %d emails for %s, want exactly 1", n, email)
	}
}
