package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"segments/internal/domain"
	"segments/internal/service"
)

// Task types.
const (
	// TypeExpireMembership removes one membership at its expiry.
	TypeExpireMembership = "membership:expire"
	// TypeSweepExpired removes every expired membership, in batches.
	TypeSweepExpired = "membership:sweep"
	// TypeRollout gives a percent segment to the users registered when it
	// was created.
	TypeRollout = "segment:rollout"
	// TypeResumeRollouts queues every unfinished rollout again.
	TypeResumeRollouts = "segment:resume-rollouts"
)

// rolloutPayload is the payload of TypeRollout.
type rolloutPayload struct {
	SegmentID int64 `json:"segment_id"`
}

// NewRolloutTask returns the rollout task of a segment; its id is unique per
// segment, so a rollout is never queued twice.
func NewRolloutTask(segmentID int64) (*asynq.Task, []asynq.Option, error) {
	payload, err := json.Marshal(rolloutPayload{SegmentID: segmentID})
	if err != nil {
		return nil, nil, fmt.Errorf("encode rollout: %w", err)
	}
	id := "rollout:" + strconv.FormatInt(segmentID, 10)
	return asynq.NewTask(TypeRollout, payload), []asynq.Option{asynq.TaskID(id), asynq.Timeout(time.Hour)}, nil
}

func parseRollout(t *asynq.Task) (int64, error) {
	var p rolloutPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil || p.SegmentID <= 0 {
		return 0, fmt.Errorf("bad %s payload %q: %w", t.Type(), t.Payload(), asynq.SkipRetry)
	}
	return p.SegmentID, nil
}

// NewExpireTask returns the task that removes the membership e at its
// expiry. Its id is unique per membership and expiry, so a retried change
// or a re-add with the same expiry does not queue it twice.
func NewExpireTask(e domain.Expiry) (*asynq.Task, []asynq.Option, error) {
	payload, err := json.Marshal(e)
	if err != nil {
		return nil, nil, fmt.Errorf("encode expiry: %w", err)
	}
	id := "expire:" + strconv.FormatInt(e.UserID, 10) + ":" + e.Slug + ":" + strconv.FormatInt(e.ExpiresAt.UnixMicro(), 10)
	return asynq.NewTask(TypeExpireMembership, payload), []asynq.Option{asynq.TaskID(id), asynq.ProcessAt(e.ExpiresAt)}, nil
}

// NewSweepTask returns the periodic sweep task.
func NewSweepTask() *asynq.Task { return asynq.NewTask(TypeSweepExpired, nil) }

// NewResumeRolloutsTask returns the periodic task that queues unfinished
// rollouts again.
func NewResumeRolloutsTask() *asynq.Task { return asynq.NewTask(TypeResumeRollouts, nil) }

func parseExpiry(t *asynq.Task) (domain.Expiry, error) {
	var e domain.Expiry
	if err := json.Unmarshal(t.Payload(), &e); err != nil || e.UserID <= 0 || e.Slug == "" || e.ExpiresAt.IsZero() {
		return e, fmt.Errorf("bad %s payload %q: %w", t.Type(), t.Payload(), asynq.SkipRetry)
	}
	return e, nil
}

var (
	_ service.ExpiryScheduler  = (*Client)(nil)
	_ service.RolloutScheduler = (*Client)(nil)
)

// Client enqueues the service's tasks.
type Client struct {
	c     *asynq.Client
	queue string
}

// NewClient returns a Client writing to queue on rdb.
func NewClient(rdb redis.UniversalClient, queue string) *Client {
	return &Client{c: asynq.NewClientFromRedisClient(rdb), queue: queue}
}

// ScheduleExpiry enqueues the removal of e at its expiry. Scheduling the
// same membership and expiry twice is not an error.
func (c *Client) ScheduleExpiry(ctx context.Context, e domain.Expiry) error {
	return c.enqueue(ctx)(NewExpireTask(e))
}

// ScheduleRollout enqueues the rollout of a percent segment. Scheduling a
// rollout that is queued or running already is not an error.
func (c *Client) ScheduleRollout(ctx context.Context, segmentID int64) error {
	return c.enqueue(ctx)(NewRolloutTask(segmentID))
}

// enqueue returns a function that enqueues what a task constructor made,
// treating a task id that exists already as success.
func (c *Client) enqueue(ctx context.Context) func(*asynq.Task, []asynq.Option, error) error {
	return func(t *asynq.Task, opts []asynq.Option, err error) error {
		if err != nil {
			return err
		}
		_, err = c.c.EnqueueContext(ctx, t, append(opts, asynq.Queue(c.queue))...)
		if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
			return fmt.Errorf("enqueue %s: %w", t.Type(), err)
		}
		return nil
	}
}
