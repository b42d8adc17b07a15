// Package redirect decides where the gateway may send a browser after
// sign-in, so that the rd parameter is never an open redirect.
//
// A target is accepted in two shapes only: a path on the gateway itself
// ("/settings?tab=2") or an absolute http(s) URL whose host is on an
// explicit allowlist ("https://app.example.com/inbox"). Everything a
// browser might read as another host is refused, including forms that only
// some browsers or some servers normalise into one: scheme-relative URLs
// ("//evil"), backslashes ("/\evil"), their percent-encoded forms
// ("/%2F%2Fevil", "/%5Cevil"), dot segments, user information
// ("https://app.example.com@evil"), whitespace and control characters
// (which browsers strip), and any non-ASCII byte (so IDN look-alikes can
// only match if their punycode is on the list). Callers fall back to "/"
// for a refused target; nothing here is meant for URLs other than
// post-sign-in redirects.
package redirect

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// MaxLen is the longest target accepted.
const MaxLen = 2048

// hostPattern is a lowercase hostname or bracketed IPv6 address with an
// optional port.
var hostPattern = regexp.MustCompile(`^(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]*[a-z0-9])?)(:[0-9]{1,5})?$`)

// Allowlist is the set of hosts absolute targets may name. Its zero value
// accepts paths only. It is safe for concurrent use.
type Allowlist struct {
	hosts     map[string]bool
	httpsOnly bool
}

// New returns an Allowlist of hosts, each a hostname with an optional port
// ("app.example.com", "app.example.com:8443"), matched exactly and without
// regard to case: "app.example.com" matches neither a subdomain nor
// "app.example.com:443". With httpsOnly, http:// targets are refused.
func New(hosts []string, httpsOnly bool) (*Allowlist, error) {
	a := &Allowlist{hosts: make(map[string]bool, len(hosts)), httpsOnly: httpsOnly}
	for _, h := range hosts {
		h = strings.ToLower(strings.TrimSpace(h))
		if !hostPattern.MatchString(h) {
			return nil, fmt.Errorf("redirect: %q is not a hostname with an optional port", h)
		}
		a.hosts[h] = true
	}
	return a, nil
}

// Check returns target unchanged and true when the browser may be sent
// there, and "" and false when not.
func (a *Allowlist) Check(target string) (string, bool) {
	if target == "" || len(target) > MaxLen {
		return "", false
	}
	for i := 0; i < len(target); i++ {
		// Space, control characters, DEL, backslash and anything non-ASCII.
		if c := target[i]; c <= ' ' || c >= 0x7f || c == '\\' {
			return "", false
		}
	}
	if target[0] == '/' {
		if !safePath(target) {
			return "", false
		}
		return target, true
	}
	if !a.allowedAbsolute(target) {
		return "", false
	}
	return target, true
}

// safePath reports whether p, already free of unsafe bytes, is a path on
// this site however often it is percent-decoded.
func safePath(p string) bool {
	u, err := url.Parse(p)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" {
		return false
	}
	path := p
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	// Decode twice: a server or app in between may decode once more than
	// the browser does.
	for range 3 {
		if !cleanPath(path) {
			return false
		}
		decoded, err := url.PathUnescape(path)
		if err != nil {
			return false
		}
		if decoded == path {
			return true
		}
		path = decoded
	}
	return cleanPath(path)
}

// cleanPath reports whether path starts with exactly one "/" and has no
// empty or dot segments, backslashes or control characters.
func cleanPath(path string) bool {
	if path == "" || path[0] != '/' {
		return false
	}
	if strings.ContainsFunc(path, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '\\' }) {
		return false
	}
	for _, seg := range strings.Split(path[1:], "/") {
		if seg == "." || seg == ".." {
			return false
		}
	}
	return !strings.Contains(path, "//")
}

// allowedAbsolute reports whether target, already free of unsafe bytes, is
// http(s)://host[:port][/path] with the host on the list.
func (a *Allowlist) allowedAbsolute(target string) bool {
	var rest string
	switch {
	case strings.HasPrefix(target, "https://"):
		rest = target[len("https://"):]
	case strings.HasPrefix(target, "http://") && !a.httpsOnly:
		rest = target[len("http://"):]
	default:
		return false
	}
	authority := rest
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority = rest[:i]
	}
	// No user information and no percent-encoding in the host.
	if authority == "" || strings.ContainsAny(authority, "@%") {
		return false
	}
	host := strings.ToLower(authority)
	if !a.hosts[host] {
		return false
	}
	u, err := url.Parse(target)
	return err == nil && u.User == nil && strings.ToLower(u.Host) == host
}
