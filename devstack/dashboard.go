package main

import (
	"fmt"
	"net/url"
)

// dashboardGraph is one graph of the Doorbell view in Prometheus's graph
// page: the query of one of the Grafana dashboard's panels, under that
// panel's title.
type dashboardGraph struct {
	title string // the Grafana panel's title, plus which of its lines when it has several
	expr  string // that panel's query, with Grafana's $__rate_interval as 1m
}

// dashboardGraphs are the key panels of the production dashboard,
// deploy/grafana/dashboards/doorbell.json, in the order a person checks
// them. Their queries are Grafana's, word for word (a test holds them to
// it); Grafana's $__rate_interval is 1m there with its default 15s scrape
// interval, and 1m here.
var dashboardGraphs = []dashboardGraph{
	{"Sign-ins by provider and result", `sum by (provider, result) (rate(doorbell_gateway_logins_total[1m]))`},
	{"Emails by kind and result", `sum by (kind, result) (rate(doorbell_mailworker_emails_total[1m]))`},
	{"Login-to-email latency: p99", `histogram_quantile(0.99, sum by (le) (rate(doorbell_mailworker_login_to_email_seconds_bucket[1m])))`},
	{"Consumer backlog: pending", `max(doorbell_mailworker_consumer_pending_messages)`},
	{"Consumer backlog: ack pending", `max(doorbell_mailworker_consumer_ack_pending_messages)`},
	{"Dead letters by reason", `sum by (reason) (increase(doorbell_mailworker_deadletters_total[1m]))`},
}

// dashboardRange is the time range every graph opens with: short enough
// that a sign-in made a minute ago stands out; the page widens it.
const dashboardRange = "5m"

// dashboardURL is the address of Prometheus's graph page at addr with graphs
// preloaded, each on its Graph tab over dashboardRange, titled by a PromQL
// comment above its query. The page is /graph with parameters g0.expr,
// g0.tab and g0.range_input, g1.…: what Prometheus's own "graph" links use
// (Debian's 2.x classic UI, which /graph redirects to with the query kept,
// and the React UI of upstream 2.x). The classic UI sorts the parameters
// as text, so g10 and later would come out of order: at most ten graphs.
func dashboardURL(addr string, graphs []dashboardGraph) string {
	q := url.Values{}
	for i, g := range graphs {
		p := fmt.Sprintf("g%d.", i)
		q.Set(p+"expr", "# "+g.title+"\n"+g.expr)
		q.Set(p+"tab", "0") // 0 is Graph, 1 (the classic UI's default) Console
		q.Set(p+"range_input", dashboardRange)
	}
	u := url.URL{Scheme: "http", Host: addr, Path: "/graph", RawQuery: q.Encode()}
	return u.String()
}
