package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Files in the data directory.
const (
	natsStoreDir  = "nats"
	inboxCAFile   = "inbox-ca.pem"
	cookieKeyFile = "cookie-key"
	cookieKeySize = 32
)

// cookieKey returns the gateway's cookie key (32 random bytes, standard
// base64) kept in dir, making and saving one the first time, so sign-in
// sessions survive restarts of the devstack.
func cookieKey(dir string) (string, error) {
	path := filepath.Join(dir, cookieKeyFile)
	b, err := os.ReadFile(path)
	if err == nil {
		key := string(bytes.TrimSpace(b))
		if raw, err := base64.StdEncoding.DecodeString(key); err != nil || len(raw) != cookieKeySize {
			return "", fmt.Errorf("%s does not hold %d bytes in base64; delete it to make a new key", path, cookieKeySize)
		}
		return key, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read cookie key: %w", err)
	}
	raw := make([]byte, cookieKeySize)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("make cookie key: %w", err)
	}
	key := base64.StdEncoding.EncodeToString(raw)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("save cookie key: %w", err)
	}
	if _, err := f.WriteString(key + "\n"); err != nil {
		f.Close()
		return "", fmt.Errorf("save cookie key: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("save cookie key: %w", err)
	}
	return key, nil
}
