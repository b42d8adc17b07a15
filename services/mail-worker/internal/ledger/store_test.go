package ledger

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/doorbell/doorbell/platform/natstest"
)

const waitLong = 60 * time.Second

func openStore(t *testing.T) (*Store, jetstream.JetStream, context.Context) {
	t.Helper()
	js := natstest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	t.Cleanup(cancel)
	s, err := Open(ctx, js, 1, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return s, js, ctx
}

func TestKey(t *testing.T) {
	tests := []struct {
		name                   string
		iss1, sub1, iss2, sub2 string
		same                   bool
	}{
		{"the same person has the same key", "https://a", "1", "https://a", "1", true},
		{"another subject is another person", "https://a", "1", "https://a", "2", false},
		{"another issuer is another person", "https://a", "1", "https://b", "1", false},
		{"the separator keeps issuer and subject apart", "https://a", "bc", "https://ab", "c", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k1, k2 := Key(tt.iss1, tt.sub1), Key(tt.iss2, tt.sub2)
			if (k1 == k2) != tt.same || len(k1) != 64 {
				t.Errorf("Key(%q,%q)=%s, Key(%q,%q)=%s", tt.iss1, tt.sub1, k1, tt.iss2, tt.sub2, k2)
			}
		})
	}
}

func TestPutIsCompareAndSet(t *testing.T) {
	s, _, ctx := openStore(t)
	key := Key("https://idp", "ann")
	if r, rev, err := s.Get(ctx, key); r != nil || rev != 0 || err != nil {
		t.Fatalf("Get of a new person = %v, %d, %v; want nil, 0, nil", r, rev, err)
	}
	first := Claim(nil, signIn("e1", 0, "dev-a"), Delivery{Seq: 1, Num: 1}, Policy{}).Record
	rev, err := s.Put(ctx, key, first, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A second writer that also saw no record loses.
	if _, err := s.Put(ctx, key, first, 0); !errors.Is(err, ErrConflict) {
		t.Errorf("a second create = %v, want ErrConflict", err)
	}
	got, gotRev, err := s.Get(ctx, key)
	if err != nil || gotRev != rev {
		t.Fatalf("Get = rev %d, %v; want %d", gotRev, err, rev)
	}
	if e, ok := got.Email("e1"); !ok || e.State != Sending || !slices.Equal(got.Devices, []string{"dev-a"}) {
		t.Errorf("stored record = %+v", got)
	}
	next, _ := got.Finish("e1", Delivery{Seq: 1, Num: 1}, FailedTry)
	if _, err := s.Put(ctx, key, next, rev); err != nil {
		t.Fatal(err)
	}
	// A writer that read the old revision loses too.
	if _, err := s.Put(ctx, key, next, rev); !errors.Is(err, ErrConflict) {
		t.Errorf("an update at a stale revision = %v, want ErrConflict", err)
	}
}

func TestRecordsOfEarlierVersionsAreRead(t *testing.T) {
	s, js, ctx := openStore(t)
	kv, err := js.KeyValue(ctx, Bucket)
	if err != nil {
		t.Fatal(err)
	}
	key := Key("https://idp", "old")
	if _, err := kv.Put(ctx, key, []byte(`{"first_seen":"2026-01-02T03:04:05Z","devices":["d1","d2"]}`)); err != nil {
		t.Fatal(err)
	}
	r, _, err := s.Get(ctx, key)
	if err != nil || r == nil {
		t.Fatalf("Get = %v, %v", r, err)
	}
	if !slices.Equal(r.Devices, []string{"d1", "d2"}) || r.FirstSeen.Year() != 2026 {
		t.Errorf("old record read as %+v", r)
	}
	// The person is known: no second welcome after an upgrade.
	if k := Decide(r, SignIn{EventID: "e", At: time.Now(), DeviceID: "d1"}); k != None {
		t.Errorf("Decide on an old record = %q, want none", k)
	}
}

func TestADamagedRecordIsReplaced(t *testing.T) {
	s, js, ctx := openStore(t)
	kv, err := js.KeyValue(ctx, Bucket)
	if err != nil {
		t.Fatal(err)
	}
	key := Key("https://idp", "damaged")
	if _, err := kv.Put(ctx, key, []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	r, rev, err := s.Get(ctx, key)
	if r != nil || rev == 0 || err != nil {
		t.Fatalf("Get of a damaged record = %v, %d, %v; want nil, its revision, nil", r, rev, err)
	}
	if _, err := s.Put(ctx, key, Remember(nil, signIn("e", 0, "d")), rev); err != nil {
		t.Errorf("replacing the damaged record: %v", err)
	}
}

func TestOpenAgainUsesTheBucketItMade(t *testing.T) {
	_, js, ctx := openStore(t)
	// Opening again (a restart) works on the bucket it made.
	if _, err := Open(ctx, js, 1, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatalf("second Open: %v", err)
	}
}

// Recent is the record as this Store last read or wrote it: a guess that
// Put's compare-and-set checks, never a read.
func TestRecentIsTheRecordTheStoreLastSaw(t *testing.T) {
	s, js, ctx := openStore(t)
	key := Key("https://idp", "recent")
	if r, rev := s.Recent(key); r != nil || rev != 0 {
		t.Fatalf("Recent of a person never met = %v, %d; want nil, 0", r, rev)
	}
	first := Claim(nil, signIn("e1", 0, "dev-a"), Delivery{Seq: 1, Num: 1}, Policy{}).Record
	rev, err := s.Put(ctx, key, first, 0)
	if err != nil {
		t.Fatal(err)
	}
	r, gotRev := s.Recent(key)
	if gotRev != rev || r == nil || !slices.Equal(r.Devices, []string{"dev-a"}) {
		t.Fatalf("Recent after Put = %+v, %d; want the record written at %d", r, gotRev, rev)
	}
	// What the caller does with the record it got is no business of the Store's.
	r.Devices[0] = "changed by the caller"
	if again, _ := s.Recent(key); again.Devices[0] != "dev-a" {
		t.Errorf("a caller's change reached the Store: %v", again.Devices)
	}

	// Another replica writes: the guess is stale, and Put says so.
	other, err := Open(ctx, js, 1, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Put(ctx, key, Remember(&first, signIn("e2", 1, "dev-b")), rev); err != nil {
		t.Fatal(err)
	}
	stale, staleRev := s.Recent(key)
	if _, err := s.Put(ctx, key, *stale, staleRev); !errors.Is(err, ErrConflict) {
		t.Fatalf("Put on the stale guess = %v, want ErrConflict", err)
	}
	// After a conflict the Store holds no guess: the caller reads.
	if r, rev := s.Recent(key); r != nil || rev != 0 {
		t.Errorf("Recent after a conflict = %v, %d; want nil, 0", r, rev)
	}
	if r, _, err := s.Get(ctx, key); err != nil || !slices.Equal(r.Devices, []string{"dev-a", "dev-b"}) {
		t.Fatalf("Get = %+v, %v", r, err)
	}
	if r, _ := s.Recent(key); r == nil || !slices.Equal(r.Devices, []string{"dev-a", "dev-b"}) {
		t.Errorf("Recent after Get = %+v; want the record read", r)
	}
}
