package history

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/doorbell/doorbell/services/mail-worker/internal/natstest"
)

const waitLong = 60 * time.Second

func openStore(t *testing.T) (*Store, jetstream.JetStream) {
	t.Helper()
	return openStoreWith(t, Options{Holder: "test-worker"})
}

func openStoreWith(t *testing.T, opts Options) (*Store, jetstream.JetStream) {
	t.Helper()
	js := natstest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	store, err := Open(ctx, js, opts, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return store, js
}

func TestUserKey(t *testing.T) {
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
			k1, k2 := UserKey(tt.iss1, tt.sub1), UserKey(tt.iss2, tt.sub2)
			if (k1 == k2) != tt.same {
				t.Errorf("UserKey(%q,%q)=%s, UserKey(%q,%q)=%s", tt.iss1, tt.sub1, k1, tt.iss2, tt.sub2, k2)
			}
			if len(k1) != 64 {
				t.Errorf("key %q is not hex SHA-256", k1)
			}
		})
	}
}

func TestBucketsAreCreatedAsSpecified(t *testing.T) {
	_, js := openStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	for _, tt := range []struct {
		bucket string
		ttl    time.Duration
	}{{BucketSent, 7 * 24 * time.Hour}, {BucketUsers, 0}, {BucketSending, DefaultClaimTTL}} {
		kv, err := js.KeyValue(ctx, tt.bucket)
		if err != nil {
			t.Fatalf("bucket %s: %v", tt.bucket, err)
		}
		st, err := kv.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.TTL() != tt.ttl {
			t.Errorf("bucket %s TTL = %s, want %s", tt.bucket, st.TTL(), tt.ttl)
		}
	}
}

func TestSentMarkers(t *testing.T) {
	store, _ := openStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if _, ok, err := store.Sent(ctx, "evt-1"); err != nil || ok {
		t.Fatalf("Sent before MarkSent = %v, %v", ok, err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := store.MarkSent(ctx, "evt-1", Sent{MessageID: "<evt-1@example.com>", SentAt: at, Kind: "welcome"}); err != nil {
		t.Fatal(err)
	}
	got, ok, err := store.Sent(ctx, "evt-1")
	if err != nil || !ok {
		t.Fatalf("Sent after MarkSent = %v, %v", ok, err)
	}
	if got.MessageID != "<evt-1@example.com>" || !got.SentAt.Equal(at) || got.Kind != "welcome" {
		t.Errorf("marker = %+v", got)
	}
}

func TestRememberSignIn(t *testing.T) {
	store, js := openStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	first := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

	if u, err := store.User(ctx, "iss", "sub"); err != nil || u != nil {
		t.Fatalf("User of a stranger = %+v, %v", u, err)
	}
	if err := store.RememberSignIn(ctx, "iss", "sub", "dev-a", first); err != nil {
		t.Fatal(err)
	}
	if err := store.RememberSignIn(ctx, "iss", "sub", "dev-b", first.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	u, err := store.User(ctx, "iss", "sub")
	if err != nil || u == nil {
		t.Fatalf("User = %+v, %v", u, err)
	}
	if !u.FirstSeen.Equal(first) || !slices.Equal(u.Devices, []string{"dev-a", "dev-b"}) {
		t.Errorf("record = %+v", u)
	}

	// A damaged record does not block the person: it reads as absent and
	// the next sign-in overwrites it.
	users, err := js.KeyValue(ctx, BucketUsers)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := users.Put(ctx, UserKey("iss", "sub"), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if u, err := store.User(ctx, "iss", "sub"); err != nil || u != nil {
		t.Fatalf("User of a damaged record = %+v, %v; want nil, nil", u, err)
	}
	if err := store.RememberSignIn(ctx, "iss", "sub", "dev-c", first); err != nil {
		t.Fatal(err)
	}
	if u, err := store.User(ctx, "iss", "sub"); err != nil || u == nil || !slices.Equal(u.Devices, []string{"dev-c"}) {
		t.Errorf("record after repair = %+v, %v", u, err)
	}
}

func TestConcurrentSignInsAreMerged(t *testing.T) {
	store, _ := openStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- store.RememberSignIn(ctx, "iss", "sub", fmt.Sprintf("dev-%d", i), time.Now())
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("RememberSignIn: %v", err)
		}
	}
	u, err := store.User(ctx, "iss", "sub")
	if err != nil || u == nil {
		t.Fatalf("User = %+v, %v", u, err)
	}
	if len(u.Devices) != n {
		t.Errorf("record keeps %d of %d devices signed in at once: %v", len(u.Devices), n, u.Devices)
	}
}

func TestClaims(t *testing.T) {
	store, _ := openStoreWith(t, Options{Holder: "worker-a", ClaimTTL: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()

	ann, bob := UserKey("https://idp", "ann"), UserKey("https://idp", "bob")
	first, err := store.Claim(ctx, ann)
	if err != nil {
		t.Fatalf("first Claim: %v", err)
	}
	_, err = store.Claim(ctx, ann)
	var claimed *ClaimedError
	if !errors.As(err, &claimed) {
		t.Fatalf("second Claim = %v, want a *ClaimedError", err)
	}
	if claimed.Holder != "worker-a" || claimed.Left <= 0 || claimed.Left > time.Minute {
		t.Errorf("ClaimedError = %+v, want holder worker-a and up to a minute left", claimed)
	}
	if _, err := store.Claim(ctx, bob); err != nil {
		t.Errorf("a claim on another person: %v", err)
	}

	if err := store.Release(ctx, first); err != nil {
		t.Fatalf("Release: %v", err)
	}
	second, err := store.Claim(ctx, ann)
	if err != nil {
		t.Fatalf("Claim after Release: %v", err)
	}
	// A stale release (the claim ended and was taken again) leaves the new
	// claim alone.
	if err := store.Release(ctx, first); err != nil {
		t.Errorf("stale Release: %v", err)
	}
	if _, err := store.Claim(ctx, ann); !errors.As(err, &claimed) {
		t.Errorf("Claim after a stale release = %v, want it still claimed", err)
	}
	if err := store.Release(ctx, second); err != nil {
		t.Errorf("Release: %v", err)
	}
}

func TestOnlyOneOfManyConcurrentClaimsWins(t *testing.T) {
	store, _ := openStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	won, busy := 0, 0
	for range 8 {
		wg.Go(func() {
			_, err := store.Claim(ctx, UserKey("https://idp", "race"))
			var claimed *ClaimedError
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won++
			case errors.As(err, &claimed):
				busy++
			default:
				t.Errorf("Claim: %v", err)
			}
		})
	}
	wg.Wait()
	if won != 1 || busy != 7 {
		t.Errorf("%d claims won and %d found it busy, want 1 and 7", won, busy)
	}
}

func TestAnAbandonedClaimEnds(t *testing.T) {
	store, _ := openStoreWith(t, Options{ClaimTTL: 500 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if _, err := store.Claim(ctx, UserKey("https://idp", "crashed")); err != nil {
		t.Fatal(err)
	}
	// The owner crashed and never released it.
	deadline := time.Now().Add(waitLong)
	for {
		_, err := store.Claim(ctx, UserKey("https://idp", "crashed"))
		if err == nil {
			return
		}
		var claimed *ClaimedError
		if !errors.As(err, &claimed) {
			t.Fatalf("Claim: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the abandoned claim never ended")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
