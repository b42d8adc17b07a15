package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"

	"golang.org/x/net/html"
)

// browser is a scripted user: a cookie jar, real redirects, real forms.
type browser struct {
	t      *testing.T
	client *http.Client
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &browser{t: t, client: &http.Client{Jar: jar}}
}

// page is what the browser shows after following every redirect.
type page struct {
	url    *url.URL
	status int
	body   string
}

func (b *browser) get(rawURL string) page {
	b.t.Helper()
	resp, err := b.client.Get(rawURL)
	if err != nil {
		b.t.Fatalf("GET %s: %v", rawURL, err)
	}
	return b.read(resp)
}

func (b *browser) read(resp *http.Response) page {
	b.t.Helper()
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatalf("read %s: %v", resp.Request.URL, err)
	}
	return page{url: resp.Request.URL, status: resp.StatusCode, body: string(body)}
}

// submit fills the page's first form with fields (a nil value unchecks a
// checkbox or drops the field) and submits it as a browser would.
func (b *browser) submit(p page, fields map[string]*string) page {
	b.t.Helper()
	f, err := parseForm(p.body)
	if err != nil {
		b.t.Fatalf("page %s: %v\n%s", p.url, err, p.body)
	}
	for name, v := range fields {
		if v == nil {
			f.values.Del(name)
			continue
		}
		f.values.Set(name, *v)
	}
	action, err := p.url.Parse(f.action)
	if err != nil {
		b.t.Fatalf("form action %q: %v", f.action, err)
	}
	if !strings.EqualFold(f.method, "post") {
		b.t.Fatalf("form on %s uses method %q, want POST", p.url, f.method)
	}
	resp, err := b.client.PostForm(action.String(), f.values)
	if err != nil {
		b.t.Fatalf("POST %s: %v", action, err)
	}
	return b.read(resp)
}

// speaking makes the browser ask for pages in lang (Accept-Language).
func (b *browser) speaking(lang string) *browser {
	b.client.Transport = languageTransport(lang)
	return b
}

// languageTransport sets Accept-Language on every request.
type languageTransport string

func (l languageTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Accept-Language", string(l))
	return http.DefaultTransport.RoundTrip(r)
}

// signIn walks the whole sign-in: the gateway's start page, its sign-in
// link, the provider's form and the way back.
func (b *browser) signIn(gatewayURL, email string, verified bool) page {
	b.t.Helper()
	fields := map[string]*string{}
	if !verified {
		fields["email_verified"] = nil
	}
	return b.signInWith(gatewayURL, email, fields)
}

// signInWith is signIn with more fields of the provider's form (the dev
// IdP's "locale", say).
func (b *browser) signInWith(gatewayURL, email string, extra map[string]*string) page {
	b.t.Helper()
	home := b.get(gatewayURL + "/")
	if home.status != http.StatusOK || !strings.Contains(home.body, "Sign in") {
		b.t.Fatalf("start page: status %d, want 200 with a Sign in link:\n%s", home.status, home.body)
	}
	href := linkTo(home.body, "/login")
	if href == "" {
		b.t.Fatalf("start page has no link to /login:\n%s", home.body)
	}
	loginURL, _ := home.url.Parse(href)
	form := b.get(loginURL.String())
	if form.status != http.StatusOK {
		b.t.Fatalf("provider sign-in page %s: status %d\n%s", form.url, form.status, form.body)
	}
	fields := map[string]*string{"email": &email, "name": ptr("E2E <Tester>")}
	for k, v := range extra {
		fields[k] = v
	}
	return b.submit(form, fields)
}

func ptr(s string) *string { return &s }

type form struct {
	action string
	method string
	values url.Values
}

// parseForm reads the first <form> of an HTML page with the values a
// browser would send by default: inputs with their value, checked
// checkboxes, no submit buttons.
func parseForm(doc string) (*form, error) {
	root, err := html.Parse(strings.NewReader(doc))
	if err != nil {
		return nil, err
	}
	var f *form
	var walk func(n *html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode && n.Data == "form" && f == nil {
			f = &form{action: attr(n, "action"), method: attr(n, "method"), values: url.Values{}}
			collectInputs(n, f.values)
			return
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(root)
	if f == nil {
		return nil, fmt.Errorf("no form on the page")
	}
	return f, nil
}

func collectInputs(n *html.Node, values url.Values) {
	if n.Type == html.ElementNode && n.Data == "input" {
		name := attr(n, "name")
		switch typ := strings.ToLower(attr(n, "type")); {
		case name == "", typ == "submit", typ == "button":
		case typ == "checkbox" || typ == "radio":
			if hasAttr(n, "checked") {
				v := attr(n, "value")
				if v == "" {
					v = "on"
				}
				values.Add(name, v)
			}
		default:
			values.Add(name, attr(n, "value"))
		}
	}
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		collectInputs(c, values)
	}
}

// linkTo returns the href of the first link or form action on the page
// whose path starts with prefix.
func linkTo(doc, prefix string) string {
	root, err := html.Parse(strings.NewReader(doc))
	if err != nil {
		return ""
	}
	var found string
	var walk func(n *html.Node)
	walk = func(n *html.Node) {
		if found != "" {
			return
		}
		if n.Type == html.ElementNode {
			for _, key := range []string{"href", "action"} {
				if v := attr(n, key); strings.HasPrefix(v, prefix) {
					found = v
					return
				}
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(root)
	return found
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func hasAttr(n *html.Node, key string) bool {
	for _, a := range n.Attr {
		if a.Key == key {
			return true
		}
	}
	return false
}
