// Package browser signs one person in through a relying party (auth-gateway
// or oauth2-proxy) and the benchmark's provider the way a fresh browser
// would, without rendering anything: its own cookie jar and connections,
// the relying party's start URL, the provider's authorization endpoint, the
// relying party's callback.
package browser

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"time"

	"github.com/doorbell/doorbell/bench/internal/idp"
)

// Timing is where one sign-in spent its time, as the browser saw it.
type Timing struct {
	// Start is when the first request was sent.
	Start time.Time
	// Total runs from Start to the callback's answer.
	Total time.Duration
	// AtRelyingParty is the time of the two requests to the relying party
	// (start and callback), the provider's own work inside the callback
	// (token and UserInfo handlers) taken out.
	AtRelyingParty time.Duration
	// AtProvider is the authorization request's round trip plus the
	// provider's work inside the callback.
	AtProvider time.Duration
}

// ServedTimer reports how long the provider worked for email's sign-in
// inside the relying party's callback; *idp.Provider is one.
type ServedTimer interface {
	ServedTime(email string) time.Duration
}

var _ ServedTimer = (*idp.Provider)(nil)

// SignIn signs email in, starting at startURL (the relying party's login
// URL), with a new cookie jar. With a nil transport it also opens new
// connections, as a new browser would, and closes them after; otherwise
// it uses tr's (a reverse proxy's kept-alive connections, say). A sign-in
// succeeds when the callback answers with a redirect (302 or 303), as both
// relying parties do once the session is set.
func SignIn(ctx context.Context, tr http.RoundTripper, startURL, email string, provider ServedTimer) (Timing, error) {
	jar, _ := cookiejar.New(nil)
	if tr == nil {
		fresh := NewTransport()
		defer fresh.CloseIdleConnections()
		tr = fresh
	}
	client := &http.Client{
		Transport:     tr,
		Jar:           jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}
	t := Timing{Start: time.Now()}
	authorize, err := step(ctx, client, startURL, "", "start")
	if err != nil {
		return t, err
	}
	t1 := time.Now()
	callback, err := step(ctx, client, authorize, email, "authorize")
	if err != nil {
		return t, err
	}
	t2 := time.Now()
	if _, err := step(ctx, client, callback, "", "callback"); err != nil {
		return t, err
	}
	t3 := time.Now()
	served := provider.ServedTime(email)
	t.Total = t3.Sub(t.Start)
	t.AtProvider = t2.Sub(t1) + served
	t.AtRelyingParty = t1.Sub(t.Start) + t3.Sub(t2) - served
	return t, nil
}

// NewTransport is a transport as a browser has: no compression asked for,
// a few idle connections per host kept.
func NewTransport() *http.Transport {
	return &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
}

// step sends one GET and returns the absolute Location of its redirect.
// user, when set, is sent in idp.UserHeader.
func step(ctx context.Context, client *http.Client, target, user, name string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	req.Header.Set("User-Agent", "doorbell-bench/1 (fresh browser per sign-in)")
	if user != "" {
		req.Header.Set(idp.UserHeader, user)
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound && resp.StatusCode != http.StatusSeeOther {
		return "", &StatusError{Step: name, Status: resp.StatusCode, Body: string(body[:min(len(body), 300)])}
	}
	loc, err := resp.Location()
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	return loc.String(), nil
}

// StatusError is a step that answered something other than a redirect.
type StatusError struct {
	Step   string
	Status int
	Body   string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s: HTTP %d: %s", e.Step, e.Status, e.Body)
}

// Reason is a short, bounded description of err for counting failures.
func Reason(err error) string {
	var se *StatusError
	if errors.As(err, &se) {
		return fmt.Sprintf("%s HTTP %d", se.Step, se.Status)
	}
	msg := err.Error()
	return msg[:min(len(msg), 100)]
}
