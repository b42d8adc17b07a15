package inbox

import (
	"bytes"
	"encoding/json"
	"html/template"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"
)

func (i *Inbox) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", i.listPage)
	mux.HandleFunc("GET /messages/{id}", i.messagePage)
	mux.HandleFunc("POST /clear", func(w http.ResponseWriter, r *http.Request) {
		i.clear()
		http.Redirect(w, r, "/", http.StatusSeeOther)
	})
	mux.HandleFunc("GET /api/messages", i.apiList)
	mux.HandleFunc("GET /api/messages/{id}", i.apiMessage)
	mux.HandleFunc("DELETE /api/messages", func(w http.ResponseWriter, _ *http.Request) {
		i.clear()
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

// apiList serves GET /api/messages: every message, oldest first, as a JSON
// array; ?to=ADDR keeps those with ADDR among the envelope recipients
// (case-insensitive).
func (i *Inbox) apiList(w http.ResponseWriter, r *http.Request) {
	msgs := i.Messages()
	if to := strings.TrimSpace(r.URL.Query().Get("to")); to != "" {
		msgs = slices.DeleteFunc(msgs, func(m Message) bool {
			return !slices.ContainsFunc(m.To, func(rcpt string) bool { return strings.EqualFold(rcpt, to) })
		})
	}
	if msgs == nil {
		msgs = []Message{}
	}
	writeJSON(w, http.StatusOK, msgs)
}

func (i *Inbox) apiMessage(w http.ResponseWriter, r *http.Request) {
	m, ok := i.message(r.PathValue("id"))
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such message"})
		return
	}
	writeJSON(w, http.StatusOK, m)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, `{"error":"cannot encode"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

type listView struct {
	SMTPAddr string
	TLS      bool
	Messages []Message // newest first
}

func (i *Inbox) listPage(w http.ResponseWriter, _ *http.Request) {
	msgs := i.Messages()
	slices.Reverse(msgs)
	i.render(w, http.StatusOK, listTemplate, listView{SMTPAddr: i.smtpAddr, TLS: i.certPEM != nil, Messages: msgs})
}

type header struct {
	Name   string
	Values []string
}

type messageView struct {
	Message
	SortedHeaders []header
}

func (i *Inbox) messagePage(w http.ResponseWriter, r *http.Request) {
	m, ok := i.message(r.PathValue("id"))
	if !ok {
		i.render(w, http.StatusNotFound, notFoundTemplate, nil)
		return
	}
	view := messageView{Message: m}
	for name, values := range m.Headers {
		view.SortedHeaders = append(view.SortedHeaders, header{name, values})
	}
	sort.Slice(view.SortedHeaders, func(a, b int) bool { return view.SortedHeaders[a].Name < view.SortedHeaders[b].Name })
	i.render(w, http.StatusOK, messageTemplate, view)
}

func (i *Inbox) render(w http.ResponseWriter, status int, t *template.Template, data any) {
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		i.logger.Error("inbox: render page", "error", err)
		http.Error(w, "could not render the page", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	// The policy also binds the srcdoc iframe: no scripts, no remote content.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "+
		"form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(status)
	_, _ = buf.WriteTo(w)
}

var funcs = template.FuncMap{
	"when": func(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05") },
	"join": func(s []string) string { return strings.Join(s, ", ") },
}

const style = `
  :root { color-scheme: light dark; --border: #c9ced6; --muted: #666; --accent: #2456d6; }
  body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
         padding: 1.5rem; max-width: 70rem; background: Canvas; color: CanvasText; }
  h1 { font-size: 1.4rem; margin: 0 0 .25rem; }
  h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
  .muted { color: var(--muted); }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .4rem .6rem; border-bottom: 1px solid var(--border); vertical-align: top;
           overflow-wrap: anywhere; }
  th { font-weight: 600; }
  a { color: var(--accent); }
  pre { white-space: pre-wrap; overflow-wrap: anywhere; border: 1px solid var(--border); border-radius: 6px;
        padding: .75rem; margin: 0; }
  iframe { width: 100%; height: 32rem; border: 1px solid var(--border); border-radius: 6px; background: #fff; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; margin: 1rem 0; }
  dt { font-weight: 600; }
  dd { margin: 0; overflow-wrap: anywhere; }
  .bar { display: flex; justify-content: space-between; align-items: baseline; gap: 1rem; flex-wrap: wrap; }
  button { font: inherit; padding: .35rem .9rem; border-radius: 6px; border: 1px solid var(--border);
           background: transparent; color: inherit; cursor: pointer; }
  :focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
`

var listTemplate = template.Must(template.New("list").Funcs(funcs).Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="5">
<title>Inbox ({{len .Messages}}) · Doorbell dev inbox</title>
<style>` + style + `</style>
</head>
<body>
<header class="bar">
  <div>
    <h1>Doorbell dev inbox</h1>
    <p class="muted">Every email sent to SMTP {{.SMTPAddr}}{{if .TLS}} (STARTTLS offered){{end}} lands here; nothing is delivered.
      This page refreshes every few seconds.</p>
  </div>
  {{- if .Messages}}
  <form method="post" action="/clear"><button type="submit">Delete all</button></form>
  {{- end}}
</header>
<main>
{{- if .Messages}}
<table>
  <caption class="muted">{{len .Messages}} message{{if ne (len .Messages) 1}}s{{end}}, newest first</caption>
  <thead><tr><th scope="col">Received</th><th scope="col">To</th><th scope="col">Subject</th></tr></thead>
  <tbody>
  {{- range .Messages}}
    <tr>
      <td><time datetime="{{.ReceivedAt.Format "2006-01-02T15:04:05Z07:00"}}">{{when .ReceivedAt}}</time></td>
      <td>{{join .To}}</td>
      <td><a href="/messages/{{.ID}}">{{if .Subject}}{{.Subject}}{{else}}(no subject){{end}}</a></td>
    </tr>
  {{- end}}
  </tbody>
</table>
{{- else}}
<p>No messages yet.</p>
{{- end}}
</main>
</body>
</html>
`))

var messageTemplate = template.Must(template.New("message").Funcs(funcs).Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{if .Subject}}{{.Subject}}{{else}}(no subject){{end}} · Doorbell dev inbox</title>
<style>` + style + `</style>
</head>
<body>
<nav><a href="/">← All messages</a> · <a href="/api/messages/{{.ID}}">JSON</a></nav>
<main>
<h1>{{if .Subject}}{{.Subject}}{{else}}(no subject){{end}}</h1>
<dl>
  <dt>From (envelope)</dt><dd>{{.From}}</dd>
  <dt>To (envelope)</dt><dd>{{join .To}}</dd>
  <dt>Received</dt><dd><time datetime="{{.ReceivedAt.Format "2006-01-02T15:04:05Z07:00"}}">{{when .ReceivedAt}}</time></dd>
  <dt>STARTTLS</dt><dd>{{if .TLS}}yes{{else}}no{{end}}</dd>
  <dt>Message-ID</dt><dd>{{.MessageID}}</dd>
</dl>
<h2>HTML part</h2>
{{- if .HTML}}
<iframe sandbox title="HTML part of the message" srcdoc="{{.HTML}}"></iframe>
{{- else}}
<p class="muted">None.</p>
{{- end}}
<h2>Text part</h2>
{{- if .Text}}
<pre>{{.Text}}</pre>
{{- else}}
<p class="muted">None.</p>
{{- end}}
<h2>Headers</h2>
<table>
  <tbody>
  {{- range .SortedHeaders}}
  {{- $name := .Name}}
  {{- range .Values}}
    <tr><th scope="row">{{$name}}</th><td>{{.}}</td></tr>
  {{- end}}
  {{- end}}
  </tbody>
</table>
</main>
</body>
</html>
`))

var notFoundTemplate = template.Must(template.New("notfound").Parse(`<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>No such message · Doorbell dev inbox</title><style>` + style + `</style></head>
<body><main><h1>No such message</h1><p>It may have been deleted. <a href="/">All messages</a></p></main></body>
</html>
`))
