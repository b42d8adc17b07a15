package ledger

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/doorbell/doorbell/platform/replicas"
)

// Bucket is the key-value bucket of the records; part of the operational
// contract. Earlier versions kept only first_seen and devices in it (and
// used two more buckets, mail_sent and mail_sending, which this version
// no longer reads).
const Bucket = "mail_users"

// ErrConflict is returned by Store.Put when the record changed since it
// was read: read it again, apply the change again, and write again.
var ErrConflict = errors.New("record changed since it was read")

// Key is the bucket key of a person: the hex SHA-256 of issuer, a NUL
// byte and subject. It never contains an address.
func Key(issuer, subject string) string {
	sum := sha256.Sum256([]byte(issuer + "\x00" + subject))
	return hex.EncodeToString(sum[:])
}

// Store reads and writes records. It is safe for concurrent use.
//
// It remembers the records it last read or wrote, up to recentSize, so
// that a delivery can decide on one without a read (Recent) and let the
// compare-and-set of its write check the guess.
type Store struct {
	kv  jetstream.KeyValue
	log *slog.Logger

	mu     sync.Mutex
	recent map[string]known
}

// known is a record as the Store last read or wrote it.
type known struct {
	rec Record
	rev uint64
}

// recentSize bounds the records a Store remembers (a few MB).
const recentSize = 8192

// Open creates the bucket, or updates it when it exists, and returns a
// Store over it. want is the replica count (replicas.Auto: as many as the
// servers can place, up to three); a higher count the bucket already has
// (an operator's) is kept.
func Open(ctx context.Context, js jetstream.JetStream, want int, log *slog.Logger) (*Store, error) {
	least := 1
	if s, err := js.Stream(ctx, "KV_"+Bucket); err == nil {
		least = s.CachedInfo().Config.Replicas
	}
	var kv jetstream.KeyValue
	n, err := replicas.Fit(want, func(n int) (err error) {
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      Bucket,
			Replicas:    max(n, least),
			Description: "Doorbell mail-worker: first sign-in, devices and emails per person (key: sha256 of issuer and subject)",
			History:     1,
			Storage:     jetstream.FileStorage,
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create or update bucket %s: %w", Bucket, err)
	}
	log.InfoContext(ctx, "bucket ready", "bucket", Bucket, "replicas", max(n, least), "replicas_setting", replicas.Setting(want))
	return &Store{kv: kv, log: log, recent: make(map[string]known)}, nil
}

// Get returns the record under key and its revision, or nil and 0 when
// there is none. A record that cannot be decoded is logged and returned as
// nil with its revision, so that the next Put replaces it: one damaged
// value must not block a person's email for ever.
func (s *Store) Get(ctx context.Context, key string) (*Record, uint64, error) {
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		s.forget(key)
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read record: %w", err)
	}
	var r Record
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		s.forget(key)
		s.log.WarnContext(ctx, "unreadable person record; starting afresh", "user_key", key, "error", err)
		return nil, e.Revision(), nil
	}
	s.remember(key, r, e.Revision())
	return &r, e.Revision(), nil
}

// Recent returns the record under key as this Store last read or wrote
// it, and its revision; nil and 0 when it holds none (a person it has not
// met, or whose record another writer changed since). It is a guess, made
// without a read: use it only for a decision that ends in a Put, whose
// compare-and-set fails with ErrConflict when the guess was wrong, and
// Get for any other.
func (s *Store) Recent(key string) (*Record, uint64) {
	s.mu.Lock()
	k, ok := s.recent[key]
	s.mu.Unlock()
	if !ok {
		return nil, 0
	}
	r := k.rec.clone()
	return &r, k.rev
}

func (s *Store) remember(key string, r Record, rev uint64) {
	r = r.clone()
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.recent[key]; !ok && len(s.recent) >= recentSize {
		for old := range s.recent { // any one: a miss costs one read
			delete(s.recent, old)
			break
		}
	}
	s.recent[key] = known{rec: r, rev: rev}
}

func (s *Store) forget(key string) {
	s.mu.Lock()
	delete(s.recent, key)
	s.mu.Unlock()
}

// Put stores r under key if the record is still at revision rev (0: there
// is none), and returns the new revision. It fails with ErrConflict when
// another writer came first.
func (s *Store) Put(ctx context.Context, key string, r Record, rev uint64) (uint64, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return 0, fmt.Errorf("encode record: %w", err)
	}
	var next uint64
	if rev == 0 {
		next, err = s.kv.Create(ctx, key, b)
	} else {
		next, err = s.kv.Update(ctx, key, b, rev)
	}
	switch {
	case errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyRevisionMismatch):
		s.forget(key)
		return 0, fmt.Errorf("write record: %w", ErrConflict)
	case err != nil:
		s.forget(key) // it may have landed
		return 0, fmt.Errorf("write record: %w", err)
	}
	s.remember(key, r, next)
	return next, nil
}
