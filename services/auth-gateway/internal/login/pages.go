package login

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"strings"
)

//go:embed pages/*.html
var pageFiles embed.FS

// pages holds one parsed template set per page; each renders "layout".
type pages struct {
	home    *template.Template
	logout  *template.Template
	leaving *template.Template
	error   *template.Template
}

func parsePages() (*pages, error) {
	parse := func(name string) (*template.Template, error) {
		t, err := template.ParseFS(pageFiles, "pages/layout.html", "pages/"+name)
		if err != nil {
			return nil, fmt.Errorf("login: parse page %s: %w", name, err)
		}
		return t, nil
	}
	home, err := parse("home.html")
	if err != nil {
		return nil, err
	}
	logout, err := parse("logout.html")
	if err != nil {
		return nil, err
	}
	leaving, err := parse("leaving.html")
	if err != nil {
		return nil, err
	}
	errPage, err := parse("error.html")
	if err != nil {
		return nil, err
	}
	return &pages{home: home, logout: logout, leaving: leaving, error: errPage}, nil
}

type homeData struct {
	Title   string
	Error   bool
	Session *Session
	// ProviderName is the display name of the session's provider.
	ProviderName string
	// CSRF is the sign-out form's token.
	CSRF string
	// Providers are the sign-in buttons, when signed out.
	Providers []providerButton
}

type providerButton struct {
	Name string
	URL  string
}

type logoutData struct {
	Title   string
	Error   bool
	Session *Session
	CSRF    string
}

// leavingData is the page that sends the browser on to the provider's
// end-session endpoint.
type leavingData struct {
	Title        string
	Error        bool
	ProviderName string
	URL          string
}

type errorData struct {
	Title    string
	Error    bool
	Message  string
	Detail   string
	Status   int
	Code     string
	Link     string
	LinkText string
}

// render writes an HTML page. It renders into a buffer first, so a template
// error never leaves half a page behind.
func (h *Handler) render(w http.ResponseWriter, status int, t *template.Template, data any) {
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", data); err != nil {
		h.log.Error("render page", "error", err)
		http.Error(w, "Internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// wantsJSON reports whether the client prefers JSON to a page.
func wantsJSON(r *http.Request) bool {
	accept := r.Header.Get("Accept")
	return strings.Contains(accept, "application/json") && !strings.Contains(accept, "text/html")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
