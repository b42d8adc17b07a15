package spool_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/spool"
)

// key is a spool key, n in every byte.
func key(n byte) []byte { return bytes.Repeat([]byte{n}, 32) }

func open(t *testing.T, dir string, max int) (*spool.Spool, *bytes.Buffer) {
	t.Helper()
	return openWith(t, dir, max, key(1))
}

// openWith opens the spool in dir with keys, the first signing.
func openWith(t *testing.T, dir string, max int, keys ...[]byte) (*spool.Spool, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	s, err := spool.Open(dir, max, keys, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s, &logs
}

func message(n int) spool.Message {
	return spool.Message{
		Subject: "user.authenticated",
		Header:  map[string][]string{"Nats-Msg-Id": {fmt.Sprintf("id-%d", n)}, "traceparent": {"00-abc-def-01"}},
		Data:    []byte(fmt.Sprintf("event %d \x00\xff", n)),
	}
}

// files lists the names in dir (not recursing), hidden ones included.
func files(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names
}

func TestMessagesSurviveAReopenOldestFirst(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s, _ := open(t, dir, 10)
	for i := 1; i <= 3; i++ {
		if _, err := s.Put(fmt.Sprintf("id-%d", i), message(i)); err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
	}
	if got := files(t, dir); len(got) != 3 || slices.ContainsFunc(got, func(n string) bool { return strings.HasPrefix(n, ".") }) {
		t.Fatalf("files after three Puts = %v, want three and no temporary ones", got)
	}

	// As after a restart.
	s, logs := open(t, dir, 10)
	if s.Len() != 3 {
		t.Fatalf("reopened spool holds %d, want 3", s.Len())
	}
	for i := 1; i <= 3; i++ {
		e, ok := s.Oldest()
		if !ok || e.ID != fmt.Sprintf("id-%d", i) {
			t.Fatalf("oldest = %+v %v, want id-%d", e, ok, i)
		}
		m, err := s.Load(e)
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		if !reflect.DeepEqual(m, message(i)) {
			t.Errorf("loaded %+v, want %+v", m, message(i))
		}
		if err := s.Remove(e); err != nil {
			t.Fatalf("Remove: %v", err)
		}
	}
	if _, ok := s.Oldest(); ok || s.Len() != 0 || len(files(t, dir)) != 0 {
		t.Errorf("spool not empty after removing everything: %v", files(t, dir))
	}
	if depth, oldest := s.Stats(); depth != 0 || !oldest.IsZero() {
		t.Errorf("Stats of an empty spool = %d, %v", depth, oldest)
	}
	if logs.Len() != 0 {
		t.Errorf("a clean spool logged:\n%s", logs)
	}
}

func TestSpoolIsPrivateToItsOwner(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s, _ := open(t, dir, 10)
	if _, err := s.Put("id-1", message(1)); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o700 {
		t.Errorf("directory mode %o, want 700", perm)
	}
	name := files(t, dir)[0]
	info, err = os.Stat(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Errorf("file mode %o, want 600", perm)
	}
}

func TestPutRefusesBeyondTheMaximum(t *testing.T) {
	dir := t.TempDir()
	s, _ := open(t, dir, 2)
	for i := 1; i <= 2; i++ {
		if _, err := s.Put(fmt.Sprintf("id-%d", i), message(i)); err != nil {
			t.Fatal(err)
		}
	}
	if !s.Full() {
		t.Error("Full = false with 2 of 2")
	}
	_, err := s.Put("id-3", message(3))
	if !errors.Is(err, spool.ErrFull) {
		t.Fatalf("third Put = %v, want ErrFull", err)
	}
	if n := len(files(t, dir)); n != 2 {
		t.Errorf("%d files after a refused Put, want 2", n)
	}
	e, _ := s.Oldest()
	if err := s.Remove(e); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put("id-3", message(3)); err != nil {
		t.Errorf("Put after making room: %v", err)
	}
}

func TestMessagesFoundAtStartAreKeptBeyondTheMaximum(t *testing.T) {
	dir := t.TempDir()
	s, _ := open(t, dir, 5)
	for i := 1; i <= 3; i++ {
		if _, err := s.Put(fmt.Sprintf("id-%d", i), message(i)); err != nil {
			t.Fatal(err)
		}
	}
	s, _ = open(t, dir, 1)
	if s.Len() != 3 || !s.Full() {
		t.Errorf("reopened with a lower maximum: %d messages, full %v; want all 3 kept, full", s.Len(), s.Full())
	}
}

func TestIDsMustBeUsableInFileNames(t *testing.T) {
	s, _ := open(t, t.TempDir(), 10)
	for _, id := range []string{"", "../escape", "a/b", ".hidden", strings.Repeat("x", 200)} {
		if _, err := s.Put(id, message(1)); err == nil {
			t.Errorf("Put(%q) accepted", id)
		}
	}
	if s.Len() != 0 {
		t.Errorf("refused Puts left %d messages", s.Len())
	}
}

// TestLeftoversOfAnInterruptedRunAreMovedAside: a temporary file (a Put
// cut short by a crash) and a file the spool did not write go to bad/ with
// a warning at Open; complete messages stay.
func TestLeftoversOfAnInterruptedRunAreMovedAside(t *testing.T) {
	dir := t.TempDir()
	s, _ := open(t, dir, 10)
	if _, err := s.Put("id-1", message(1)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".tmp-123456"), []byte(`{"version":1,"id":"id-2","da`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}

	s, logs := open(t, dir, 10)
	if s.Len() != 1 {
		t.Errorf("spool holds %d, want the one complete message", s.Len())
	}
	bad := files(t, filepath.Join(dir, spool.BadDir))
	slices.Sort(bad)
	if want := []string{".tmp-123456", "notes.txt"}; !reflect.DeepEqual(bad, want) {
		t.Errorf("bad/ holds %v, want %v", bad, want)
	}
	if n, err := s.SetAsideFiles(); n != 2 || err != nil {
		t.Errorf("SetAsideFiles = %d, %v; want 2", n, err)
	}
	// An operator deals with one: the count follows the folder.
	if err := os.Remove(filepath.Join(dir, spool.BadDir, "notes.txt")); err != nil {
		t.Fatal(err)
	}
	if n, err := s.SetAsideFiles(); n != 1 || err != nil {
		t.Errorf("SetAsideFiles after a delete = %d, %v; want 1", n, err)
	}
	if got := files(t, dir); len(got) != 1 {
		t.Errorf("spool directory holds %v, want only the message", got)
	}
	for _, want := range []string{"level=WARN", "temporary file left by an interrupted write", "not a spooled message"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

func TestCorruptFilesAreRefusedAndSetAside(t *testing.T) {
	tests := []struct {
		name    string
		corrupt func(body []byte) []byte
	}{
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }},
		{"empty", func([]byte) []byte { return nil }},
		{"not JSON", func([]byte) []byte { return []byte("\x00\x01garbage") }},
		{"one byte of the data changed", func(b []byte) []byte {
			return bytes.Replace(b, []byte(`"data":"`), []byte(`"data":"A`), 1)
		}},
		{"a header changed", func(b []byte) []byte {
			return bytes.Replace(b, []byte("00-abc-def-01"), []byte("00-abc-def-00"), 1)
		}},
		{"two messages in one file", func(b []byte) []byte { return append(append([]byte{}, b...), b...) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s, logs := open(t, dir, 10)
			e, err := s.Put("id-1", message(1))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Put("id-2", message(2)); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, files(t, dir)[0])
			body, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, tt.corrupt(body), 0o600); err != nil {
				t.Fatal(err)
			}

			_, err = s.Load(e)
			if !errors.Is(err, spool.ErrCorrupt) {
				t.Fatalf("Load = %v, want ErrCorrupt", err)
			}
			s.SetAside(e, err.Error())
			if next, ok := s.Oldest(); !ok || next.ID != "id-2" {
				t.Errorf("after setting the corrupt file aside, oldest = %+v %v, want id-2", next, ok)
			}
			if bad := files(t, filepath.Join(dir, spool.BadDir)); len(bad) != 1 {
				t.Errorf("bad/ holds %v, want the corrupt file", bad)
			}
			if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "corrupt") {
				t.Errorf("no warning naming the reason:\n%s", logs)
			}
		})
	}
}

func TestFilesSetAsideTwiceKeepBothCopies(t *testing.T) {
	dir := t.TempDir()
	for range 2 {
		if err := os.WriteFile(filepath.Join(dir, ".tmp-1"), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		open(t, dir, 10)
	}
	if bad := files(t, filepath.Join(dir, spool.BadDir)); len(bad) != 2 {
		t.Errorf("bad/ holds %v, want both copies", bad)
	}
}

// A file that cannot be moved to bad/ stays where it is, out of the queue,
// and counts as set aside until an operator deals with it; a folder an
// operator makes in bad/ does not.
func TestAFileThatCannotBeMovedAsideStillCounts(t *testing.T) {
	dir := t.TempDir()
	s, logs := open(t, dir, 10)
	e, err := s.Put("id-1", message(1))
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, spool.BadDir)
	// bad/ is briefly not a folder, so the move fails.
	if err := os.Remove(bad); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s.SetAside(e, "refused for good")
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "could not move") {
		t.Errorf("no error for the failed move:\n%s", logs)
	}
	if err := os.Remove(bad); err != nil {
		t.Fatal(err)
	}
	for _, folder := range []string{"reviewed", "keep"} {
		if err := os.MkdirAll(filepath.Join(bad, folder), 0o700); err != nil {
			t.Fatal(err)
		}
	}

	if _, ok := s.Oldest(); ok {
		t.Error("the file is still queued")
	}
	if n, err := s.SetAsideFiles(); n != 1 || err != nil {
		t.Errorf("SetAsideFiles = %d, %v; want 1, the file left in the spool directory", n, err)
	}
	if err := os.Remove(filepath.Join(dir, files(t, dir)[0])); err != nil {
		t.Fatal(err)
	}
	if n, err := s.SetAsideFiles(); n != 0 || err != nil {
		t.Errorf("SetAsideFiles after the operator deleted it = %d, %v; want 0", n, err)
	}
}
