package deliver

import (
	"testing"
)

// BenchmarkHandle measures the whole consume path per sign-in: pull from an
// embedded JetStream, read the person's record, claim the email in it,
// render, send over a pool of 4 connections to the test SMTP server (no
// STARTTLS delay beyond the first), record the result, acknowledge.
// Numbers only.
func BenchmarkHandle(b *testing.B) {
	h := newHarness(b, harnessOptions{concurrency: 4})
	events := make([][]byte, b.N)
	for i := range b.N {
		events[i] = marshal(b, person(i))
	}
	b.ResetTimer()
	var last uint64
	for i, data := range events {
		last = h.publishRaw(data, person(i).EventId).Sequence
	}
	h.smtp.WaitForMessages(b, b.N, waitLong*5)
	b.StopTimer()
	h.waitSettled(last)
}
