// Package render turns a sign-in into the subject, plain-text body and HTML
// body of an email, in the person's language.
//
// Templates are embedded in the binary, one folder per language
// (templates/en, templates/ko: <kind>.txt.tmpl and <kind>.html.tmpl), and a
// folder may override any of them: <dir>/<lang>/<file>, or <dir>/<file> for
// the default language. A folder <dir>/<lang> holding all of a language's
// files adds that language. The plain-text template must define a
// "subject" template. HTML bodies go through html/template, so every value
// from the event is escaped; the subject and all single-line values are
// stripped of control characters, so nothing from the event can add a
// header or a line to the message.
package render

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	texttemplate "text/template"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

//go:embed templates
var embedded embed.FS

// Kinds of email the templates cover; each has <kind>.txt.tmpl and
// <kind>.html.tmpl in every language.
var Kinds = [...]string{"welcome", "new_device"}

// Limits on values from the event, in runes.
const (
	maxSubject   = 200
	maxLineValue = 256
)

// Config shapes every email.
type Config struct {
	// TemplatesDir overrides and adds templates (see the package comment);
	// none when empty.
	TemplatesDir string
	// Language is the language of an email when neither the provider's
	// locale nor the browser's Accept-Language names one there are
	// templates for (MAIL_LOCALE).
	Language language.Tag
	// Location is the time zone times are shown in (MAIL_TIME_ZONE); UTC
	// when nil.
	Location *time.Location
	// SiteName names the service in the emails (MAIL_SITE_NAME).
	SiteName string
	// SecurityURL, when set, is where an alert sends a person who did not
	// sign in (MAIL_SECURITY_URL), for example the provider's account page.
	SecurityURL string
}

// Data is what an email is about. All of it comes from events and is
// untrusted.
type Data struct {
	Name     string // display name; may be empty
	Email    string
	Provider string
	// Locale is the provider's locale claim, AcceptLanguage the browser's
	// header at sign-in; either may be empty.
	Locale, AcceptLanguage string
	// SignIns are the sign-ins the email tells of, the newest first: one,
	// or several when alerts were folded into one.
	SignIns []SignIn
	// More is how many sign-ins it tells of besides, by number only (too
	// many came in one alert window to list them all).
	More int
}

// SignIn is one sign-in an email tells of.
type SignIn struct {
	When      time.Time
	IP        string
	UserAgent string
}

// Email is a rendered message.
type Email struct {
	Subject string // one line, no control characters
	Text    string
	HTML    string
	Lang    string // the BCP 47 tag of the language it is written in
}

// Renderer holds parsed templates. It is safe for concurrent use.
type Renderer struct {
	cfg       Config
	languages []language.Tag   // with templates; Config.Language among them
	matcher   language.Matcher // of languages
	sets      map[language.Tag]templates
}

// templates are one language's templates, by kind, and its printer.
type templates struct {
	p    *message.Printer
	text map[string]*texttemplate.Template
	html map[string]*htmltemplate.Template
}

// New parses the templates of every language. Every template is executed
// once with sample data (one sign-in and several) so that a broken
// override stops the start-up, naming the file, instead of the first
// email.
func New(cfg Config) (*Renderer, error) {
	if cfg.Location == nil {
		cfg.Location = time.UTC
	}
	if cfg.Language == language.Und {
		cfg.Language = language.English
	}
	r := &Renderer{cfg: cfg, sets: make(map[language.Tag]templates)}
	langs, err := languages(cfg.TemplatesDir)
	if err != nil {
		return nil, err
	}
	for _, lang := range langs {
		set, err := parse(cfg.TemplatesDir, lang, lang == cfg.Language, printer(lang))
		if err != nil {
			return nil, err
		}
		r.sets[lang] = set
		r.languages = append(r.languages, lang)
	}
	r.matcher = language.NewMatcher(r.languages)
	if _, ok := r.sets[cfg.Language]; !ok {
		return nil, fmt.Errorf("no templates for the default language %s (MAIL_LOCALE): there are %v; add %s/ to MAIL_TEMPLATES_DIR",
			cfg.Language, r.languages, cfg.Language)
	}
	for _, lang := range r.languages {
		for _, signIns := range [][]SignIn{sample[:1], sample} {
			for _, kind := range Kinds {
				d := Data{Name: `<b>"Sample"</b>`, Email: "sample@example.com", Provider: "sample", Locale: lang.String(), SignIns: signIns}
				if _, err := r.Render(kind, d); err != nil {
					return nil, fmt.Errorf("try the %s templates: %w", lang, err)
				}
			}
		}
	}
	return r, nil
}

// sample is what the start-up check renders.
var sample = []SignIn{
	{When: time.Date(2026, 12, 7, 14, 5, 0, 0, time.UTC), IP: "192.0.2.1", UserAgent: "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:140.0) Gecko/20100101 Firefox/140.0"},
	{When: time.Date(2026, 12, 7, 14, 1, 0, 0, time.UTC), IP: "2001:db8::1", UserAgent: "<script>"},
	{When: time.Date(2026, 12, 7, 13, 58, 0, 0, time.UTC)},
}

// Languages returns the languages there are templates for.
func (r *Renderer) Languages() []language.Tag { return slices.Clone(r.languages) }

// languages lists the embedded languages and those dir adds.
func languages(dir string) ([]language.Tag, error) {
	langs := slices.Clone(Embedded)
	if dir == "" {
		return langs, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read MAIL_TEMPLATES_DIR: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		tag, err := language.Parse(e.Name())
		if err != nil {
			return nil, fmt.Errorf("MAIL_TEMPLATES_DIR/%s: a folder must be named for a language (en, ko, de-CH): %w", e.Name(), err)
		}
		if !slices.Contains(langs, tag) {
			langs = append(langs, tag)
		}
	}
	return langs, nil
}

// parse reads and parses lang's templates: each from dir/lang/, else (for
// the default language) dir/, else embedded. Their function t formats a
// phrase of the catalog in lang (see phrases).
func parse(dir string, lang language.Tag, isDefault bool, p *message.Printer) (templates, error) {
	set := templates{p: p, text: make(map[string]*texttemplate.Template), html: make(map[string]*htmltemplate.Template)}
	funcs := map[string]any{"t": func(key string, args ...any) string { return p.Sprintf(key, args...) }}
	for _, kind := range Kinds {
		name := kind + ".txt.tmpl"
		src, where, err := source(dir, lang, name, isDefault)
		if err != nil {
			return set, err
		}
		tt, err := texttemplate.New(name).Option("missingkey=error").Funcs(funcs).Parse(src)
		if err != nil {
			return set, fmt.Errorf("parse %s: %w", where, err)
		}
		if tt.Lookup("subject") == nil {
			return set, fmt.Errorf("parse %s: it must define a \"subject\" template", where)
		}
		set.text[kind] = tt

		name = kind + ".html.tmpl"
		if src, where, err = source(dir, lang, name, isDefault); err != nil {
			return set, err
		}
		ht, err := htmltemplate.New(name).Option("missingkey=error").Funcs(funcs).Parse(src)
		if err != nil {
			return set, fmt.Errorf("parse %s: %w", where, err)
		}
		set.html[kind] = ht
	}
	return set, nil
}

// source returns the template name of lang and where it came from.
func source(dir string, lang language.Tag, name string, isDefault bool) (string, string, error) {
	var tries []string
	if dir != "" {
		tries = append(tries, filepath.Join(dir, lang.String(), name))
		if isDefault {
			tries = append(tries, filepath.Join(dir, name))
		}
	}
	for _, p := range tries {
		b, err := os.ReadFile(p)
		switch {
		case err == nil:
			return string(b), p, nil
		case !errors.Is(err, fs.ErrNotExist):
			return "", p, fmt.Errorf("read template override: %w", err)
		}
	}
	p := "templates/" + lang.String() + "/" + name
	b, err := embedded.ReadFile(p)
	if err != nil {
		return "", p, fmt.Errorf("no template %s for %s: add %s to MAIL_TEMPLATES_DIR", name, lang, filepath.Join(lang.String(), name))
	}
	return string(b), "embedded " + p, nil
}

// ErrUnknownKind is returned by Render for a kind without templates.
var ErrUnknownKind = errors.New("no templates for this kind of email")

// view is what the templates see: Data made safe to put on one line, in
// the email's language.
type view struct {
	SiteName    string
	Greeting    string // Name, or Email when there is no name
	Name        string
	Email       string
	Provider    string
	SecurityURL string // empty when not configured
	Lang        string
	When        string // the first sign-in's time, formatted
	SignIns     []*signInView
	More        int // sign-ins told of by number only, besides SignIns
}

// Count is every sign-in told of: those listed and those told of by number.
func (v view) Count() int { return len(v.SignIns) + v.More }

type signInView struct {
	When      string // in MAIL_TIME_ZONE, the zone named
	IP        string
	UserAgent string // the raw header, one line
	ua        string
	p         *message.Printer
	browser   string // Browser's answer, once asked
}

// Browser names the browser and system in words ("Firefox on Windows"),
// parsed the first time a template asks. The parser copies text from the
// header into the name, so it is kept to one line like the header itself.
func (s *signInView) Browser() string {
	if s.browser == "" {
		s.browser = oneLine(browser(s.p, s.ua))
	}
	return s.browser
}

// Render produces the email of the given kind ("welcome" or "new_device")
// in the person's language. Errors mean a template is broken; retrying
// does not help.
func (r *Renderer) Render(kind string, d Data) (Email, error) {
	lang := choose(r.matcher, r.languages, d.Locale, d.AcceptLanguage, r.cfg.Language)
	set := r.sets[lang]
	tt, ok := set.text[kind]
	if !ok {
		return Email{}, fmt.Errorf("%w: %q", ErrUnknownKind, kind)
	}
	v := r.view(lang, set.p, d)
	subject, text, html := buffers.Get().(*bytes.Buffer), buffers.Get().(*bytes.Buffer), buffers.Get().(*bytes.Buffer)
	defer putBuffers(subject, text, html)
	if err := tt.ExecuteTemplate(subject, "subject", v); err != nil {
		return Email{}, fmt.Errorf("render %s %s subject: %w", lang, kind, err)
	}
	if err := tt.Execute(text, v); err != nil {
		return Email{}, fmt.Errorf("render %s %s text: %w", lang, kind, err)
	}
	if err := set.html[kind].Execute(html, v); err != nil {
		return Email{}, fmt.Errorf("render %s %s html: %w", lang, kind, err)
	}
	return Email{
		Subject: truncate(oneLine(subject.String()), maxSubject),
		Text:    text.String(),
		HTML:    html.String(),
		Lang:    lang.String(),
	}, nil
}

// buffers holds the buffers that Render writes into and copies out of, so
// that an email does not grow three buffers from nothing (a third of the
// worker's garbage per email).
var buffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooled bounds the buffers kept for the next email: an email far
// larger than usual does not pin its memory.
const maxPooled = 64 << 10

func putBuffers(bs ...*bytes.Buffer) {
	for _, b := range bs {
		if b.Cap() <= maxPooled {
			b.Reset()
			buffers.Put(b)
		}
	}
}

// view builds what the templates see.
func (r *Renderer) view(lang language.Tag, p *message.Printer, d Data) view {
	v := view{
		SiteName:    oneLine(r.cfg.SiteName),
		Name:        oneLine(d.Name),
		Email:       oneLine(d.Email),
		Provider:    oneLine(d.Provider),
		SecurityURL: r.cfg.SecurityURL,
		Lang:        lang.String(),
	}
	v.Greeting = cmpOr(v.Name, v.Email)
	for _, s := range d.SignIns {
		sv := signInView{IP: oneLine(s.IP), UserAgent: oneLine(s.UserAgent), ua: s.UserAgent, p: p}
		if s.When.IsZero() {
			sv.When = p.Sprintf("unknown")
		} else {
			sv.When = when(lang, s.When, r.cfg.Location)
		}
		if sv.IP == "" {
			sv.IP = p.Sprintf("unknown")
		}
		v.SignIns = append(v.SignIns, &sv)
	}
	if len(v.SignIns) > 0 {
		v.When = v.SignIns[0].When
	}
	v.More = max(0, d.More)
	return v
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// oneLine turns every run of whitespace and control characters (CR, LF, tab,
// NUL, bidi overrides...) into one space, drops invalid UTF-8, trims and
// bounds the result. What comes out cannot break a header or forge a line.
func oneLine(s string) string {
	if !plainLine(s) {
		s = squash(s)
	}
	return truncate(s, maxLineValue)
}

// squash is oneLine before the bound.
func squash(s string) string {
	var b strings.Builder
	space := false
	for _, r := range strings.ToValidUTF8(s, "") {
		if unicode.IsSpace(r) || unicode.IsControl(r) || unicode.Is(unicode.Cf, r) ||
			r == '\u2028' || r == '\u2029' {
			space = true
			continue
		}
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		b.WriteRune(r)
	}
	return b.String()
}

// plainLine reports whether squash would return s as it is: printable
// ASCII, single spaces between words.
func plainLine(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == ' ':
			if i == 0 || i == len(s)-1 || s[i-1] == ' ' {
				return false
			}
		case c < 0x21 || c > 0x7e:
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	runes := []rune(s)
	return string(runes[:n-1]) + "…"
}
