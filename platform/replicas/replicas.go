// Package replicas chooses how many copies what a Doorbell service creates
// in JetStream (streams, buckets) gets: as configured
// (NATS_STREAM_REPLICAS), or with Auto as many as the NATS servers can
// place, up to three (min(3, cluster size)), so that they
// survive the loss of one server in a cluster and still work on a single
// server.
package replicas

import (
	"errors"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Auto asks for as many replicas as the servers can place, up to three.
const Auto = 0

// Error codes of the JetStream API that say the servers cannot hold as
// many replicas as asked for.
const (
	codeSingleServer jetstream.ErrorCode = 10074 // replicas > 1 not supported in non-clustered mode
	codeNoPeers      jetstream.ErrorCode = 10005 // no suitable peers for placement
)

// Fit calls apply with want replicas and returns the count it settled on
// with apply's error. With Auto it asks for three first and, each time the
// servers answer that they cannot place that many, for fewer: one on a
// single server, one less in a cluster of fewer servers.
func Fit(want int, apply func(n int) error) (int, error) {
	if want != Auto {
		return want, apply(want)
	}
	n := 3
	for {
		err := apply(n)
		var apiErr *jetstream.APIError
		if err == nil || n == 1 || !errors.As(err, &apiErr) {
			return n, err
		}
		switch apiErr.ErrorCode {
		case codeSingleServer:
			n = 1
		case codeNoPeers:
			n--
		default:
			return n, err
		}
	}
}

// Parse reads a NATS_STREAM_REPLICAS value: auto (or nothing) is Auto,
// else a whole number from 1 to 5, the most JetStream allows. Its error
// says what is allowed; the caller names the variable.
func Parse(v string) (int, error) {
	v = strings.ToLower(strings.TrimSpace(v))
	if v == "" || v == "auto" {
		return Auto, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 5 {
		return Auto, errors.New("must be auto or a whole number from 1 to 5")
	}
	return n, nil
}

// Setting names want as NATS_STREAM_REPLICAS does, for logs.
func Setting(want int) string {
	if want == Auto {
		return "auto"
	}
	return strconv.Itoa(want)
}
