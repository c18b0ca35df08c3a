package events_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/events"
	"github.com/segments-service/segments/internal/metrics"
)

// BenchmarkPublish appends batches of 5,000 events (the default
// EVENTS_BATCH) to a stream of the test Redis. ns/event is the wall time
// per event, Redis's share included; allocs/op is the relay's allocation
// per batch, most of its CPU during a large rollout.
func BenchmarkPublish(b *testing.B) {
	opt, err := redis.ParseURL(env.RedisURL)
	if err != nil {
		b.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	stream := fmt.Sprintf("bench:publish:%d", time.Now().UnixNano())
	defer rdb.Del(b.Context(), stream)
	relay := events.NewRelay(events.Config{Stream: stream, MaxLen: 1_000_000, Batch: 5000}, nil, rdb, metrics.New(), zap.NewNop())

	batch := make([]domain.Event, 5000)
	at := time.Date(2026, 11, 23, 10, 21, 35, 123456000, time.UTC)
	for i := range batch {
		batch[i] = domain.Event{ID: int64(1_000_000 + i), UserID: int64(400_000 + 2*i), Segment: "AVITO_VOICE_MESSAGES",
			Operation: domain.OperationAdd, Reason: domain.ReasonAuto, At: at.Add(time.Duration(i) * time.Microsecond)}
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := relay.Publish(b.Context(), batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/event")
}
