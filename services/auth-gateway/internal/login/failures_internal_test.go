package login

import (
	"slices"
	"testing"
)

// TestEveryReasonHasItsFailure: each reason has a complete entry in the
// failure table, and a reason that sign-ins count under logins_total has
// one of its result labels.
func TestEveryReasonHasItsFailure(t *testing.T) {
	notSignIn := []reason{reasonNotFound, reasonInternal, reasonLogoutRejected}
	for r := range reasonCount {
		k := failures[r]
		if k.status < 400 || k.label == "" || k.title == "" || k.message == "" || k.logMsg == "" {
			t.Errorf("reason %d: incomplete entry %+v", r, k)
		}
		if isResult(k.label) == slices.Contains(notSignIn, r) {
			t.Errorf("reason %d: label %q, a logins_total result: %v", r, k.label, isResult(k.label))
		}
	}
}
