// Package backlog puts user.authenticated events into AUTH_EVENTS before a
// mail-worker starts, exactly as the auth-gateway would have published them
// (protobuf, the contract's headers, Nats-Msg-Id = event id), so that the
// worker's throughput can be measured on its own.
package backlog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// Issuer is the issuer of the events Fill makes.
const Issuer = "http://bench.localhost"

// StreamConfig is AUTH_EVENTS as the auth-gateway creates it (see the
// contract in docs/design.md): user.>, limits retention, file storage, 7 days,
// a 2-minute duplicate window, one replica.
func StreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:       eventsv1.StreamAuthEvents,
		Subjects:   []string{eventsv1.StreamAuthEventsSubjects},
		Retention:  jetstream.LimitsPolicy,
		Storage:    jetstream.FileStorage,
		MaxAge:     7 * 24 * time.Hour,
		Duplicates: 2 * time.Minute,
		Replicas:   1,
	}
}

// Fill creates AUTH_EVENTS when it is missing and publishes n events, one
// per person: email(i) signing in for the first time. It returns once
// JetStream has acknowledged every one.
func Fill(ctx context.Context, js jetstream.JetStream, n int, email func(i int) string) error {
	if _, err := js.CreateOrUpdateStream(ctx, StreamConfig()); err != nil {
		return fmt.Errorf("backlog: stream: %w", err)
	}
	const window = 1024 // acks outstanding at once
	acks := make([]jetstream.PubAckFuture, 0, window)
	for i := range n {
		msg, err := message(i, email(i))
		if err != nil {
			return err
		}
		f, err := js.PublishMsgAsync(msg)
		if err != nil {
			return fmt.Errorf("backlog: publish %d: %w", i, err)
		}
		acks = append(acks, f)
		if len(acks) == window || i == n-1 {
			if err := wait(ctx, acks); err != nil {
				return err
			}
			acks = acks[:0]
		}
	}
	return nil
}

func wait(ctx context.Context, acks []jetstream.PubAckFuture) error {
	for _, f := range acks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("backlog: publish: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// message is the event of person i's first sign-in, with the headers the
// gateway sets.
func message(i int, email string) (*nats.Msg, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	device := sha256.Sum256(fmt.Appendf(nil, "device-%d", i))
	ev := &eventsv1.UserAuthenticated{
		EventId:         id.String(),
		AuthenticatedAt: timestamppb.New(now),
		Issuer:          Issuer,
		Subject:         fmt.Sprintf("bench-%d", i),
		Provider:        "oidc",
		Email:           email,
		Name:            fmt.Sprintf("Bench User %d", i),
		Locale:          "en",
		Client: &eventsv1.Client{
			Ip:        "127.0.0.1",
			UserAgent: "Mozilla/5.0 (X11; Linux x86_64) doorbell-bench",
			DeviceId:  hex.EncodeToString(device[:]),
		},
	}
	data, err := proto.Marshal(ev)
	if err != nil {
		return nil, err
	}
	msg := nats.NewMsg(eventsv1.SubjectUserAuthenticated)
	msg.Data = data
	ev.SetHeaders(msg.Header.Set, Issuer)
	return msg, nil
}
