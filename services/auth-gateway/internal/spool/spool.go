// Package spool keeps messages on local disk while they cannot be
// published, one file per message, so that a sign-in JetStream could not
// take in time is not lost.
//
// Put returns only once the message is durable: it writes a temporary
// file, fsyncs it, renames it into place and fsyncs the directory, so after
// a crash a message is either wholly in the spool or not at all. Open picks
// up what a previous run left behind. Messages come back out oldest first
// (Oldest, Load, Remove); files that cannot be read back, and temporary
// files an interrupted Put left behind, are moved to the bad/ subfolder
// with a warning, never deleted, never fatal.
//
// Every file carries an HMAC-SHA256 under a key the caller holds, so a file
// planted or altered by someone who can write to the directory but does
// not have the key is refused (set aside) instead of published as an
// event. Open refuses a directory that another user owns or that its group
// or others can write.
//
// A spool directory belongs to one process at a time: two gateways sharing
// it would publish each other's messages and move each other's temporary
// files aside. Spooled files hold personal data (the event's email address
// and IP), so the directory is created readable by its owner only and
// must be on a volume treated like the NATS store.
package spool

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrFull is returned by Put when the spool holds its maximum number of
// messages.
var ErrFull = errors.New("spool: full")

// ErrCorrupt is returned by Load for a file that is not a complete message
// this package wrote.
var ErrCorrupt = errors.New("spool: corrupt file")

// Message is what would have been published.
type Message struct {
	Subject string
	Header  map[string][]string
	Data    []byte
}

// Entry is one spooled message, without its content.
type Entry struct {
	// ID is the message id it was spooled under (the event id).
	ID string
	// Spooled is when it was written.
	Spooled time.Time
	name    string
}

// BadDir is the subfolder unreadable files are moved to.
const BadDir = "bad"

// Limits on what Put and Load accept.
const (
	maxIDLength = 128
	// maxFileSize bounds what Load reads; events are a few kilobytes.
	maxFileSize = 4 << 20
	// tempPrefix starts the names of files being written.
	tempPrefix = ".tmp-"
	fileSuffix = ".msg"
	// version 2 files carry an HMAC; version 1 files (a checksum only)
	// are refused.
	version = 2
)

// idPattern keeps ids usable in file names.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// namePattern is a spooled file: nanoseconds since the epoch, then the id.
var namePattern = regexp.MustCompile(`^([0-9]{20})-([A-Za-z0-9][A-Za-z0-9._-]*)\.msg$`)

// Spool is a directory of messages waiting to be published. It is safe for
// concurrent use; Remove and SetAside are meant for a single drainer.
type Spool struct {
	dir string
	max int
	// keys authenticate the files: the first signs, all verify.
	keys [][]byte
	log  *slog.Logger
	now  func() time.Time

	mu sync.Mutex
	// queue is every message in the directory, oldest first.
	queue []Entry
	// writing counts Puts in progress, which already hold a place.
	writing int
	// stuck names the files that could not be moved to bad/: left in
	// the directory, out of the queue.
	stuck map[string]bool
}

// Open opens the spool in dir, creating it (mode 0700) when missing, and
// takes stock of what a previous run left: messages join the queue, oldest
// first; leftover temporary files and files it does not recognise are moved
// to bad/. max bounds how many messages Put accepts; messages found at
// start are kept even beyond it. keys authenticate the files: the first
// signs what Put writes, and Load accepts a file any of them signed, so
// keys rotate as the caller's do; each must be at least 32 bytes. Open
// fails when dir belongs to another user or its group or others can write
// it.
func Open(dir string, max int, keys [][]byte, log *slog.Logger) (*Spool, error) {
	if max < 1 {
		return nil, errors.New("spool: the maximum must be at least 1")
	}
	if len(keys) == 0 || slices.ContainsFunc(keys, func(k []byte) bool { return len(k) < 32 }) {
		return nil, errors.New("spool: at least one key of 32 bytes or more is required")
	}
	if err := os.MkdirAll(filepath.Join(dir, BadDir), 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	if err := private(dir); err != nil {
		return nil, fmt.Errorf("spool: %s: %w", dir, err)
	}
	s := &Spool{dir: dir, max: max, keys: keys, log: log, now: time.Now, stuck: make(map[string]bool)}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	for _, de := range entries {
		name := de.Name()
		if de.IsDir() || name == BadDir {
			continue // bad/, and lost+found when dir is a mount point
		}
		if e, ok := parseName(name); ok {
			s.queue = append(s.queue, e)
			continue
		}
		why := "not a spooled message"
		if strings.HasPrefix(name, tempPrefix) {
			why = "temporary file left by an interrupted write"
		}
		s.moveAside(name, why)
	}
	slices.SortFunc(s.queue, func(a, b Entry) int { return strings.Compare(a.name, b.name) })
	return s, nil
}

// Dir is the spool's directory.
func (s *Spool) Dir() string { return s.dir }

// Max is the most messages Put accepts.
func (s *Spool) Max() int { return s.max }

// Put writes m durably under id (letters, digits, '.', '_' and '-') and
// returns once it is on disk. It returns ErrFull when the spool is full, and
// a file system error when the message could not be made durable; in both
// cases nothing is left in the spool. Put does file I/O that cannot be
// cancelled, so it takes no context.
func (s *Spool) Put(id string, m Message) (Entry, error) {
	if len(id) > maxIDLength || !idPattern.MatchString(id) {
		return Entry{}, fmt.Errorf("spool: id %.40q is not usable in a file name", id)
	}
	s.mu.Lock()
	if len(s.queue)+s.writing >= s.max {
		s.mu.Unlock()
		return Entry{}, fmt.Errorf("%w (%d messages)", ErrFull, s.max)
	}
	s.writing++
	s.mu.Unlock()

	e := Entry{ID: id, Spooled: s.now()}
	e.name = fmt.Sprintf("%020d-%s%s", e.Spooled.UnixNano(), id, fileSuffix)
	err := s.write(e, m)

	s.mu.Lock()
	defer s.mu.Unlock()
	s.writing--
	if err != nil {
		return Entry{}, err
	}
	s.queue = append(s.queue, e)
	return e, nil
}

// file is a spooled message on disk. The MAC catches files that are
// complete JSON but not what this spool's key holder wrote.
type file struct {
	Version int                 `json:"version"`
	ID      string              `json:"id"`
	Spooled time.Time           `json:"spooled_at"`
	Subject string              `json:"subject"`
	Header  map[string][]string `json:"header"`
	Data    []byte              `json:"data"`
	// MAC is the hex HMAC-SHA256 of everything above (see mac).
	MAC string `json:"mac"`
}

func (s *Spool) write(e Entry, m Message) error {
	f := file{Version: version, ID: e.ID, Spooled: e.Spooled.UTC(), Subject: m.Subject, Header: m.Header, Data: m.Data}
	f.MAC = hex.EncodeToString(f.mac(s.keys[0]))
	body, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("spool: encode %s: %w", e.ID, err)
	}
	tmp, err := os.CreateTemp(s.dir, tempPrefix+"*")
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	tmpName := tmp.Name()
	final := filepath.Join(s.dir, e.name)
	_, err = tmp.Write(body)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmpName, final)
	}
	if err != nil {
		_ = os.Remove(tmpName)
		return fmt.Errorf("spool: write %s: %w", e.ID, err)
	}
	if err := syncDir(s.dir); err != nil {
		// The rename may not survive a crash: take the message back, so
		// the caller's failure is the whole truth.
		_ = os.Remove(final)
		return fmt.Errorf("spool: write %s: %w", e.ID, err)
	}
	return nil
}

// mac is the HMAC-SHA256 under key of everything f holds but its MAC:
// what is published and the id and time it was spooled under.
func (f *file) mac(key []byte) []byte {
	h := hmac.New(sha256.New, key)
	// JSON of a map has sorted keys, so this is deterministic.
	hdr, _ := json.Marshal(f.Header)
	spooled := f.Spooled.UTC().Format(time.RFC3339Nano)
	for _, part := range [][]byte{{byte(f.Version)}, []byte(f.ID), []byte(spooled), []byte(f.Subject), hdr, f.Data} {
		_, _ = fmt.Fprintf(h, "%d:", len(part))
		h.Write(part)
	}
	return h.Sum(nil)
}

// authentic reports whether one of keys made f's MAC.
func (f *file) authentic(keys [][]byte) bool {
	got, err := hex.DecodeString(f.MAC)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(keys, func(k []byte) bool { return hmac.Equal(got, f.mac(k)) })
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Oldest returns the message spooled first, or false when the spool is
// empty.
func (s *Spool) Oldest() (Entry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return Entry{}, false
	}
	return s.queue[0], true
}

// Len is the number of messages in the spool.
func (s *Spool) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue)
}

// SetAsideFiles is the number of files set aside and not yet dealt with
// (deleted, or moved back) by an operator: the files in bad/, folders an
// operator made there aside, and the ones that could not be moved there
// and are still in the spool directory.
func (s *Spool) SetAsideFiles() (int, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, BadDir))
	if err != nil {
		return 0, fmt.Errorf("spool: %w", err)
	}
	n := 0
	for _, e := range entries {
		if !e.IsDir() {
			n++
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for name := range s.stuck {
		if _, err := os.Lstat(filepath.Join(s.dir, name)); errors.Is(err, os.ErrNotExist) {
			delete(s.stuck, name) // an operator dealt with it
			continue
		}
		n++
	}
	return n, nil
}

// Full reports whether Put would return ErrFull now.
func (s *Spool) Full() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue)+s.writing >= s.max
}

// Stats returns the number of messages and when the oldest was spooled
// (zero when there is none).
func (s *Spool) Stats() (depth int, oldest time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) > 0 {
		oldest = s.queue[0].Spooled
	}
	return len(s.queue), oldest
}

// Load reads e's message back. An error wrapping ErrCorrupt means the file
// is not a complete message (see SetAside); other errors are the file
// system's.
func (s *Spool) Load(e Entry) (Message, error) {
	f, err := os.Open(filepath.Join(s.dir, e.name))
	if err != nil {
		return Message{}, fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	body, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return Message{}, fmt.Errorf("spool: read %s: %w", e.name, err)
	}
	if len(body) > maxFileSize {
		return Message{}, fmt.Errorf("%w: %s is larger than %d bytes", ErrCorrupt, e.name, maxFileSize)
	}
	var v file
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&v); err != nil {
		return Message{}, fmt.Errorf("%w: %s: %v", ErrCorrupt, e.name, err)
	}
	switch {
	case dec.More():
		return Message{}, fmt.Errorf("%w: %s: data after the message", ErrCorrupt, e.name)
	case v.Version != version:
		return Message{}, fmt.Errorf("%w: %s: version %d, want %d (an older version's file, or one not written by this gateway)",
			ErrCorrupt, e.name, v.Version, version)
	case v.ID != e.ID:
		return Message{}, fmt.Errorf("%w: %s: holds id %.40q", ErrCorrupt, e.name, v.ID)
	case v.Subject == "":
		return Message{}, fmt.Errorf("%w: %s: no subject", ErrCorrupt, e.name)
	case !v.authentic(s.keys):
		return Message{}, fmt.Errorf("%w: %s: not authenticated by the spool key: altered, or planted by someone without the key",
			ErrCorrupt, e.name)
	}
	return Message{Subject: v.Subject, Header: v.Header, Data: v.Data}, nil
}

// Remove deletes e, once it has been published. The entry leaves the queue
// even when the file cannot be deleted, so that one stuck file does not
// hold up the rest; it is then published again (and deduplicated by its
// id) after the next start. The deletion is not fsynced for the same
// reason: at worst a crash brings back a message already published.
func (s *Spool) Remove(e Entry) error {
	s.drop(e)
	if err := os.Remove(filepath.Join(s.dir, e.name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("spool: remove %s: %w", e.name, err)
	}
	return nil
}

// SetAside moves e to bad/ with a warning naming why, for a file Load
// refused. The entry leaves the queue even when the move fails (then
// logged as an error), so the spool does not stall on it.
func (s *Spool) SetAside(e Entry, why string) {
	s.drop(e)
	s.moveAside(e.name, why)
}

func (s *Spool) drop(e Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.IndexFunc(s.queue, func(q Entry) bool { return q.name == e.name }); i >= 0 {
		s.queue = slices.Delete(s.queue, i, i+1)
	}
}

// moveAside renames name into bad/, never overwriting a file there.
func (s *Spool) moveAside(name, why string) {
	target := filepath.Join(s.dir, BadDir, name)
	for i := 1; ; i++ {
		if _, err := os.Lstat(target); err != nil {
			break // free (or unknowable: then Rename says why)
		}
		target = filepath.Join(s.dir, BadDir, name+"."+strconv.Itoa(i))
	}
	if err := os.Rename(filepath.Join(s.dir, name), target); err != nil {
		s.mu.Lock()
		s.stuck[name] = true
		s.mu.Unlock()
		s.log.Error("could not move an unreadable spool file aside; it stays where it is and is skipped until the next start",
			"file", name, "reason", why, "error", err)
		return
	}
	s.log.Warn("spool file moved aside; inspect it, and delete it once understood",
		"file", name, "moved_to", target, "reason", why)
}

// parseName recognises a spooled message's file name.
func parseName(name string) (Entry, bool) {
	m := namePattern.FindStringSubmatch(name)
	if m == nil {
		return Entry{}, false
	}
	ns, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return Entry{}, false
	}
	return Entry{ID: m[2], Spooled: time.Unix(0, ns), name: name}, true
}
