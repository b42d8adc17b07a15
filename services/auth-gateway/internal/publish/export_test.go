package publish

import (
	"context"

	"github.com/nats-io/nats.go"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
)

// Message is message, for tests and benchmarks in publish_test.
func (p *Publisher) Message(ctx context.Context, ev *eventsv1.UserAuthenticated) (*nats.Msg, error) {
	return p.message(ctx, ev)
}
