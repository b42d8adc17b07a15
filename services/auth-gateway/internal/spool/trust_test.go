package spool_test

import (
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/spool"
)

// TestASpoolOthersCanWriteIsRefused: whoever can write to the spool
// directory can put events into the gateway's name, so Open refuses a
// directory another user owns, or its group or others can write, with an
// error that says how to fix it.
func TestASpoolOthersCanWriteIsRefused(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(t *testing.T, dir string)
		wantIn string
	}{
		{"writable by everyone", func(t *testing.T, dir string) { chmod(t, dir, 0o777) }, "mode 0777"},
		{"writable by its group", func(t *testing.T, dir string) { chmod(t, dir, 0o770) }, "mode 0770"},
		{"owned by another user", func(t *testing.T, dir string) {
			if os.Geteuid() != 0 {
				t.Skip("SKIPPED: making a directory owned by another user needs root")
			}
			if err := os.Chown(dir, 4242, 4242); err != nil {
				t.Fatal(err)
			}
		}, "owned by uid 4242"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			tt.setup(t, dir)
			_, err := spool.Open(dir, 10, [][]byte{key(1)}, slog.New(slog.DiscardHandler))
			if err == nil || !strings.Contains(err.Error(), tt.wantIn) || !strings.Contains(err.Error(), "GATEWAY_SPOOL_DIR") {
				t.Errorf("Open = %v, want an error saying %q and how to fix it", err, tt.wantIn)
			}
		})
	}
	// A folder the spool makes itself inside such a directory is fine.
	parent := filepath.Join(t.TempDir(), "volume")
	if err := os.Mkdir(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	chmod(t, parent, 0o777)
	if _, err := spool.Open(filepath.Join(parent, "gateway"), 10, [][]byte{key(1)}, slog.New(slog.DiscardHandler)); err != nil {
		t.Errorf("Open of a new subfolder of a shared volume = %v", err)
	}
}

func chmod(t *testing.T, dir string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
}

// TestOnlyFilesSignedWithTheSpoolKeyAreRead: a file someone wrote without
// the key (planted into the directory, written under another key, or an
// old-format file with a bare checksum) does not load, and is set aside;
// keys rotate as the cookie keys do.
func TestOnlyFilesSignedWithTheSpoolKeyAreRead(t *testing.T) {
	dir := t.TempDir()
	s, _ := openWith(t, dir, 10, key(1))
	if _, err := s.Put("id-1", message(1)); err != nil {
		t.Fatal(err)
	}
	// Another key holder's file, as a forger with the format but not the key
	// would write it.
	other, _ := openWith(t, t.TempDir(), 10, key(9))
	if _, err := other.Put("id-2", message(2)); err != nil {
		t.Fatal(err)
	}
	body, err := os.ReadFile(filepath.Join(other.Dir(), files(t, other.Dir())[0]))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, files(t, other.Dir())[0]), body, 0o600); err != nil {
		t.Fatal(err)
	}
	// An old-format file: version 1, a bare checksum anyone can compute.
	var v1 map[string]any
	if err := json.Unmarshal(body, &v1); err != nil {
		t.Fatal(err)
	}
	v1["version"], v1["id"] = 1, "id-3"
	delete(v1, "mac")
	v1["sha256"] = strings.Repeat("0", 64)
	old, _ := json.Marshal(v1)
	if err := os.WriteFile(filepath.Join(dir, "00000000000000000009-id-3.msg"), old, 0o600); err != nil {
		t.Fatal(err)
	}

	// Reopened with the next key in front: the gateway's own file still
	// loads, the others do not.
	s, logs := openWith(t, dir, 10, key(2), key(1))
	if s.Len() != 3 {
		t.Fatalf("spool holds %d, want 3", s.Len())
	}
	loaded := 0
	for range 3 {
		e, _ := s.Oldest()
		_, err := s.Load(e)
		switch {
		case err == nil:
			loaded++
			if e.ID != "id-1" {
				t.Errorf("%s loaded, want only id-1", e.ID)
			}
			_ = s.Remove(e)
		case errors.Is(err, spool.ErrCorrupt):
			s.SetAside(e, err.Error())
		default:
			t.Fatal(err)
		}
	}
	if loaded != 1 {
		t.Errorf("%d files loaded, want 1", loaded)
	}
	if bad := files(t, filepath.Join(dir, spool.BadDir)); len(bad) != 2 {
		t.Errorf("bad/ holds %v, want the foreign and the old-format file", bad)
	}
	if !strings.Contains(logs.String(), "not authenticated") || !strings.Contains(logs.String(), "version 1") {
		t.Errorf("the warnings do not say why:\n%s", logs)
	}
}
