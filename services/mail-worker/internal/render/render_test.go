package render

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func hostile() Data {
	return Data{
		SiteName:  "Doorbell",
		Name:      `<script>alert("x")</script> O'Brien & "Co"`,
		Email:     `eve+<img src=x onerror=alert(1)>@example.com`,
		When:      time.Date(2026, 3, 4, 5, 6, 7, 0, time.FixedZone("CET", 3600)),
		IP:        `203.0.113.7"><svg onload=alert(1)>`,
		UserAgent: "Mozilla/5.0 <b>bold</b>\r\nBcc: victim@example.com",
		Locale:    `en" onmouseover="alert(1)`,
		Provider:  "dex",
	}
}

func TestRenderEscapesHostileValuesInHTML(t *testing.T) {
	r, err := New("")
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"welcome", "new_device"} {
		t.Run(kind, func(t *testing.T) {
			got, err := r.Render(kind, hostile())
			if err != nil {
				t.Fatal(err)
			}
			for _, raw := range []string{
				"<script>", `alert("x")`, "<img", "<svg", "<b>bold", `" onmouseover=`, `O'Brien`,
			} {
				if strings.Contains(got.HTML, raw) {
					t.Errorf("HTML body contains unescaped %q:\n%s", raw, got.HTML)
				}
			}
			for _, escaped := range []string{"&lt;script&gt;", "O&#39;Brien &amp; &#34;Co&#34;"} {
				if !strings.Contains(got.HTML, escaped) {
					t.Errorf("HTML body lacks escaped form %q:\n%s", escaped, got.HTML)
				}
			}
			if !strings.Contains(got.HTML, `lang="en"`) {
				t.Errorf("a locale that is not a language tag should fall back to lang=\"en\":\n%s", got.HTML)
			}
		})
	}
}

func TestRenderKeepsEventValuesOnOneLine(t *testing.T) {
	r, err := New("")
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.Render("new_device", hostile())
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(got.Text, "\n") {
		if strings.HasPrefix(line, "Bcc:") {
			t.Errorf("a user agent with CRLF forged a line in the text body: %q", line)
		}
	}
	if strings.ContainsAny(got.Text, "\r") {
		t.Errorf("text body contains CR")
	}
	if !strings.Contains(got.Text, "2026-03-04 04:06 UTC") {
		t.Errorf("text body does not give the time in UTC:\n%s", got.Text)
	}
	if !strings.Contains(got.Text, "203.0.113.7") || !strings.Contains(got.Text, "Mozilla/5.0") {
		t.Errorf("text body lacks the IP or browser:\n%s", got.Text)
	}
}

func TestSubjectCannotCarryHeaders(t *testing.T) {
	dir := t.TempDir()
	// An override that puts the (hostile) name into the subject.
	writeFile(t, dir, "welcome.txt.tmpl", `{{define "subject"}}Hi {{.Name}} from {{.SiteName}}{{end}}Body`)
	r, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		data Data
	}{
		{"CRLF in the name", Data{SiteName: "Doorbell", Name: "Eve\r\nBcc: victim@example.com", Email: "e@example.com"}},
		{"bare LF in the name", Data{SiteName: "Doorbell", Name: "Eve\nX-Evil: 1", Email: "e@example.com"}},
		{"NUL and tab in the name", Data{SiteName: "Doorbell", Name: "Eve\x00\tX", Email: "e@example.com"}},
		{"unicode line separator", Data{SiteName: "Doorbell", Name: "Eve\u2028Bcc: x", Email: "e@example.com"}},
		{"a very long name", Data{SiteName: "Doorbell", Name: strings.Repeat("A", 5000), Email: "e@example.com"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := r.Render("welcome", tt.data)
			if err != nil {
				t.Fatal(err)
			}
			if strings.ContainsAny(got.Subject, "\r\n\x00\t\u2028") {
				t.Errorf("subject %q contains a control character", got.Subject)
			}
			if !strings.HasPrefix(got.Subject, "Hi Eve") && !strings.HasPrefix(got.Subject, "Hi AAA") {
				t.Errorf("subject %q lost the name", got.Subject)
			}
			if n := len([]rune(got.Subject)); n > maxSubject {
				t.Errorf("subject is %d runes long, limit %d", n, maxSubject)
			}
		})
	}
}

func TestEmbeddedSubjects(t *testing.T) {
	r, err := New("")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ kind, want string }{
		{"welcome", "Welcome to Doorbell"},
		{"new_device", "New sign-in to Doorbell from a new device"},
	}
	for _, tt := range tests {
		got, err := r.Render(tt.kind, hostile())
		if err != nil {
			t.Fatal(err)
		}
		if got.Subject != tt.want {
			t.Errorf("%s subject = %q, want %q", tt.kind, got.Subject, tt.want)
		}
	}
}

func TestOverrideDir(t *testing.T) {
	tests := []struct {
		name      string
		files     map[string]string
		wantErr   string
		wantHTML  string // substring of the welcome HTML
		wantText  string // substring of the welcome text
		wantAlert string // substring of the new_device text (not overridden)
	}{
		{
			name:      "an override replaces only the file of the same name",
			files:     map[string]string{"welcome.html.tmpl": `<p>Custom hello {{.Greeting}}</p>`},
			wantHTML:  "<p>Custom hello &lt;script&gt;",
			wantText:  "welcome to Doorbell!",
			wantAlert: "If this wasn't you",
		},
		{
			name:      "unrelated files in the folder are ignored",
			files:     map[string]string{"README": "not a template", "other.tmpl": "{{"},
			wantHTML:  "<h1",
			wantText:  "welcome to Doorbell!",
			wantAlert: "If this wasn't you",
		},
		{
			name:    "a text override without a subject is refused at start",
			files:   map[string]string{"welcome.txt.tmpl": `just a body`},
			wantErr: `must define a "subject"`,
		},
		{
			name:    "a template that does not parse is refused at start",
			files:   map[string]string{"new_device.html.tmpl": `{{if}}`},
			wantErr: "parse new_device.html.tmpl",
		},
		{
			name:    "a template that fails to execute is refused at start",
			files:   map[string]string{"welcome.html.tmpl": `{{.NoSuchField}}`},
			wantErr: "NoSuchField",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, body := range tt.files {
				writeFile(t, dir, name, body)
			}
			r, err := New(dir)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New() error = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			welcome, err := r.Render("welcome", hostile())
			if err != nil {
				t.Fatal(err)
			}
			alert, err := r.Render("new_device", hostile())
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(welcome.HTML, tt.wantHTML) {
				t.Errorf("welcome HTML lacks %q:\n%s", tt.wantHTML, welcome.HTML)
			}
			if !strings.Contains(welcome.Text, tt.wantText) {
				t.Errorf("welcome text lacks %q:\n%s", tt.wantText, welcome.Text)
			}
			if !strings.Contains(alert.Text, tt.wantAlert) {
				t.Errorf("new_device text lacks %q:\n%s", tt.wantAlert, alert.Text)
			}
		})
	}
}

func TestRenderUnknownKind(t *testing.T) {
	r, err := New("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Render("none", hostile()); !errors.Is(err, ErrUnknownKind) {
		t.Errorf("Render(none) error = %v, want ErrUnknownKind", err)
	}
}

func TestGreetingFallsBackToEmail(t *testing.T) {
	r, err := New("")
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.Render("welcome", Data{SiteName: "Doorbell", Email: "ann@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got.Text, "Hello ann@example.com,") {
		t.Errorf("without a name the greeting should use the email:\n%s", got.Text)
	}
}

func writeFile(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}
