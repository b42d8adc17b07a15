package main

import (
	"bytes"
	"context"
	"mime"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// preview runs "mail-worker preview args..." with env.
func preview(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = runPreview(context.Background(), args, func(k string) string { return env[k] }, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestPreviewRendersWithTheConfiguredTemplates(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "ko"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ko", "welcome.html.tmpl"), []byte(`<p>맞춤 환영 {{.Greeting}}</p>`), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"MAIL_TEMPLATES_DIR": dir, "MAIL_TIME_ZONE": "Asia/Seoul", "MAIL_SITE_NAME": "Acme"}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"the text part, in the default language", []string{"welcome"},
			[]string{"Subject: Welcome to Acme", "Content-Language: en", "Hello Ann Example,", "KST (Asia/Seoul)"}},
		{"the text part in Korean", []string{"new_device", "--locale", "ko"},
			[]string{"Subject: 새 기기에서 Acme에 로그인했습니다", "Windows의 Firefox", "198.51.100.23"}},
		{"the HTML part with the override", []string{"welcome", "--locale", "ko", "--html"},
			[]string{"<p>맞춤 환영 Ann Example</p>"}},
		{"a folded alert", []string{"new_device", "--signins", "3"},
			[]string{"Subject: 3 sign-ins to Acme from new devices", "Safari on iOS", "203.0.113.2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := preview(t, env, tt.args...)
			if code != exitOK {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			for _, want := range tt.want {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

func TestPreviewEMLIsTheMessageARelayGets(t *testing.T) {
	code, out, errOut := preview(t, map[string]string{"MAIL_FROM": "Acme <no-reply@acme.example>"}, "new_device", "--locale", "ko", "--eml")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	msg, err := mail.ReadMessage(strings.NewReader(out))
	if err != nil {
		t.Fatalf("not a message: %v\n%s", err, out)
	}
	subject, _ := new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject"))
	for header, want := range map[string]string{
		"From": `"Acme" <no-reply@acme.example>`, "To": `"Ann Example" <ann@example.com>`, "Content-Language": "ko",
		"Message-Id": "<0190c4b2-0000-7abc-8def-0123456789ab@acme.example>",
	} {
		if got := msg.Header.Get(header); got != want {
			t.Errorf("%s: %q, want %q", header, got, want)
		}
	}
	if subject != "새 기기에서 Doorbell에 로그인했습니다" {
		t.Errorf("Subject %q", subject)
	}
	if !strings.HasPrefix(msg.Header.Get("Content-Type"), "multipart/alternative") {
		t.Errorf("Content-Type %q, want both parts", msg.Header.Get("Content-Type"))
	}
}

func TestPreviewOfADeadLetter(t *testing.T) {
	f := newDLQFixture(t)
	env := map[string]string{"NATS_URL": f.url}
	code, out, errOut := preview(t, env, "welcome", "--dlq", "1")
	if code != exitOK || !strings.Contains(out, "ann@example.com") || !strings.Contains(out, "Hello Ann,") {
		t.Errorf("exit %d, output:\n%s%s", code, out, errOut)
	}
	if code, _, errOut := preview(t, env, "welcome", "--dlq", "2"); code != exitFailed || !strings.Contains(errOut, "holds no event") {
		t.Errorf("an undecodable letter: exit %d %s", code, errOut)
	}
	if code, _, _ := preview(t, env, "welcome", "--dlq", "99"); code != exitNotFound {
		t.Errorf("a letter that is not there: exit %d, want %d", code, exitNotFound)
	}
}

func TestPreviewRefusesBadInputClearly(t *testing.T) {
	brokenDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(brokenDir, "welcome.html.tmpl"), []byte(`{{if}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  map[string]string
		args []string
		code int
		want string
	}{
		{"no kind", nil, nil, exitUsage, "no KIND"},
		{"an unknown kind", nil, []string{"goodbye"}, exitUsage, `unknown KIND "goodbye"`},
		{"two formats", nil, []string{"welcome", "--html", "--eml"}, exitUsage, "one of --text, --html, --eml"},
		{"sign-ins for a welcome", nil, []string{"welcome", "--signins", "2"}, exitUsage, "--signins"},
		{"a broken override", map[string]string{"MAIL_TEMPLATES_DIR": brokenDir}, []string{"welcome"}, exitFailed,
			"parse " + filepath.Join(brokenDir, "welcome.html.tmpl")},
		{"a bad setting", map[string]string{"MAIL_LOCALE": "english please"}, []string{"welcome"}, exitUsage, "MAIL_LOCALE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := preview(t, tt.env, tt.args...)
			if code != tt.code || !strings.Contains(errOut, tt.want) {
				t.Errorf("exit %d, stderr %q; want exit %d mentioning %q", code, errOut, tt.code, tt.want)
			}
		})
	}
	if code, out, _ := preview(t, nil, "help"); code != exitOK || !strings.Contains(out, "usage: mail-worker preview") {
		t.Errorf("help: exit %d\n%s", code, out)
	}
}
