package devidp

import (
	"bytes"
	"html/template"
	"net/http"
	"net/url"
	"sort"

	"github.com/oauth2-proxy/mockoidc"
)

// formValues are what the person typed, shown again when the form comes back.
type formValues struct {
	Email    string
	Name     string
	Locale   string
	Verified bool
	Error    string
}

type hiddenField struct{ Name, Value string }

type formPage struct {
	Action   string
	ClientID string
	Return   string // scheme://host the browser goes back to
	Hidden   []hiddenField
	Locales  []string
	formValues
}

type errorPage struct {
	Reason       string
	ClientID     string
	RedirectURIs []string
}

const pageStyle = `
  :root { color-scheme: light dark; --accent: #2456d6; --muted: #666; --border: #c9ced6; }
  * { box-sizing: border-box; }
  body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
         min-height: 100vh; display: grid; place-items: center; background: Canvas; color: CanvasText; }
  main { width: min(26rem, 100% - 2rem); padding: 2rem; border: 1px solid var(--border); border-radius: 12px; }
  h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
  .note { font-size: .875rem; border-left: 4px solid #d69e24; padding: .5rem .75rem; margin: 1rem 0;
          background: color-mix(in srgb, #d69e24 12%, transparent); }
  .client { color: var(--muted); font-size: .9rem; margin: 0; overflow-wrap: anywhere; }
  .error { border-left: 4px solid #c62828; padding: .5rem .75rem; background: color-mix(in srgb, #c62828 12%, transparent); }
  label { display: block; font-weight: 600; margin-top: 1rem; }
  input[type=email], input[type=text] { width: 100%; font: inherit; padding: .5rem .6rem; margin-top: .25rem;
          border: 1px solid var(--border); border-radius: 6px; background: Field; color: FieldText; }
  .check { display: flex; gap: .5rem; align-items: center; font-weight: normal; }
  .hint { font-size: .8rem; color: var(--muted); margin: .25rem 0 0; }
  .buttons { display: flex; gap: .75rem; margin-top: 1.5rem; }
  button { font: inherit; padding: .55rem 1.2rem; border-radius: 6px; border: 1px solid var(--accent); cursor: pointer; }
  button.primary { background: var(--accent); color: #fff; }
  button.secondary { background: transparent; color: inherit; border-color: var(--border); }
  :focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
  code { overflow-wrap: anywhere; }
`

var formTemplate = template.Must(template.New("form").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · Doorbell development identity provider</title>
<style>` + pageStyle + `</style>
</head>
<body>
<main>
  <h1>Sign in</h1>
  <p class="client"><strong>{{.ClientID}}</strong> asks who you are. You will return to {{.Return}}.</p>
  <p class="note"><strong>Development identity provider.</strong> Nothing is checked: type any email
    address to sign in as that person. Never expose this server beyond your own machine.</p>
  {{- if .Error}}
  <p class="error" role="alert" id="form-error">{{.Error}}</p>
  {{- end}}
  <form method="post" action="{{.Action}}">
    {{- range .Hidden}}
    <input type="hidden" name="{{.Name}}" value="{{.Value}}">
    {{- end}}
    <label for="email">Email</label>
    <input type="email" id="email" name="email" value="{{.Email}}" required autofocus autocomplete="email"
      maxlength="254" placeholder="ada@example.com"{{if .Error}} aria-invalid="true" aria-describedby="form-error"{{end}}>
    <label for="name">Name</label>
    <input type="text" id="name" name="name" value="{{.Name}}" autocomplete="name" maxlength="200"
      aria-describedby="name-hint">
    <p class="hint" id="name-hint">Optional.</p>
    <label for="locale">Language (the locale claim)</label>
    <select id="locale" name="locale" aria-describedby="locale-hint">
      {{- range .Locales}}
      <option value="{{.}}"{{if eq . $.Locale}} selected{{end}}>{{if .}}{{.}}{{else}}none{{end}}</option>
      {{- end}}
    </select>
    <p class="hint" id="locale-hint">None: the emails follow your browser's language.</p>
    <label class="check" for="email_verified">
      <input type="checkbox" id="email_verified" name="email_verified" value="true"{{if .Verified}} checked{{end}}>
      Email is verified
    </label>
    <p class="hint">Untick to sign in with an unverified address (email_verified=false).</p>
    <div class="buttons">
      <button type="submit" class="primary">Sign in</button>
      <button type="submit" class="secondary" name="cancel" value="1" formnovalidate>Cancel</button>
    </div>
  </form>
</main>
</body>
</html>
`))

var errorTemplate = template.Must(template.New("error").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Bad sign-in request · Doorbell development identity provider</title>
<style>` + pageStyle + `</style>
</head>
<body>
<main>
  <h1>Bad sign-in request</h1>
  <p class="error" role="alert">{{.Reason}}</p>
  <p>The application that sent you here is not configured to match this development identity provider.
    It expects the client ID <code>{{.ClientID}}</code>
    {{- if .RedirectURIs}} and one of these redirect URIs:{{else}}.{{end}}</p>
  {{- if .RedirectURIs}}
  <ul>{{range .RedirectURIs}}<li><code>{{.}}</code></li>{{end}}</ul>
  {{- end}}
  <p class="note"><strong>Development identity provider.</strong> You have not been sent back to the application.</p>
</main>
</body>
</html>
`))

func (s *Server) renderForm(w http.ResponseWriter, status int, req authRequest, values formValues) {
	page := formPage{
		Action:     mockoidc.AuthorizationEndpoint,
		ClientID:   req.clientID,
		Hidden:     hiddenFields(req.params),
		Locales:    locales,
		formValues: values,
	}
	if u, err := url.Parse(req.redirectURI); err == nil {
		page.Return = u.Scheme + "://" + u.Host
	}
	s.render(w, status, formTemplate, page)
}

// badRequest shows why an authorization request was refused. It never
// redirects: the redirect_uri may be the very thing that is wrong.
func (s *Server) badRequest(w http.ResponseWriter, reason error) {
	s.logger.Warn("dev sign-in: bad authorization request", "reason", reason.Error())
	s.render(w, http.StatusBadRequest, errorTemplate, errorPage{
		Reason:       reason.Error(),
		ClientID:     s.cfg.ClientID,
		RedirectURIs: s.cfg.RedirectURIs,
	})
}

func (s *Server) render(w http.ResponseWriter, status int, t *template.Template, data any) {
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		s.logger.Error("dev sign-in: render page", "error", err)
		http.Error(w, "could not render the page", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(status)
	_, _ = buf.WriteTo(w)
}

func hiddenFields(params url.Values) []hiddenField {
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var fields []hiddenField
	for _, k := range keys {
		for _, v := range params[k] {
			fields = append(fields, hiddenField{Name: k, Value: v})
		}
	}
	return fields
}
