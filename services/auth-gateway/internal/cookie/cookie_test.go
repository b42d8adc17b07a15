package cookie_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/cookie"
)

func key(b byte) []byte { return bytes.Repeat([]byte{b}, cookie.KeySize) }

func mustSealer(t *testing.T, keys ...[]byte) *cookie.Sealer {
	t.Helper()
	s, err := cookie.New(keys)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

func TestOpen(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	payload := []byte(`{"state":"abc"}`)
	oldKey, newKey, otherKey := key(1), key(2), key(3)

	tests := []struct {
		name    string
		sealer  *cookie.Sealer // seals
		opener  *cookie.Sealer // opens
		sealAs  string
		openAs  string
		expires time.Time
		tamper  func(string) string
		wantErr error
	}{
		{
			name:   "round trip returns the payload",
			sealer: mustSealer(t, newKey), opener: mustSealer(t, newKey),
			sealAs: "session", openAs: "session", expires: now.Add(time.Hour),
		},
		{
			name:   "value sealed under another cookie name is invalid",
			sealer: mustSealer(t, newKey), opener: mustSealer(t, newKey),
			sealAs: "doorbell_login_a", openAs: "doorbell_login_b", expires: now.Add(time.Hour),
			wantErr: cookie.ErrInvalid,
		},
		{
			name:   "flipped ciphertext byte is invalid",
			sealer: mustSealer(t, newKey), opener: mustSealer(t, newKey),
			sealAs: "session", openAs: "session", expires: now.Add(time.Hour),
			tamper: func(v string) string {
				b := []byte(v)
				i := len(b) - 5
				if b[i] == 'A' {
					b[i] = 'B'
				} else {
					b[i] = 'A'
				}
				return string(b)
			},
			wantErr: cookie.ErrInvalid,
		},
		{
			name:   "truncated value is invalid",
			sealer: mustSealer(t, newKey), opener: mustSealer(t, newKey),
			sealAs: "session", openAs: "session", expires: now.Add(time.Hour),
			tamper:  func(v string) string { return v[:10] },
			wantErr: cookie.ErrInvalid,
		},
		{
			name:   "value without version prefix is invalid",
			sealer: mustSealer(t, newKey), opener: mustSealer(t, newKey),
			sealAs: "session", openAs: "session", expires: now.Add(time.Hour),
			tamper:  func(v string) string { return strings.TrimPrefix(v, "v1.") },
			wantErr: cookie.ErrInvalid,
		},
		{
			name:   "garbage is invalid",
			sealer: mustSealer(t, newKey), opener: mustSealer(t, newKey),
			sealAs: "session", openAs: "session", expires: now.Add(time.Hour),
			tamper:  func(string) string { return "v1.!!!not base64!!!" },
			wantErr: cookie.ErrInvalid,
		},
		{
			name:   "expired value is rejected",
			sealer: mustSealer(t, newKey), opener: mustSealer(t, newKey),
			sealAs: "session", openAs: "session", expires: now.Add(-time.Second),
			wantErr: cookie.ErrExpired,
		},
		{
			name:   "value expiring exactly now is rejected",
			sealer: mustSealer(t, newKey), opener: mustSealer(t, newKey),
			sealAs: "session", openAs: "session", expires: now,
			wantErr: cookie.ErrExpired,
		},
		{
			name:   "value sealed with an unknown key is invalid",
			sealer: mustSealer(t, otherKey), opener: mustSealer(t, newKey, oldKey),
			sealAs: "session", openAs: "session", expires: now.Add(time.Hour),
			wantErr: cookie.ErrInvalid,
		},
		{
			name:   "value sealed with the old key opens after rotation",
			sealer: mustSealer(t, oldKey), opener: mustSealer(t, newKey, oldKey),
			sealAs: "session", openAs: "session", expires: now.Add(time.Hour),
		},
		{
			name:   "value sealed with the new key opens on a replica that still seals with the old key",
			sealer: mustSealer(t, newKey, oldKey), opener: mustSealer(t, oldKey, newKey),
			sealAs: "session", openAs: "session", expires: now.Add(time.Hour),
		},
		{
			name:   "value sealed with a retired key is invalid",
			sealer: mustSealer(t, oldKey), opener: mustSealer(t, newKey),
			sealAs: "session", openAs: "session", expires: now.Add(time.Hour),
			wantErr: cookie.ErrInvalid,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := tt.sealer.Seal(tt.sealAs, payload, tt.expires)
			if err != nil {
				t.Fatalf("Seal: %v", err)
			}
			if tt.tamper != nil {
				v = tt.tamper(v)
			}
			got, err := tt.opener.Open(tt.openAs, v, now)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Open error = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == nil && !bytes.Equal(got, payload) {
				t.Fatalf("Open = %q, want %q", got, payload)
			}
		})
	}
}

func TestSealedValueIsCookieSafeAndHidesPayload(t *testing.T) {
	s := mustSealer(t, key(7))
	secret := "alice@example.com"
	v, err := s.Seal("doorbell_session", []byte(secret), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(v, secret) {
		t.Fatalf("sealed value shows the payload: %q", v)
	}
	for _, r := range v {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			t.Fatalf("sealed value has %q, not safe in a cookie: %q", r, v)
		}
	}
	v2, err := s.Seal("doorbell_session", []byte(secret), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if v == v2 {
		t.Fatal("two seals of the same payload are equal; nonce is not random")
	}
}

func TestNewRejectsBadKeys(t *testing.T) {
	tests := []struct {
		name string
		keys [][]byte
	}{
		{"no keys", nil},
		{"short key", [][]byte{make([]byte, 16)}},
		{"long second key", [][]byte{key(1), make([]byte, 33)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := cookie.New(tt.keys); err == nil {
				t.Fatal("New accepted bad keys")
			}
		})
	}
}

func TestDeriveKeyDependsOnPurposeAndLastKey(t *testing.T) {
	a := mustSealer(t, key(1), key(2))
	b := mustSealer(t, key(2), key(1))
	dev1, err := a.DeriveKey("device")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := a.DeriveKey("other")
	dev2, _ := b.DeriveKey("device")
	if len(dev1) != 32 {
		t.Fatalf("derived key is %d bytes", len(dev1))
	}
	if bytes.Equal(dev1, other) {
		t.Fatal("different purposes gave the same key")
	}
	if bytes.Equal(dev1, dev2) {
		t.Fatal("different last keys gave the same key")
	}
	if bytes.Equal(dev1, key(1)) || bytes.Equal(dev1, key(2)) {
		t.Fatal("derived key equals a configured key")
	}
}

func TestDeriveKeySurvivesANewKeyInFront(t *testing.T) {
	before, _ := mustSealer(t, key(1)).DeriveKey("device id")
	during, _ := mustSealer(t, key(9), key(1)).DeriveKey("device id")
	after, _ := mustSealer(t, key(9)).DeriveKey("device id")
	if !bytes.Equal(before, during) {
		t.Error("adding a new sealing key in front changed the derived key")
	}
	if bytes.Equal(during, after) {
		t.Error("dropping the old key kept the derived key; the doc says it changes")
	}
}

// TestDerivedKeysFollowARotation: DeriveKeys gives one key per cookie key,
// in order, so a value protected under the first before a new key was put
// in front is still accepted through the second after.
func TestDerivedKeysFollowARotation(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	before, err := cookie.New([][]byte{k1})
	if err != nil {
		t.Fatal(err)
	}
	after, err := cookie.New([][]byte{k2, k1})
	if err != nil {
		t.Fatal(err)
	}
	b, err := before.DeriveKeys("spool")
	if err != nil {
		t.Fatal(err)
	}
	a, err := after.DeriveKeys("spool")
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 1 || len(a) != 2 || !bytes.Equal(a[1], b[0]) || bytes.Equal(a[0], a[1]) {
		t.Errorf("derived keys do not follow the rotation")
	}
	other, _ := after.DeriveKeys("device id")
	if bytes.Equal(other[0], a[0]) {
		t.Error("two purposes gave the same key")
	}
	single, _ := before.DeriveKey("spool")
	if !bytes.Equal(single, b[0]) {
		t.Error("DeriveKey and DeriveKeys disagree for a single key")
	}
}
