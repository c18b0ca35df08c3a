// Package events publishes every membership change to a Redis Stream: the
// relay the worker runs reads history events from PostgreSQL (the outbox
// the membership triggers write in each change's transaction) in the order
// of their at and appends them to the stream with XADD, in batches.
//
// Delivery is at least once: the relay moves its cursor only after the
// stream has taken a batch, so a relay that dies in between publishes that
// batch again (consumers dedupe on id). One process relays at a time; the
// others stand by and take over within a second of its session ending.
package events

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/internal/supervise"
)

// Config tunes the relay.
type Config struct {
	// Stream is the Redis Stream's key.
	Stream string
	// MaxLen is about how many entries the stream keeps (XADD MAXLEN ~).
	MaxLen int64
	// Batch is how many events one round reads and publishes.
	Batch int
	// Interval is how long the relay waits for new events once it has
	// published all it may.
	Interval time.Duration
	// WaitReplicas, if above zero, is how many replicas must hold a batch
	// (Redis WAIT, up to waitTimeout) before it is marked published; with
	// fewer the batch is published again (at least once: a consumer may
	// see an event twice, never miss one through a failover).
	WaitReplicas int
}

// waitTimeout bounds a WAIT for replicas.
const waitTimeout = time.Second

// Recorder counts what the relay does; metrics.Metrics is one.
type Recorder interface {
	// EventPublished is called for each event the stream took, with how
	// long after its at.
	EventPublished(lag time.Duration)
	// EventBacklog reports the events not published yet.
	EventBacklog(n int64)
	// EventRelayLeading says whether this process is the relay.
	EventRelayLeading(on bool)
}

// Timing of the relay: a standby tries to take over this often; while
// Redis refuses, the relay tries the same batch again after retryDelay
// (keeping its lock); it counts its backlog
// this often (up to backlogLimit); a batch in flight at shutdown gets
// flushTimeout to finish, so that a clean stop publishes nothing twice.
const (
	standby      = time.Second
	retryDelay   = time.Second
	backlogEvery = time.Second
	backlogLimit = 10_000_000
	flushTimeout = 10 * time.Second
)

// Relay publishes events; Run runs it.
type Relay struct {
	cfg   Config
	pg    *pgx.ConnConfig
	redis redis.Cmdable
	rec   Recorder
	log   *zap.Logger
}

// NewRelay returns a relay that reads events over a connection made with
// pg and appends them to cfg.Stream on rdb.
func NewRelay(cfg Config, pg *pgx.ConnConfig, rdb redis.Cmdable, rec Recorder, log *zap.Logger) *Relay {
	return &Relay{cfg: cfg, pg: pg, redis: rdb, rec: rec, log: log}
}

// Loop returns the relay as a loop for supervise.Run: it waits to be the
// one relay, then publishes until its database session fails or ctx ends;
// supervise starts it over after a failure.
func (r *Relay) Loop() supervise.Loop {
	return supervise.Loop{
		Name:    "event_relay",
		Run:     r.lead,
		Stopped: func() { r.rec.EventRelayLeading(false) },
	}
}

// lead waits for the relay's lock, then publishes until its session fails
// or ctx ends.
func (r *Relay) lead(ctx context.Context) error {
	l, err := postgres.OpenEventLog(ctx, r.pg, standby)
	if err != nil {
		return err
	}
	defer l.Close(context.WithoutCancel(ctx))
	r.rec.EventRelayLeading(true)
	r.log.Info("this process publishes change events", zap.String("stream", r.cfg.Stream),
		zap.Time("after", l.Cursor().At), zap.Int64("after_id", l.Cursor().ID))

	var counted time.Time
	redisDown := false
	for ctx.Err() == nil {
		n, err := r.round(ctx, l)
		var perr *publishError
		switch {
		case errors.As(err, &perr):
			// Redis is down or refuses: keep the lock, try the same
			// events again.
			if !redisDown {
				r.log.Warn("cannot publish change events; they wait in the database", zap.Error(err))
			}
			redisDown = true
			n = 0
		case err != nil:
			return err
		case redisDown:
			r.log.Info("publishing change events again")
			redisDown = false
		}
		if time.Since(counted) >= backlogEvery {
			backlog, err := l.Backlog(ctx, backlogLimit)
			if err != nil {
				return err
			}
			r.rec.EventBacklog(backlog)
			counted = time.Now()
		}
		if n == r.cfg.Batch {
			continue // there is more
		}
		wait := r.cfg.Interval
		if redisDown {
			wait = retryDelay
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	return ctx.Err()
}

// publishError is a failure to append to the stream.
type publishError struct{ err error }

func (e *publishError) Error() string { return e.err.Error() }
func (e *publishError) Unwrap() error { return e.err }

// round publishes the next batch and returns how many events it held. Once
// read, a batch is finished even if ctx ends meanwhile (up to
// flushTimeout): a clean shutdown publishes nothing twice.
func (r *Relay) round(ctx context.Context, l *postgres.EventLog) (int, error) {
	events, err := l.Next(ctx, r.cfg.Batch)
	if err != nil || len(events) == 0 {
		return 0, err
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), flushTimeout)
	defer cancel()
	if err := r.publish(fctx, events); err != nil {
		return 0, &publishError{fmt.Errorf("XADD to %s: %w", r.cfg.Stream, err)}
	}
	now := time.Now()
	if err := l.Published(fctx, events[len(events)-1].Cursor()); err != nil {
		return 0, err
	}
	for _, e := range events {
		r.rec.EventPublished(now.Sub(e.At))
	}
	return len(events), nil
}

// publish appends events to the stream in one pipeline, in order. The
// commands' arguments share one slice, and the fields' names and the
// stream's are boxed once rather than per event: allocation was most of
// the relay's CPU during a large rollout (BENCHMARKS.md, "A percent
// segment's change").
func (r *Relay) publish(ctx context.Context, events []domain.Event) error {
	head := []any{"XADD", r.cfg.Stream, "MAXLEN", "~", r.cfg.MaxLen, "*"}
	args := make([]any, 0, len(events)*(len(head)+entryLen))
	pipe := r.redis.Pipeline()
	for _, e := range events {
		from := len(args)
		args = appendEntry(append(args, head...), e)
		pipe.Do(ctx, args[from:]...)
	}
	var (
		acked *redis.Cmd
		info  *redis.StringCmd
	)
	if r.cfg.WaitReplicas > 0 {
		acked = pipe.Do(ctx, "WAIT", r.cfg.WaitReplicas, waitTimeout.Milliseconds())
		info = pipe.Info(ctx, "replication")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	if acked == nil {
		return nil
	}
	// A master with fewer replicas than asked for (the promoted one after
	// a failover, before another replica joins) cannot fail over to what
	// it lacks: the replicas it has must hold the batch.
	n, err := acked.Int64()
	if err != nil {
		return fmt.Errorf("WAIT: %w", err)
	}
	if need := min(int64(r.cfg.WaitReplicas), connectedReplicas(info)); n < need {
		return fmt.Errorf("%d of the %d replicas connected hold the batch", n, need)
	}
	return nil
}

// connectedReplicas reads how many replicas are connected to the master
// from its INFO replication (connected_slaves counts those still in their
// first sync too: a batch is not published on a master whose only replica
// would be promoted without it); an unreadable reply counts as "as many as
// asked for".
func connectedReplicas(info *redis.StringCmd) int64 {
	text, err := info.Result()
	if err != nil {
		return 1 << 30
	}
	for line := range strings.Lines(text) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "connected_slaves:"); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				return n
			}
		}
	}
	return 1 << 30
}

// entryLen is how many arguments appendEntry adds.
const entryLen = 12

// appendEntry appends an event's stream entry to args: its fields, name
// then value, in the contract's order. Redis stores every value as a
// string; integers are written in decimal.
func appendEntry(args []any, e domain.Event) []any {
	return append(args,
		"id", e.ID,
		"user_id", e.UserID,
		"segment", e.Segment,
		"operation", string(e.Operation),
		"reason", string(e.Reason),
		"at", e.At.UTC().Format(domain.EventTimeFormat),
	)
}

// Fields are an event's stream entry as a consumer reads it: string
// fields, in the contract's order.
func Fields(e domain.Event) []string {
	entry := appendEntry(make([]any, 0, entryLen), e)
	fields := make([]string, len(entry))
	for i, v := range entry {
		fields[i] = fmt.Sprint(v)
	}
	return fields
}
