package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/config"
	"github.com/doorbell/doorbell/services/mail-worker/internal/deadletter"
	"github.com/doorbell/doorbell/services/mail-worker/internal/render"
	"github.com/doorbell/doorbell/services/mail-worker/internal/smtpsend"
)

const previewUsage = `usage: mail-worker preview KIND [flags]

Renders an email with the templates and settings the worker would use
(MAIL_TEMPLATES_DIR, MAIL_LOCALE, MAIL_TIME_ZONE, MAIL_SITE_NAME,
MAIL_SECURITY_URL, MAIL_FROM), so that an override can be checked before it
is deployed. Nothing is sent. KIND is welcome or new_device.

flags:
  --locale TAG    render for a person whose provider says TAG (en, ko, ...);
                  MAIL_LOCALE when not given
  --signins N     new_device: tell of N sign-ins, as an alert that folded
                  others (1 when not given)
  --dlq SEQ       render the event of dead letter SEQ (NATS_URL) instead of
                  an example
  --text          the subject and the plain-text part (the default)
  --html          the HTML part
  --eml           the whole message as the relay would get it

exit status: 0 done, 1 failed (a broken template, NATS), 2 usage error,
3 no such dead letter
`

// previewArgs is a parsed preview command line.
type previewArgs struct {
	kind    string
	locale  string
	signIns int
	dlq     uint64
	format  string // text, html or eml
}

func parsePreviewArgs(args []string) (previewArgs, error) {
	a := previewArgs{format: "text"}
	fs := flag.NewFlagSet("preview", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&a.locale, "locale", "", "")
	fs.IntVar(&a.signIns, "signins", 1, "")
	fs.Uint64Var(&a.dlq, "dlq", 0, "")
	html, text, eml := fs.Bool("html", false, ""), fs.Bool("text", false, ""), fs.Bool("eml", false, "")
	if len(args) == 0 || args[0] == "" || args[0][0] == '-' {
		return a, errors.New("no KIND")
	}
	a.kind = args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return a, err
	}
	if fs.NArg() > 0 {
		return a, fmt.Errorf("unexpected %q", fs.Arg(0))
	}
	switch {
	case *html && (*text || *eml), *text && *eml:
		return a, errors.New("one of --text, --html, --eml")
	case *html:
		a.format = "html"
	case *eml:
		a.format = "eml"
	}
	if a.kind != "welcome" && a.kind != "new_device" {
		return a, fmt.Errorf("unknown KIND %q: welcome or new_device", a.kind)
	}
	if a.signIns < 1 || a.signIns > 20 || (a.kind == "welcome" && a.signIns != 1) {
		return a, errors.New("--signins takes 1 to 20, and only for new_device")
	}
	return a, nil
}

// runPreview runs "mail-worker preview args..." and returns the exit status.
func runPreview(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 1 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help") {
		fmt.Fprint(stdout, previewUsage)
		return exitOK
	}
	a, err := parsePreviewArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "mail-worker preview: %v\n\n%s", err, previewUsage)
		return exitUsage
	}
	cfg, err := config.Load(getenv)
	if err != nil {
		fmt.Fprintln(stderr, "mail-worker preview:", err)
		return exitUsage
	}
	r, err := render.New(render.Config{TemplatesDir: cfg.TemplatesDir, Language: cfg.Locale, Location: cfg.TimeZone,
		SiteName: cfg.SiteName, SecurityURL: cfg.SecurityURL})
	if err != nil {
		fmt.Fprintln(stderr, "mail-worker preview: templates:", err)
		return exitFailed
	}
	ev := exampleEvent(a.locale)
	if a.dlq != 0 {
		if ev, err = deadLetterEvent(ctx, getenv, a.dlq); err != nil {
			fmt.Fprintln(stderr, "mail-worker preview:", err)
			if errors.Is(err, deadletter.ErrNotFound) {
				return exitNotFound
			}
			return exitFailed
		}
		if a.locale != "" {
			ev.Locale = a.locale
		}
	}
	email, err := r.Render(a.kind, previewData(ev, a.signIns))
	if err != nil {
		fmt.Fprintln(stderr, "mail-worker preview:", err)
		return exitFailed
	}
	switch a.format {
	case "html":
		fmt.Fprint(stdout, email.HTML)
	case "eml":
		data, err := smtpsend.Compose(cfg.MailFrom, smtpsend.Message{EventID: ev.GetEventId(), ToName: ev.GetName(),
			ToAddr: ev.GetEmail(), Subject: email.Subject, Text: email.Text, HTML: email.HTML, Lang: email.Lang})
		if err != nil {
			fmt.Fprintln(stderr, "mail-worker preview:", err)
			return exitFailed
		}
		_, _ = stdout.Write(data)
	default:
		fmt.Fprintf(stdout, "Subject: %s\nContent-Language: %s\n\n%s", email.Subject, email.Lang, email.Text)
	}
	return exitOK
}

// exampleEvent is a sign-in to preview with.
func exampleEvent(locale string) *eventsv1.UserAuthenticated {
	return &eventsv1.UserAuthenticated{
		EventId: "0190c4b2-0000-7abc-8def-0123456789ab", Issuer: "https://idp.example.com", Subject: "example",
		Provider: "example", Email: "ann@example.com", Name: "Ann Example", Locale: locale,
		Client: &eventsv1.Client{Ip: "198.51.100.23",
			UserAgent: "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:140.0) Gecko/20100101 Firefox/140.0"},
	}
}

// previewData is what the email of ev says; with n above 1 it tells of
// n-1 more sign-ins, as an alert that folded others.
func previewData(ev *eventsv1.UserAuthenticated, n int) render.Data {
	at := time.Now()
	if t := ev.GetAuthenticatedAt(); t.IsValid() {
		at = t.AsTime()
	}
	d := render.Data{Name: ev.GetName(), Email: ev.GetEmail(), Provider: ev.GetProvider(), Locale: ev.GetLocale(),
		AcceptLanguage: ev.GetClient().GetAcceptLanguage(),
		SignIns:        []render.SignIn{{When: at, IP: ev.GetClient().GetIp(), UserAgent: ev.GetClient().GetUserAgent()}}}
	others := []string{
		"Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
		"Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
	}
	for i := 1; i < n; i++ {
		d.SignIns = append(d.SignIns, render.SignIn{When: at.Add(-time.Duration(i) * 3 * time.Minute),
			IP: fmt.Sprintf("203.0.113.%d", i), UserAgent: others[i%len(others)]})
	}
	return d
}

// deadLetterTimeout bounds reading one dead letter for a preview.
const deadLetterTimeout = time.Minute

// deadLetterEvent reads the event of dead letter seq.
func deadLetterEvent(ctx context.Context, getenv func(string) string, seq uint64) (*eventsv1.UserAuthenticated, error) {
	url, err := config.NATSURL(getenv)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, deadLetterTimeout)
	defer cancel()
	nc, err := nats.Connect(url, nats.Name("doorbell-mail-worker-preview"), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("cannot connect to NATS at %s: %w", redactURL(url), err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	q, err := deadletter.Open(ctx, js)
	if err != nil {
		return nil, err
	}
	e, err := q.Get(ctx, seq)
	if err != nil {
		return nil, err
	}
	ev := &eventsv1.UserAuthenticated{}
	if err := proto.Unmarshal(e.Data, ev); err != nil {
		return nil, fmt.Errorf("dead letter %d holds no event (%s): %w", seq, e.Reason, err)
	}
	return ev, nil
}
