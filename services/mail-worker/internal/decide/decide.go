// Package decide chooses which email, if any, a sign-in deserves.
//
// It is pure: no I/O, no clock. The caller loads the person's record, asks
// Decide, sends what it says, and then stores Remember's result.
package decide

import (
	"slices"
	"time"
)

// Kind names what to send for one sign-in.
type Kind string

const (
	// Welcome goes to a person seen for the first time.
	Welcome Kind = "welcome"
	// NewDevice is a security alert: a known person signed in from a browser
	// not seen before.
	NewDevice Kind = "new_device"
	// None means the sign-in came from a known browser: send nothing.
	None Kind = "none"
)

// MaxDevices bounds User.Devices; the oldest ids are forgotten first.
const MaxDevices = 20

// User is what the worker remembers about a person, keyed by issuer and
// subject. It is stored as JSON, so its field names are a contract with the
// records already written.
type User struct {
	FirstSeen time.Time `json:"first_seen"`
	// Devices holds device ids, least recently seen first.
	Devices []string `json:"devices"`
}

// Decide returns what to send for a sign-in from deviceID by the person
// whose record is user (nil when there is none).
//
// An empty deviceID counts as an unknown device: without an id the worker
// cannot tell that the browser is a known one, and a spurious alert is
// cheaper than a missed one.
func Decide(user *User, deviceID string) Kind {
	switch {
	case user == nil:
		return Welcome
	case deviceID == "" || !slices.Contains(user.Devices, deviceID):
		return NewDevice
	default:
		return None
	}
}

// Remember returns the record after a sign-in at now from deviceID: a new
// record when user is nil, otherwise a copy with deviceID moved to the end of
// Devices, keeping the last MaxDevices. An empty deviceID is not stored.
// user itself is not modified.
func Remember(user *User, deviceID string, now time.Time) User {
	var next User
	if user == nil {
		next.FirstSeen = now.UTC()
	} else {
		next.FirstSeen = user.FirstSeen
		next.Devices = slices.DeleteFunc(slices.Clone(user.Devices), func(d string) bool {
			return d == deviceID || d == ""
		})
	}
	if deviceID != "" {
		next.Devices = append(next.Devices, deviceID)
	}
	if over := len(next.Devices) - MaxDevices; over > 0 {
		next.Devices = slices.Clone(next.Devices[over:])
	}
	if next.Devices == nil {
		next.Devices = []string{}
	}
	return next
}
