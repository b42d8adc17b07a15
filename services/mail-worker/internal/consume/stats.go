package consume

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// ConsumerInfo reads the consumer's state from JetStream.
// jetstream.Consumer's Info method is one.
type ConsumerInfo func(ctx context.Context) (*jetstream.ConsumerInfo, error)

// consumerStatsTimeout bounds the JetStream request made during a scrape.
const consumerStatsTimeout = 2 * time.Second

// RegisterConsumerStats exposes the consumer's backlog, read from JetStream
// at scrape time: doorbell_mailworker_consumer_pending_messages (stored, not
// yet delivered) and doorbell_mailworker_consumer_ack_pending_messages
// (delivered, not yet acknowledged; capped by MaxAckPending). Every replica
// reports the same consumer, so aggregate with max, never sum. Nothing is
// exposed while info fails (for example before the consumer exists).
func RegisterConsumerStats(reg prometheus.Registerer, info ConsumerInfo) error {
	const ns, sub = "doorbell", "mailworker"
	c := &consumerStats{
		info: info,
		pending: prometheus.NewDesc(prometheus.BuildFQName(ns, sub, "consumer_pending_messages"),
			"Messages in AUTH_EVENTS that the mail-worker consumer has not delivered yet (same value on every replica).", nil, nil),
		ackPending: prometheus.NewDesc(prometheus.BuildFQName(ns, sub, "consumer_ack_pending_messages"),
			"Messages delivered to the mail-worker consumer and not yet acknowledged (same value on every replica).", nil, nil),
	}
	if err := reg.Register(c); err != nil {
		return fmt.Errorf("register consumer stats: %w", err)
	}
	return nil
}

type consumerStats struct {
	info                ConsumerInfo
	pending, ackPending *prometheus.Desc
}

func (c *consumerStats) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.pending
	ch <- c.ackPending
}

func (c *consumerStats) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), consumerStatsTimeout)
	defer cancel()
	info, err := c.info(ctx)
	if err != nil || info == nil {
		return
	}
	for desc, v := range map[*prometheus.Desc]float64{
		c.pending:    float64(info.NumPending),
		c.ackPending: float64(info.NumAckPending),
	} {
		if m, err := prometheus.NewConstMetric(desc, prometheus.GaugeValue, v); err == nil {
			ch <- m
		}
	}
}
