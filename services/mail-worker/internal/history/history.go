// Package history is the mail-worker's memory in JetStream key-value
// buckets: which events already got their email (mail_sent), whose
// sign-ins are being handled right now (mail_sending, see Store.Claim) and
// what the worker knows about each person (mail_users).
//
// The worker creates or updates both buckets at start-up; an operator may
// create them first (for example with more replicas). Keys never contain an
// email address.
package history

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/doorbell/doorbell/services/mail-worker/internal/decide"
)

// Bucket names and settings; part of the operational contract.
const (
	BucketSent    = "mail_sent"
	BucketUsers   = "mail_users"
	BucketSending = "mail_sending"
	// SentTTL is how long a sent-marker suppresses a duplicate. It matches
	// the AUTH_EVENTS stream's max age: an older event cannot be redelivered.
	SentTTL = 7 * 24 * time.Hour
	// DefaultClaimTTL is Options.ClaimTTL when zero.
	DefaultClaimTTL = time.Minute
)

// Options shape the buckets.
type Options struct {
	// ClaimTTL is how long a claim (see Store.Claim) holds when its owner
	// neither sends nor releases it, e.g. because it crashed. Use the
	// consumer's AckWait: a send never takes longer, and a crashed owner's
	// message comes back after about that long. DefaultClaimTTL when zero.
	ClaimTTL time.Duration
	// Holder names this process in its claims (for operators); host name
	// and pid when empty.
	Holder string
	// Replicas is the least replica count of the buckets: one an operator
	// raised keeps its count. 1 when zero.
	Replicas int
}

// maxCASAttempts bounds the read-modify-write loop on a user record when
// several replicas update the same person at once. Every round one writer
// wins, so N writers at once need at most N attempts.
const maxCASAttempts = 32

// Sent is the marker stored under an event id once its email was accepted.
type Sent struct {
	MessageID string    `json:"message_id"`
	SentAt    time.Time `json:"sent_at"`
	Kind      string    `json:"kind"`
}

// Store reads and writes the buckets. It is safe for concurrent use.
type Store struct {
	sent     jetstream.KeyValue
	users    jetstream.KeyValue
	sending  jetstream.KeyValue
	claimTTL time.Duration
	holder   string
	log      *slog.Logger
}

// Open creates or updates the buckets and returns a Store over them.
func Open(ctx context.Context, js jetstream.JetStream, opts Options, log *slog.Logger) (*Store, error) {
	if opts.ClaimTTL <= 0 {
		opts.ClaimTTL = DefaultClaimTTL
	}
	if opts.Holder == "" {
		host, _ := os.Hostname()
		opts.Holder = fmt.Sprintf("%s/%d", host, os.Getpid())
	}
	sent, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      BucketSent,
		Replicas:    replicas(ctx, js, BucketSent, opts.Replicas),
		Description: "Doorbell mail-worker: events whose email was sent (key: event id)",
		TTL:         SentTTL,
		History:     1,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("create or update bucket %s: %w", BucketSent, err)
	}
	users, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      BucketUsers,
		Replicas:    replicas(ctx, js, BucketUsers, opts.Replicas),
		Description: "Doorbell mail-worker: first sign-in and known devices per person (key: sha256 of issuer and subject)",
		History:     1,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("create or update bucket %s: %w", BucketUsers, err)
	}
	sending, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      BucketSending,
		Replicas:    replicas(ctx, js, BucketSending, opts.Replicas),
		Description: "Doorbell mail-worker: people whose sign-in is being handled right now (key: sha256 of issuer and subject)",
		TTL:         opts.ClaimTTL,
		History:     1,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("create or update bucket %s: %w", BucketSending, err)
	}
	return &Store{sent: sent, users: users, sending: sending, claimTTL: opts.ClaimTTL, holder: opts.Holder, log: log}, nil
}

// replicas is the replica count for bucket: want (at least 1), or more
// when the bucket already has more.
func replicas(ctx context.Context, js jetstream.JetStream, bucket string, want int) int {
	want = max(1, want)
	if s, err := js.Stream(ctx, "KV_"+bucket); err == nil {
		want = max(want, s.CachedInfo().Config.Replicas)
	}
	return want
}

// UserKey is the mail_users key of a person: the hex SHA-256 of issuer, a
// NUL byte and subject.
func UserKey(issuer, subject string) string {
	sum := sha256.Sum256([]byte(issuer + "\x00" + subject))
	return hex.EncodeToString(sum[:])
}

// Sent reports whether eventID already got its email, and the marker if so.
// eventID must be a valid key (letters, digits, '-', '_', '.').
func (s *Store) Sent(ctx context.Context, eventID string) (Sent, bool, error) {
	e, err := s.sent.Get(ctx, eventID)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return Sent{}, false, nil
	}
	if err != nil {
		return Sent{}, false, fmt.Errorf("read sent-marker: %w", err)
	}
	var m Sent
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		// The key's presence is what counts; a damaged value does not
		// make the email unsent.
		s.log.WarnContext(ctx, "unreadable sent-marker", "event_id", eventID, "error", err)
	}
	return m, true, nil
}

// MarkSent records that eventID got its email.
func (s *Store) MarkSent(ctx context.Context, eventID string, m Sent) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode sent-marker: %w", err)
	}
	if _, err := s.sent.Put(ctx, eventID, b); err != nil {
		return fmt.Errorf("write sent-marker: %w", err)
	}
	return nil
}

// User returns the record of a person, or nil when there is none. A record
// that cannot be decoded is logged and treated as absent (it is overwritten
// by the next RememberSignIn), so that one damaged value cannot block that
// person's email for ever.
func (s *Store) User(ctx context.Context, issuer, subject string) (*decide.User, error) {
	u, _, err := s.user(ctx, UserKey(issuer, subject))
	return u, err
}

func (s *Store) user(ctx context.Context, key string) (*decide.User, uint64, error) {
	e, err := s.users.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read user record: %w", err)
	}
	var u decide.User
	if err := json.Unmarshal(e.Value(), &u); err != nil {
		s.log.WarnContext(ctx, "unreadable user record; starting afresh", "user_key", key, "error", err)
		return nil, e.Revision(), nil
	}
	return &u, e.Revision(), nil
}

// RememberSignIn adds a sign-in at now from deviceID to the person's record
// (see decide.Remember), creating the record if needed. Concurrent updates of
// the same record by other replicas are merged, not lost.
func (s *Store) RememberSignIn(ctx context.Context, issuer, subject, deviceID string, now time.Time) error {
	key := UserKey(issuer, subject)
	var lastErr error
	for range maxCASAttempts {
		cur, rev, err := s.user(ctx, key)
		if err != nil {
			return err
		}
		next := decide.Remember(cur, deviceID, now)
		b, err := json.Marshal(next)
		if err != nil {
			return fmt.Errorf("encode user record: %w", err)
		}
		if rev == 0 {
			_, err = s.users.Create(ctx, key, b)
		} else {
			_, err = s.users.Update(ctx, key, b, rev)
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return fmt.Errorf("write user record: %w", err)
		}
		lastErr = err // someone else wrote first: read again and merge
	}
	return fmt.Errorf("write user record: gave up after %d concurrent updates: %w", maxCASAttempts, lastErr)
}

// Claim is the right to handle one person's sign-ins, held by one handler
// in one process at a time.
type Claim struct {
	Key      string
	revision uint64
}

// ClaimedError says that another handler holds the claim.
type ClaimedError struct {
	Key string
	// Holder names the process that holds it (see Options.Holder).
	Holder string
	// Left is how long the claim holds at most unless released; it is
	// worth trying again after it.
	Left time.Duration
}

func (e *ClaimedError) Error() string {
	return fmt.Sprintf("another handler (%s) is handling a sign-in of this person; its claim ends within %s",
		e.Holder, e.Left.Round(time.Millisecond))
}

// Claim takes the claim on key, a person's UserKey, so that no other
// handler, in this process or another replica, handles a sign-in of the
// same person at the same time. Without it two handlers could both pass
// the sent-marker check for two copies of one event (a redelivery after
// AckWait, a re-publish under another Nats-Msg-Id) and send it twice, or
// both find no record for two first sign-ins in a row and send two
// welcomes.
//
// The caller reads the sent-marker and the person's record AFTER taking the
// claim, sends, writes the marker and the record, then releases the claim.
// A claim that is never released ends after Options.ClaimTTL. When another
// handler holds it, Claim returns a *ClaimedError. Claims do not protect
// against a crash between the server accepting an email and the marker
// write: after ClaimTTL the email goes out again (see the README).
func (s *Store) Claim(ctx context.Context, key string) (Claim, error) {
	rev, err := s.sending.Create(ctx, key, []byte(s.holder))
	if err == nil {
		return Claim{Key: key, revision: rev}, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return Claim{}, fmt.Errorf("claim: %w", err)
	}
	e, err := s.sending.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted):
		// Released or removed just now: one more try.
		if rev, err := s.sending.Create(ctx, key, []byte(s.holder)); err == nil {
			return Claim{Key: key, revision: rev}, nil
		}
		return Claim{}, &ClaimedError{Key: key, Left: s.claimTTL}
	case err != nil:
		return Claim{}, fmt.Errorf("claim: %w", err)
	}
	age := time.Since(e.Created())
	if age >= s.claimTTL {
		// The claim has ended, but JetStream has not removed it yet (its
		// expiry runs behind): take it over, unless another handler does
		// so first. This compares this host's clock with the server's.
		if rev, err := s.sending.Update(ctx, key, []byte(s.holder), e.Revision()); err == nil {
			return Claim{Key: key, revision: rev}, nil
		}
		return Claim{}, &ClaimedError{Key: key, Holder: string(e.Value()), Left: s.claimTTL}
	}
	return Claim{}, &ClaimedError{Key: key, Holder: string(e.Value()), Left: s.claimTTL - max(0, age)}
}

// Release gives up a claim taken with Claim. Releasing a claim that ended
// and was taken by someone else in the meantime does nothing.
func (s *Store) Release(ctx context.Context, c Claim) error {
	err := s.sending.Delete(ctx, c.Key, jetstream.LastRevision(c.revision))
	if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("release claim: %w", err)
	}
	return nil
}
