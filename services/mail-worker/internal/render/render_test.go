package render

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/text/language"
)

const firefoxOnWindows = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:140.0) Gecko/20100101 Firefox/140.0"

func newRenderer(t *testing.T, cfg Config) *Renderer {
	t.Helper()
	if cfg.SiteName == "" {
		cfg.SiteName = "Doorbell"
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func hostile() Data {
	return Data{
		Name:     `<script>alert("x")</script> O'Brien & "Co"`,
		Email:    `eve+<img src=x onerror=alert(1)>@example.com`,
		Provider: "dex",
		Locale:   `en" onmouseover="alert(1)`,
		SignIns: []SignIn{{
			When:      time.Date(2026, 3, 4, 5, 6, 7, 0, time.FixedZone("CET", 3600)),
			IP:        `203.0.113.7"><svg onload=alert(1)>`,
			UserAgent: "Mozilla/5.0 <b>bold</b>\r\nBcc: victim@example.com",
		}},
	}
}

func TestRenderEscapesHostileValuesInHTML(t *testing.T) {
	r := newRenderer(t, Config{SecurityURL: "https://idp.example.com/account?a=1&b=2"})
	for _, lang := range []string{"en", "ko"} {
		for _, kind := range Kinds {
			for _, n := range []int{1, 3} {
				d := hostile()
				d.Locale = lang
				for len(d.SignIns) < n {
					d.SignIns = append(d.SignIns, d.SignIns[0])
				}
				got, err := r.Render(kind, d)
				if err != nil {
					t.Fatal(err)
				}
				for _, raw := range []string{"<script>", `alert("x")`, "<img", "<svg", "<b>bold", `O'Brien`, "a=1&b=2"} {
					if strings.Contains(got.HTML, raw) {
						t.Errorf("%s %s (%d): HTML body contains unescaped %q:\n%s", lang, kind, n, raw, got.HTML)
					}
				}
				for _, escaped := range []string{"&lt;script&gt;", "O&#39;Brien &amp; &#34;Co&#34;"} {
					if !strings.Contains(got.HTML, escaped) {
						t.Errorf("%s %s (%d): HTML body lacks escaped form %q:\n%s", lang, kind, n, escaped, got.HTML)
					}
				}
			}
		}
	}
}

func TestRenderKeepsEventValuesOnOneLine(t *testing.T) {
	r := newRenderer(t, Config{})
	got, err := r.Render("new_device", hostile())
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(got.Text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "Bcc:") {
			t.Errorf("a user agent with CRLF forged a line in the text body: %q", line)
		}
	}
	if strings.ContainsAny(got.Text, "\r") {
		t.Errorf("text body contains CR")
	}
	if !strings.Contains(got.Text, "203.0.113.7") || !strings.Contains(got.Text, "Mozilla/5.0") {
		t.Errorf("text body lacks the IP or the raw browser string:\n%s", got.Text)
	}
}

// The browser named in words comes from the raw User-Agent, whose text the
// parser copies into the name: it is cleaned like every other value from
// the event, so a line separator, a direction override or a CR LF in a
// browser's name cannot start a line of its own.
func TestTheBrowserNameIsOneLineToo(t *testing.T) {
	r := newRenderer(t, Config{})
	for _, ua := range []string{
		"Mozilla/5.0 (Windows NT 10.0; Win64; x64) Firefox\u2028\u2028Your account is locked, call now\u2028/140.0",
		"Mozilla/5.0 (Windows NT 10.0; Win64; x64) Evil\r\nBcc: x@example.com/1.0",
		"Mozilla/5.0 (Windows NT 10.0) \u202eelgooG\u202c/1.0",
	} {
		got, err := r.Render("new_device", Data{Email: "ann@example.com",
			SignIns: []SignIn{{When: time.Date(2026, 12, 6, 7, 0, 0, 0, time.UTC), IP: "203.0.113.7", UserAgent: ua}}})
		if err != nil {
			t.Fatal(err)
		}
		for part, body := range map[string]string{"text": got.Text, "HTML": got.HTML} {
			if i := strings.IndexAny(body, "\r\u2028\u2029\u202e\u202c"); i >= 0 {
				t.Errorf("user agent %q: the %s body holds %q", ua, part, body[max(0, i-40):min(len(body), i+40)])
			}
		}
	}
}

func TestTheLanguageComesFromTheLocaleThenTheBrowserThenTheSetting(t *testing.T) {
	tests := []struct {
		name           string
		locale, accept string
		fallback       language.Tag
		want           string
	}{
		{"the provider's locale", "ko", "en-US,en;q=0.9", language.English, "ko"},
		{"a locale with a region", "ko-KR", "", language.English, "ko"},
		{"a POSIX locale", "ko_KR", "", language.English, "ko"},
		{"no locale: the browser's first language we have", "", "ja, ko-KR;q=0.8, en;q=0.5", language.English, "ko"},
		{"a locale we lack: the browser's", "fr", "ko", language.English, "ko"},
		{"English from the browser", "", "en-GB,en;q=0.8", language.Korean, "en"},
		{"nothing: the setting", "", "", language.Korean, "ko"},
		{"nothing we have: the setting", "fr", "de, it;q=0.5", language.Korean, "ko"},
		{"garbage: the setting", `en" onmouseover="x`, "*;;;", language.English, "en"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRenderer(t, Config{Language: tt.fallback})
			got, err := r.Render("welcome", Data{Email: "a@example.com", Locale: tt.locale, AcceptLanguage: tt.accept,
				SignIns: []SignIn{{When: time.Now()}}})
			if err != nil {
				t.Fatal(err)
			}
			if got.Lang != tt.want || !strings.Contains(got.HTML, `lang="`+tt.want+`"`) {
				t.Errorf("language %q (html lang in %q), want %q", got.Lang, got.HTML[:80], tt.want)
			}
		})
	}
}

func TestTimesAreShownInTheZoneWithItsNameAndInTheLanguage(t *testing.T) {
	seoul, err := time.LoadLocation("Asia/Seoul")
	if err != nil {
		t.Skip("no time zone database:", err)
	}
	at := time.Date(2026, 12, 7, 14, 5, 0, 0, time.UTC)
	tests := []struct {
		name   string
		locale string
		loc    *time.Location
		want   string
	}{
		{"English in UTC", "en", nil, "Monday, 7 December 2026, 14:05 UTC"},
		{"English in Seoul", "en", seoul, "Monday, 7 December 2026, 23:05 KST (Asia/Seoul)"},
		{"Korean in Seoul", "ko", seoul, "2026년 12월 7일 (월) 23:05 KST (Asia/Seoul)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRenderer(t, Config{Location: tt.loc})
			got, err := r.Render("welcome", Data{Email: "a@example.com", Locale: tt.locale, SignIns: []SignIn{{When: at}}})
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(got.Text, tt.want) || !strings.Contains(got.HTML, tt.want) {
				t.Errorf("the email does not give the time as %q:\n%s", tt.want, got.Text)
			}
		})
	}
}

func TestAnAlertNamesTheBrowserAndKeepsTheRawString(t *testing.T) {
	r := newRenderer(t, Config{SecurityURL: "https://idp.example.com/account"})
	tests := []struct {
		locale, subject, browser string
	}{
		{"en", "New sign-in to Doorbell from a new device", "Firefox on Windows"},
		{"ko", "새 기기에서 Doorbell에 로그인했습니다", "Windows의 Firefox"},
	}
	for _, tt := range tests {
		t.Run(tt.locale, func(t *testing.T) {
			got, err := r.Render("new_device", Data{Email: "ann@example.com", Locale: tt.locale,
				SignIns: []SignIn{{When: time.Now(), IP: "198.51.100.23", UserAgent: firefoxOnWindows}}})
			if err != nil {
				t.Fatal(err)
			}
			if got.Subject != tt.subject {
				t.Errorf("subject %q, want %q", got.Subject, tt.subject)
			}
			for _, want := range []string{tt.browser, "198.51.100.23", "https://idp.example.com/account"} {
				if !strings.Contains(got.Text, want) || !strings.Contains(got.HTML, want) {
					t.Errorf("the alert lacks %q:\n%s", want, got.Text)
				}
			}
			if !strings.Contains(got.Text, firefoxOnWindows) {
				t.Errorf("the text part lacks the raw User-Agent:\n%s", got.Text)
			}
		})
	}
}

func TestFoldedSignInsAreListedInOneAlert(t *testing.T) {
	r := newRenderer(t, Config{})
	signIns := []SignIn{
		{When: time.Date(2026, 12, 7, 14, 9, 0, 0, time.UTC), IP: "192.0.2.3", UserAgent: firefoxOnWindows},
		{When: time.Date(2026, 12, 7, 14, 5, 0, 0, time.UTC), IP: "192.0.2.2", UserAgent: "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"},
		{When: time.Date(2026, 12, 7, 14, 1, 0, 0, time.UTC), IP: "192.0.2.1"},
	}
	tests := []struct {
		locale, subject string
		want            []string
	}{
		{"en", "3 sign-ins to Doorbell from new devices", []string{"3 new devices", "Safari on iOS", "an unknown browser"}},
		{"ko", "새 기기에서 Doorbell에 로그인 3건", []string{"새 기기 3대", "iOS의 Safari", "알 수 없는 브라우저"}},
	}
	for _, tt := range tests {
		t.Run(tt.locale, func(t *testing.T) {
			got, err := r.Render("new_device", Data{Email: "ann@example.com", Locale: tt.locale, SignIns: signIns})
			if err != nil {
				t.Fatal(err)
			}
			if got.Subject != tt.subject {
				t.Errorf("subject %q, want %q", got.Subject, tt.subject)
			}
			for _, want := range append(tt.want, "192.0.2.1", "192.0.2.2", "192.0.2.3") {
				if !strings.Contains(got.Text, want) || !strings.Contains(got.HTML, want) {
					t.Errorf("the alert lacks %q:\n%s", want, got.Text)
				}
			}
		})
	}
}

// Sign-ins beyond what an alert lists (ledger.MaxHeld) are told of by
// number, and counted in the subject and the opening.
func TestAnAlertTellsOfSignInsItCannotListByNumber(t *testing.T) {
	r := newRenderer(t, Config{})
	signIns := []SignIn{{When: time.Date(2026, 12, 7, 14, 9, 0, 0, time.UTC), IP: "192.0.2.3"}, {When: time.Date(2026, 12, 7, 14, 5, 0, 0, time.UTC), IP: "192.0.2.2"}}
	tests := []struct {
		locale, subject string
		want            []string
	}{
		{"en", "42 sign-ins to Doorbell from new devices", []string{"42 new devices", "Some of them are listed", "and 40 more, too many to list"}},
		{"ko", "새 기기에서 Doorbell에 로그인 42건", []string{"새 기기 42대", "그중 일부를", "외 40건"}},
	}
	for _, tt := range tests {
		t.Run(tt.locale, func(t *testing.T) {
			got, err := r.Render("new_device", Data{Email: "ann@example.com", Locale: tt.locale, SignIns: signIns, More: 40})
			if err != nil {
				t.Fatal(err)
			}
			if got.Subject != tt.subject {
				t.Errorf("subject %q, want %q", got.Subject, tt.subject)
			}
			for _, want := range tt.want {
				if !strings.Contains(got.Text, want) || !strings.Contains(got.HTML, want) {
					t.Errorf("the alert lacks %q:\n%s\n%s", want, got.Text, got.HTML)
				}
			}
		})
	}
	// Without more, nothing is said of more.
	got, err := r.Render("new_device", Data{Email: "ann@example.com", SignIns: signIns})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(got.Text, "more") || !strings.Contains(got.Text, "They are all listed") {
		t.Errorf("an alert that lists every sign-in:\n%s", got.Text)
	}
}

func TestSubjectCannotCarryHeaders(t *testing.T) {
	dir := t.TempDir()
	// An override that puts the (hostile) name into the subject.
	writeFile(t, dir, "welcome.txt.tmpl", `{{define "subject"}}Hi {{.Name}} from {{.SiteName}}{{end}}Body`)
	r := newRenderer(t, Config{TemplatesDir: dir})
	for _, name := range []string{
		"Eve\r\nBcc: victim@example.com", "Eve\nX-Evil: 1", "Eve\x00\tX", "Eve\u2028Bcc: x", strings.Repeat("A", 5000),
	} {
		got, err := r.Render("welcome", Data{Name: name, Email: "e@example.com", SignIns: []SignIn{{}}})
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
	}
}

func TestOverrideDir(t *testing.T) {
	complete := func(prefix string) map[string]string {
		files := map[string]string{}
		for _, kind := range Kinds {
			files[prefix+kind+".txt.tmpl"] = `{{define "subject"}}Hallo{{end}}Hallo {{.Greeting}}, {{t "%d new devices" (len .SignIns)}}`
			files[prefix+kind+".html.tmpl"] = `<p lang="{{.Lang}}">Hallo {{.Greeting}}</p>`
		}
		return files
	}
	tests := []struct {
		name    string
		files   map[string]string
		locale  string
		wantErr string
		want    string // in the welcome HTML
	}{
		{"a top-level file overrides the default language", map[string]string{"welcome.html.tmpl": `<p>Custom {{.Greeting}}</p>`},
			"en", "", "<p>Custom &lt;script&gt;"},
		{"a top-level file leaves other languages alone", map[string]string{"welcome.html.tmpl": `<p>Custom {{.Greeting}}</p>`},
			"ko", "", "환영합니다"},
		{"a language folder overrides that language", map[string]string{"ko/welcome.html.tmpl": `<p>맞춤 {{.Greeting}}</p>`},
			"ko", "", "<p>맞춤 &lt;script&gt;"},
		{"a complete folder adds a language", complete("de/"), "de-CH", "", `<p lang="de">Hallo`},
		{"unrelated files are ignored", map[string]string{"README": "not a template", "other.tmpl": "{{"}, "en", "", "<h1"},
		{"an incomplete new language is refused at start", map[string]string{"de/welcome.html.tmpl": `<p>Hallo</p>`}, "", "no template welcome.txt.tmpl for de", ""},
		{"a folder that is not a language is refused", map[string]string{"backup/x": "x"}, "", "named for a language", ""},
		{"a text override without a subject is refused", map[string]string{"ko/welcome.txt.tmpl": `just a body`}, "", `ko/welcome.txt.tmpl: it must define a "subject"`, ""},
		{"a template that does not parse is refused", map[string]string{"new_device.html.tmpl": `{{if}}`}, "", "parse " + "DIR/new_device.html.tmpl", ""},
		{"a template that fails to execute is refused", map[string]string{"ko/welcome.html.tmpl": `{{.NoSuchField}}`}, "", "NoSuchField", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, body := range tt.files {
				writeFile(t, dir, name, body)
			}
			r, err := New(Config{TemplatesDir: dir, SiteName: "Doorbell"})
			if tt.wantErr != "" {
				want := strings.ReplaceAll(tt.wantErr, "DIR", dir)
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("New() error = %v, want one mentioning %q", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			d := hostile()
			d.Locale = tt.locale
			got, err := r.Render("welcome", d)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(got.HTML, tt.want) {
				t.Errorf("welcome HTML lacks %q:\n%s", tt.want, got.HTML)
			}
		})
	}
}

func TestTheDefaultLanguageNeedsTemplates(t *testing.T) {
	_, err := New(Config{Language: language.German})
	if err == nil || !strings.Contains(err.Error(), "MAIL_LOCALE") {
		t.Errorf("New with a default language without templates = %v, want an error naming MAIL_LOCALE", err)
	}
}

func TestRenderUnknownKind(t *testing.T) {
	r := newRenderer(t, Config{})
	if _, err := r.Render("none", hostile()); !errors.Is(err, ErrUnknownKind) {
		t.Errorf("Render(none) error = %v, want ErrUnknownKind", err)
	}
}

func TestGreetingFallsBackToEmail(t *testing.T) {
	r := newRenderer(t, Config{})
	got, err := r.Render("welcome", Data{Email: "ann@example.com", SignIns: []SignIn{{When: time.Now()}}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got.Text, "Hello ann@example.com,") {
		t.Errorf("without a name the greeting should use the email:\n%s", got.Text)
	}
}

func writeFile(t *testing.T, dir, name, body string) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkRender(b *testing.B) {
	r, err := New(Config{SiteName: "Doorbell"})
	if err != nil {
		b.Fatal(err)
	}
	d := Data{Name: "Ann Example", Email: "ann@example.com", Provider: "dev", Locale: "en",
		SignIns: []SignIn{{When: time.Now(), IP: "192.0.2.7", UserAgent: firefoxOnWindows}}}
	for _, kind := range Kinds {
		b.Run(kind, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.Render(kind, d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// oneLine's shortcut for plain ASCII leaves out only what would change
// nothing.
func FuzzOneLine(f *testing.F) {
	for _, s := range []string{"", "Ann Example", " Ann", "Ann ", "Ann  Example", "a\tb", "a\r\nb", "Ünï", "x\u202ey", "\x00", strings.Repeat("a", 300)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if plainLine(s) && squash(s) != s {
			t.Errorf("plainLine(%q), but squash changes it to %q", s, squash(s))
		}
	})
}
