package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/tools/loadgen"
)

// benchStream is the change event stream of the bench's worker.
const benchStream = "segments:changes"

// eventsPhase creates a 50 % segment and measures how long after its
// rollout ended its events were all in the stream (with o.events; without,
// just the rollout, to compare).
func (b *bench) eventsPhase(ctx context.Context) error {
	b.log("phase: a 50 %% segment over %d users, its events published", b.o.users)
	if _, err := b.createRolledOut(ctx, fmt.Sprintf("EVENTS_%d", time.Now().Unix()), 50); err != nil || !b.o.events {
		return err
	}
	return b.eventsPublished(ctx)
}

// eventsPublished waits until the relay has published every event history
// holds (10 minutes at most) and reports how long that took from now, and
// the stream's length and memory.
func (b *bench) eventsPublished(ctx context.Context) error {
	start := time.Now()
	if err := b.waitPublished(ctx); err != nil {
		return err
	}
	wall := time.Since(start)
	opt, err := redis.ParseURL(b.svc.redisURL)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	n, err := rdb.XLen(ctx, benchStream).Result()
	if err != nil {
		return err
	}
	mem, err := rdb.MemoryUsage(ctx, benchStream, 0).Result()
	if err != nil {
		return err
	}
	b.rep.add("events published, after the rollout ended", loadgen.Result{}, wall,
		fmt.Sprintf("stream: %d entries, %.0f MB (%.0f B each)", n, float64(mem)/1e6, float64(mem)/float64(max(n, 1))))
	return nil
}

// waitPublished waits until the relay has published every event history
// holds (10 minutes at most).
func (b *bench) waitPublished(ctx context.Context) error {
	var waiting int64
	err := waitUntil(ctx, 10*time.Minute, 20*time.Millisecond, func() (bool, error) {
		var err error
		waiting, err = postgres.UnpublishedEvents(ctx, b.pool)
		return waiting == 0, err
	})
	if errors.Is(err, errTimedOut) {
		return fmt.Errorf("%d events still unpublished after 10 minutes", waiting)
	}
	return err
}
