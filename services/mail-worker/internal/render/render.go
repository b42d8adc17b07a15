// Package render turns a sign-in into the subject, plain-text body and HTML
// body of an email.
//
// Templates are embedded in the binary (templates/*.tmpl) and a folder may
// override any of them by file name. The plain-text template must define a
// "subject" template. HTML bodies go through html/template, so every value
// from the event is escaped; the subject and all single-line values are
// stripped of control characters, so nothing from the event can add a header
// or a line to the message.
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
	"regexp"
	"strings"
	texttemplate "text/template"
	"time"
	"unicode"
	"unicode/utf8"
)

//go:embed templates/*.tmpl
var embedded embed.FS

// Kinds of email the templates cover; each has <kind>.txt.tmpl and
// <kind>.html.tmpl.
var kinds = [...]string{"welcome", "new_device"}

// Limits on values from the event, in runes.
const (
	maxSubject   = 200
	maxLineValue = 256
)

// Data is what the templates are about. All fields but SiteName come from
// the event and are untrusted.
type Data struct {
	SiteName  string
	Name      string // display name; may be empty
	Email     string
	When      time.Time
	IP        string
	UserAgent string
	Locale    string // BCP 47 tag; may be empty
	Provider  string
}

// Email is a rendered message.
type Email struct {
	Subject string // one line, no control characters
	Text    string
	HTML    string
}

// Renderer holds parsed templates. It is safe for concurrent use.
type Renderer struct {
	text map[string]*texttemplate.Template
	html map[string]*htmltemplate.Template
}

// New parses the embedded templates, replacing each with the file of the same
// name in overrideDir when that folder is given and holds one. Every template
// is executed once with sample data so that a broken override stops the
// start-up instead of the first email.
func New(overrideDir string) (*Renderer, error) {
	r := &Renderer{
		text: make(map[string]*texttemplate.Template),
		html: make(map[string]*htmltemplate.Template),
	}
	for _, kind := range kinds {
		name := kind + ".txt.tmpl"
		src, err := source(overrideDir, name)
		if err != nil {
			return nil, err
		}
		tt, err := texttemplate.New(name).Option("missingkey=error").Parse(src)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", name, err)
		}
		if tt.Lookup("subject") == nil {
			return nil, fmt.Errorf("parse %s: it must define a \"subject\" template", name)
		}
		r.text[kind] = tt

		name = kind + ".html.tmpl"
		if src, err = source(overrideDir, name); err != nil {
			return nil, err
		}
		ht, err := htmltemplate.New(name).Option("missingkey=error").Parse(src)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", name, err)
		}
		r.html[kind] = ht
	}
	sample := Data{
		SiteName: "Doorbell", Name: `<b>"Sample"</b>`, Email: "sample@example.com",
		When: time.Unix(0, 0), IP: "192.0.2.1", UserAgent: "Sample/1.0", Locale: "en", Provider: "sample",
	}
	for _, kind := range kinds {
		if _, err := r.Render(kind, sample); err != nil {
			return nil, fmt.Errorf("try templates: %w", err)
		}
	}
	return r, nil
}

// source returns the override of name from dir if there is one, else the
// embedded template.
func source(dir, name string) (string, error) {
	if dir != "" {
		b, err := os.ReadFile(filepath.Join(dir, name))
		switch {
		case err == nil:
			return string(b), nil
		case !errors.Is(err, fs.ErrNotExist):
			return "", fmt.Errorf("read template override: %w", err)
		}
	}
	b, err := embedded.ReadFile("templates/" + name)
	if err != nil {
		return "", fmt.Errorf("read embedded template %s: %w", name, err)
	}
	return string(b), nil
}

// ErrUnknownKind is returned by Render for a kind without templates.
var ErrUnknownKind = errors.New("no templates for this kind of email")

// view is what the templates see: Data made safe to put on one line, plus
// derived values.
type view struct {
	SiteName  string
	Greeting  string // Name, or Email when there is no name
	Name      string
	Email     string
	When      string // "2006-01-02 15:04 UTC"
	IP        string
	UserAgent string
	Locale    string
	Lang      string // Locale if it looks like a language tag, else "en"
	Provider  string
}

var langTag = regexp.MustCompile(`^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$`)

// Render produces the email of the given kind ("welcome" or "new_device").
// Errors mean a template is broken; retrying does not help.
func (r *Renderer) Render(kind string, d Data) (Email, error) {
	tt, ok := r.text[kind]
	if !ok {
		return Email{}, fmt.Errorf("%w: %q", ErrUnknownKind, kind)
	}
	ht := r.html[kind]

	v := view{
		SiteName:  oneLine(d.SiteName),
		Name:      oneLine(d.Name),
		Email:     oneLine(d.Email),
		IP:        oneLine(d.IP),
		UserAgent: oneLine(d.UserAgent),
		Locale:    oneLine(d.Locale),
		Provider:  oneLine(d.Provider),
		Lang:      "en",
	}
	v.Greeting = v.Name
	if v.Greeting == "" {
		v.Greeting = v.Email
	}
	if langTag.MatchString(v.Locale) {
		v.Lang = v.Locale
	}
	if !d.When.IsZero() {
		v.When = d.When.UTC().Format("2006-01-02 15:04 UTC")
	} else {
		v.When = "an unknown time"
	}

	var subject, text, html bytes.Buffer
	if err := tt.ExecuteTemplate(&subject, "subject", v); err != nil {
		return Email{}, fmt.Errorf("render %s subject: %w", kind, err)
	}
	if err := tt.Execute(&text, v); err != nil {
		return Email{}, fmt.Errorf("render %s text: %w", kind, err)
	}
	if err := ht.Execute(&html, v); err != nil {
		return Email{}, fmt.Errorf("render %s html: %w", kind, err)
	}
	return Email{
		Subject: truncate(oneLine(subject.String()), maxSubject),
		Text:    text.String(),
		HTML:    html.String(),
	}, nil
}

// oneLine turns every run of whitespace and control characters (CR, LF, tab,
// NUL, bidi overrides...) into one space, drops invalid UTF-8, trims and
// bounds the result. What comes out cannot break a header or forge a line.
func oneLine(s string) string {
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
	return truncate(b.String(), maxLineValue)
}

func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	runes := []rune(s)
	return string(runes[:n-1]) + "…"
}
