package decide

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	known := &User{FirstSeen: time.Unix(1, 0), Devices: []string{"dev-a", "dev-b"}}
	tests := []struct {
		name   string
		user   *User
		device string
		want   Kind
	}{
		{"a person seen for the first time is welcomed", nil, "dev-a", Welcome},
		{"a first sign-in without a device id is still a welcome", nil, "", Welcome},
		{"a known person on a known device gets nothing", known, "dev-b", None},
		{"a known person on an unknown device gets an alert", known, "dev-c", NewDevice},
		{"a known person without a device id gets an alert", known, "", NewDevice},
		{"a known person with no devices recorded gets an alert", &User{}, "dev-a", NewDevice},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Decide(tt.user, tt.device); got != tt.want {
				t.Errorf("Decide(%+v, %q) = %q, want %q", tt.user, tt.device, got, tt.want)
			}
		})
	}
}

func TestRemember(t *testing.T) {
	first := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	later := first.Add(time.Hour)
	many := make([]string, MaxDevices)
	for i := range many {
		many[i] = fmt.Sprintf("dev-%02d", i)
	}
	tests := []struct {
		name          string
		user          *User
		device        string
		wantFirstSeen time.Time
		wantDevices   []string
	}{
		{"a new person is recorded with the time and device", nil, "dev-a", later, []string{"dev-a"}},
		{"a new person without a device id has no devices", nil, "", later, []string{}},
		{"a new device is appended and first_seen kept",
			&User{FirstSeen: first, Devices: []string{"dev-a"}}, "dev-b", first, []string{"dev-a", "dev-b"}},
		{"a known device moves to the most recent end",
			&User{FirstSeen: first, Devices: []string{"dev-a", "dev-b"}}, "dev-a", first, []string{"dev-b", "dev-a"}},
		{"an empty device id is not stored",
			&User{FirstSeen: first, Devices: []string{"dev-a"}}, "", first, []string{"dev-a"}},
		{"the oldest device is forgotten beyond the limit",
			&User{FirstSeen: first, Devices: many}, "dev-new", first, append(slices.Clone(many[1:]), "dev-new")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before []string
			if tt.user != nil {
				before = slices.Clone(tt.user.Devices)
			}
			got := Remember(tt.user, tt.device, later)
			if !got.FirstSeen.Equal(tt.wantFirstSeen) {
				t.Errorf("FirstSeen = %v, want %v", got.FirstSeen, tt.wantFirstSeen)
			}
			if !slices.Equal(got.Devices, tt.wantDevices) {
				t.Errorf("Devices = %v, want %v", got.Devices, tt.wantDevices)
			}
			if len(got.Devices) > MaxDevices {
				t.Errorf("kept %d devices, limit is %d", len(got.Devices), MaxDevices)
			}
			if tt.user != nil && !slices.Equal(tt.user.Devices, before) {
				t.Errorf("Remember modified its input: %v, was %v", tt.user.Devices, before)
			}
		})
	}
}
