// Package cookie seals small values into cookie-safe strings and opens them
// again, so the gateway can keep login attempts and sessions in the browser
// without server-side storage.
//
// A sealed value is encrypted and authenticated with AES-256-GCM. The cookie's
// name is bound as additional data, so a value cut from one cookie does not
// open under another name, and an expiry time is sealed inside, so a stolen
// old value stops opening even if the browser kept it. Sealing does not make a
// value single-use: callers that need that (the login state) must delete the
// cookie themselves.
package cookie

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
)

// KeySize is the length in bytes of every key given to New.
const KeySize = 32

// maxValueLen bounds what Open will try to decode; browsers keep at most
// about 4 KiB per cookie anyway.
const maxValueLen = 4096

const (
	version   = "v1."
	aeadInfo  = "doorbell cookie aead v1"
	aadPrefix = "doorbell-cookie-v1\x00"
)

var (
	// ErrInvalid means the value was not sealed by any of the keys for this
	// cookie name: it was tampered with, truncated, sealed under another name,
	// or sealed with a key that has since been retired.
	ErrInvalid = errors.New("cookie: invalid value")
	// ErrExpired means the value is authentic but its expiry has passed.
	ErrExpired = errors.New("cookie: expired")
)

// Sealer seals and opens cookie values. It is safe for concurrent use.
type Sealer struct {
	aeads []cipher.AEAD
	// keys are the keys given to New, in order, kept for DeriveKey and
	// DeriveKeys.
	keys [][]byte
}

// New returns a Sealer for keys, each KeySize random bytes. The first key
// seals; every key opens, so a key can be rotated by putting the new one
// first and dropping the old one after the longest cookie lifetime.
//
// The AES keys are derived from the given keys with HKDF-SHA256, so the same
// secret can safely serve other purposes through DeriveKey.
func New(keys [][]byte) (*Sealer, error) {
	if len(keys) == 0 {
		return nil, errors.New("cookie: no keys")
	}
	s := &Sealer{}
	for i, k := range keys {
		s.keys = append(s.keys, append([]byte(nil), k...))
		if len(k) != KeySize {
			return nil, fmt.Errorf("cookie: key %d is %d bytes, want %d", i+1, len(k), KeySize)
		}
		aesKey, err := hkdf.Key(sha256.New, k, nil, aeadInfo, 32)
		if err != nil {
			return nil, fmt.Errorf("cookie: derive key %d: %w", i+1, err)
		}
		block, err := aes.NewCipher(aesKey)
		if err != nil {
			return nil, fmt.Errorf("cookie: key %d: %w", i+1, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("cookie: key %d: %w", i+1, err)
		}
		s.aeads = append(s.aeads, aead)
	}
	return s, nil
}

// RandomKey returns a fresh random key for New. Values sealed with it can be
// opened only by this process, so use it only when no key is configured.
func RandomKey() ([]byte, error) {
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("cookie: random key: %w", err)
	}
	return k, nil
}

// DeriveKey returns a 32-byte key for purpose, derived with HKDF-SHA256 from
// the last key given to New. Different purposes give independent keys.
//
// The last key is the oldest one during a rotation, so putting a new key in
// front keeps every derived key; dropping the last key changes them. With a
// single key the result is the same as before rotation was possible. Use it
// for values that should outlive a rotation step but need not outlive a
// completed rotation (the logout CSRF token); a value that must never change
// needs a dedicated key of its own.
func (s *Sealer) DeriveKey(purpose string) ([]byte, error) {
	return derive(s.keys[len(s.keys)-1], purpose)
}

// DeriveKeys returns one 32-byte key for purpose per key given to New, in
// the same order, derived as DeriveKey does. Use them like the cookie keys
// themselves, for values that must follow a rotation: protect with the
// first, accept any (the gateway's spooled events).
func (s *Sealer) DeriveKeys(purpose string) ([][]byte, error) {
	out := make([][]byte, len(s.keys))
	for i, k := range s.keys {
		d, err := derive(k, purpose)
		if err != nil {
			return nil, err
		}
		out[i] = d
	}
	return out, nil
}

func derive(key []byte, purpose string) ([]byte, error) {
	k, err := hkdf.Key(sha256.New, key, nil, "doorbell derived key v1: "+purpose, 32)
	if err != nil {
		return nil, fmt.Errorf("cookie: derive key: %w", err)
	}
	return k, nil
}

// Seal encrypts payload for the cookie called name, to be accepted by Open
// until expires. The result contains only URL-safe base64 characters and a
// version prefix, so it can be used as a cookie value as is.
func (s *Sealer) Seal(name string, payload []byte, expires time.Time) (string, error) {
	aead := s.aeads[0]
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+8+len(payload)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("cookie: nonce: %w", err)
	}
	plain := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint64(plain, uint64(expires.Unix()))
	plain = append(plain, payload...)
	sealed := aead.Seal(nonce, nonce, plain, additionalData(name))
	return version + base64.RawURLEncoding.EncodeToString(sealed), nil
}

// Open returns the payload sealed into value for the cookie called name. It
// returns ErrInvalid if no key opens it and ErrExpired if it was sealed to
// expire at or before now.
func (s *Sealer) Open(name, value string, now time.Time) ([]byte, error) {
	if len(value) > maxValueLen || !strings.HasPrefix(value, version) {
		return nil, ErrInvalid
	}
	raw, err := base64.RawURLEncoding.DecodeString(value[len(version):])
	if err != nil {
		return nil, ErrInvalid
	}
	ad := additionalData(name)
	for _, aead := range s.aeads {
		ns := aead.NonceSize()
		if len(raw) < ns+8+aead.Overhead() {
			return nil, ErrInvalid
		}
		plain, err := aead.Open(nil, raw[:ns], raw[ns:], ad)
		if err != nil {
			continue
		}
		expires := time.Unix(int64(binary.BigEndian.Uint64(plain[:8])), 0)
		if !now.Before(expires) {
			return nil, ErrExpired
		}
		return plain[8:], nil
	}
	return nil, ErrInvalid
}

func additionalData(name string) []byte {
	return []byte(aadPrefix + name)
}
