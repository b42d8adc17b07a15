package login

import (
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
)

// Size limits on what the gateway accepts. Real sign-ins stay far below
// them: a state is 43 bytes, and codes are rarely over a few hundred.
const (
	maxQuery = 4 << 10
	maxParam = 1 << 10
)

// guard applies the checks every request gets before routing: the rate
// limit on /login and /auth/callback, then the size limits. It returns the
// failure to answer with, having counted it for sign-in endpoints.
func (h *Handler) guard(w http.ResponseWriter, r *http.Request) *failure {
	if r.URL.Path == "/auth/verify" {
		// Proxies call it on every request to the apps behind them; it only
		// opens the session cookie.
		return nil
	}
	signIn := r.URL.Path == "/login" || r.URL.Path == callbackPath || strings.HasPrefix(r.URL.Path, callbackPath+"/")
	count := func(f *failure) *failure {
		if signIn {
			var p *provider
			if r.URL.Path == "/login" && len(r.URL.RawQuery) <= maxQuery {
				p = h.providers[r.URL.Query().Get("provider")]
			}
			h.metrics.logins.WithLabelValues(h.label(p), f.label()).Inc()
		}
		return f
	}

	if signIn {
		if ok, wait := h.limiter.Allow(h.clientKey(r), h.cfg.Now()); !ok {
			secs := max(int64(math.Ceil(wait.Seconds())), 1)
			w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
			return count(failed(reasonRateLimited, "", humanWait(secs)))
		}
	}

	tooLarge := func(what string) *failure {
		return count(failed(reasonRequestTooLarge, what))
	}
	if len(r.URL.RawQuery) > maxQuery {
		return tooLarge(fmt.Sprintf("query string of %d bytes, limit %d", len(r.URL.RawQuery), maxQuery))
	}
	q := r.URL.Query()
	for _, name := range []string{"state", "code", "iss", "error"} {
		for _, v := range q[name] {
			if len(v) > maxParam {
				return tooLarge(fmt.Sprintf("%s parameter of %d bytes, limit %d", name, len(v), maxParam))
			}
		}
	}
	return nil
}

// dropOversizedCookies deletes the Doorbell cookies in r that are larger
// than the gateway ever sets (left by an older version, or planted by a
// neighbour on the same site), and returns r without them, so the person
// starts again at once instead of being refused until they expire. Other
// apps' cookies are their own business.
func (h *Handler) dropOversizedCookies(w http.ResponseWriter, r *http.Request) *http.Request {
	cookies := r.Cookies()
	keep := cookies[:0:0]
	for _, c := range cookies {
		ours := strings.HasPrefix(c.Name, cookiePrefix) || strings.HasPrefix(c.Name, hostPrefix+cookiePrefix)
		if !ours || len(c.Name)+len(c.Value) <= maxCookieBytes {
			keep = append(keep, c)
			continue
		}
		for _, path := range []string{"/", callbackPath} {
			h.clearCookie(w, c.Name, path, h.cfg.CookieDomain)
		}
		h.log.Warn("oversized Doorbell cookie deleted and ignored", "cookie", c.Name, "bytes", len(c.Value),
			"limit", maxCookieBytes, "path", r.URL.Path)
	}
	if len(keep) == len(cookies) {
		return r
	}
	r = r.Clone(r.Context())
	r.Header.Del("Cookie")
	for _, c := range keep {
		r.AddCookie(c)
	}
	return r
}

func humanWait(secs int64) string {
	switch {
	case secs <= 1:
		return "a second"
	case secs < 120:
		return strconv.FormatInt(secs, 10) + " seconds"
	default:
		return strconv.FormatInt((secs+59)/60, 10) + " minutes"
	}
}

// clientIP is the address of the browser: the peer, or, when the peer is a
// trusted proxy, the last address in X-Forwarded-For that is not a trusted
// proxy (earlier entries are whatever the client claimed).
//
// X-Forwarded-For from a peer that is not trusted is ignored, and the
// first time that happens it is logged: usually a proxy missing from
// GATEWAY_TRUSTED_PROXIES, behind which every person shares one rate-limit
// bucket and one address in events.
func (h *Handler) clientIP(r *http.Request) netip.Addr {
	peer := parseAddr(r.RemoteAddr)
	if !h.trusted(peer) {
		if r.Header.Get("X-Forwarded-For") != "" && h.untrustedXFF.CompareAndSwap(false, true) {
			h.log.Warn("X-Forwarded-For ignored: the peer that sent it is not a trusted proxy, so it counts as the client "+
				"(one rate-limit bucket and one address in events for everyone behind it); if it is your proxy or load balancer, "+
				"add its address or network to GATEWAY_TRUSTED_PROXIES. Said once per process.",
				"peer", peer.String())
		}
		return peer
	}
	xff := strings.Join(r.Header.Values("X-Forwarded-For"), ",")
	parts := strings.Split(xff, ",")
	for i := len(parts) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(parts[i]))
		if err != nil {
			break
		}
		a = a.Unmap()
		if !h.trusted(a) {
			return a
		}
		peer = a
	}
	return peer
}

func (h *Handler) trusted(a netip.Addr) bool {
	for _, p := range h.cfg.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientKey is the rate limiter's key for the request: the client's IPv4
// address, or its IPv6 /64, which one subscriber usually holds whole.
func (h *Handler) clientKey(r *http.Request) string {
	a := h.clientIP(r)
	if a.Is6() {
		if p, err := a.Prefix(64); err == nil {
			return p.String()
		}
	}
	return a.String()
}

func parseAddr(remote string) netip.Addr {
	host := remote
	if h, _, err := net.SplitHostPort(remote); err == nil {
		host = h
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.IPv4Unspecified()
	}
	return a.Unmap()
}
