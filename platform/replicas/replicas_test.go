package replicas

import (
	"errors"
	"slices"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

func TestFit(t *testing.T) {
	singleServer := &jetstream.APIError{Code: 500, ErrorCode: codeSingleServer, Description: "replicas > 1 not supported in non-clustered mode"}
	noPeers := &jetstream.APIError{Code: 500, ErrorCode: codeNoPeers, Description: "no suitable peers for placement"}
	other := errors.New("nats: timeout")
	tests := []struct {
		name     string
		want     int
		servers  int   // how many replicas the servers can place
		failWith error // for a count above servers
		wantN    int
		wantTry  []int
		wantErr  bool
	}{
		{"auto on a single server", Auto, 1, singleServer, 1, []int{3, 1}, false},
		{"auto on three servers", Auto, 3, noPeers, 3, []int{3}, false},
		{"auto on two servers", Auto, 2, noPeers, 2, []int{3, 2}, false},
		{"an explicit count is asked for as it is", 5, 5, noPeers, 5, []int{5}, false},
		{"an explicit count the servers cannot place fails", 3, 1, singleServer, 3, []int{3}, true},
		{"other errors are returned at once", Auto, 3, nil, 3, []int{3}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tried []int
			n, err := Fit(tt.want, func(n int) error {
				tried = append(tried, n)
				switch {
				case tt.failWith == nil:
					return other
				case n > tt.servers:
					return tt.failWith
				}
				return nil
			})
			if n != tt.wantN || !slices.Equal(tried, tt.wantTry) || (err != nil) != tt.wantErr {
				t.Errorf("Fit = %d, %v after trying %v; want %d after %v (error %v)", n, err, tried, tt.wantN, tt.wantTry, tt.wantErr)
			}
		})
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr bool
	}{
		{"", Auto, false},
		{"auto", Auto, false},
		{" AUTO ", Auto, false},
		{"1", 1, false},
		{"5", 5, false},
		{"0", Auto, true},
		{"6", Auto, true},
		{"three", Auto, true},
	}
	for _, tt := range tests {
		n, err := Parse(tt.in)
		if n != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("Parse(%q) = %d, %v; want %d (error %v)", tt.in, n, err, tt.want, tt.wantErr)
		}
	}
}
