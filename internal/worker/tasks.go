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

	"github.com/segments-service/segments/internal/domain"
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
	// TypeResumeRollouts runs every unfinished rollout that nobody runs.
	TypeResumeRollouts = "segment:resume-rollouts"
	// TypeSweepIdempotencyKeys deletes Idempotency-Keys past their TTL.
	TypeSweepIdempotencyKeys = "idempotency:sweep"
	// TypeDeleteSegment deletes a segment at the time set for it.
	TypeDeleteSegment = "segment:delete"
	// TypeSweepDeletions deletes every segment whose deletion is due.
	TypeSweepDeletions = "segment:sweep-deletions"
	// TypeImport applies an import of a list of users.
	TypeImport = "segment:import"
	// TypeResumeImports runs every unfinished import.
	TypeResumeImports = "segment:resume-imports"
	// TypeApplyStep applies a step of a percent schedule at its time.
	TypeApplyStep = "segment:step"
	// TypeSweepSteps applies every step of a percent schedule that is due.
	TypeSweepSteps = "segment:sweep-steps"
	// TypeSweepAudit deletes audit entries older than AUDIT_RETENTION.
	TypeSweepAudit = "audit:sweep"
)

// NewStepTask returns the task that applies a step of a segment's plan at
// its time. Its id is unique per segment and time: a plan replaced since
// finds its first step is another and does nothing.
func NewStepTask(st domain.ScheduledStep) (*asynq.Task, []asynq.Option, error) {
	payload, err := json.Marshal(st)
	if err != nil {
		return nil, nil, fmt.Errorf("encode step: %w", err)
	}
	id := "step:" + strconv.FormatInt(st.SegmentID, 10) + ":" + strconv.FormatInt(st.At.UnixMicro(), 10)
	return asynq.NewTask(TypeApplyStep, payload), []asynq.Option{asynq.TaskID(id), asynq.ProcessAt(st.At), asynq.Timeout(time.Minute)}, nil
}

func parseStep(t *asynq.Task) (domain.ScheduledStep, error) {
	var st domain.ScheduledStep
	if err := json.Unmarshal(t.Payload(), &st); err != nil || st.SegmentID <= 0 || st.Slug == "" || st.At.IsZero() {
		return st, fmt.Errorf("bad %s payload %q: %w", t.Type(), t.Payload(), asynq.SkipRetry)
	}
	return st, nil
}

// NewSweepStepsTask returns the periodic task that applies the steps of
// percent schedules that are due.
func NewSweepStepsTask() *asynq.Task { return asynq.NewTask(TypeSweepSteps, nil) }

// NewSweepAuditTask returns the periodic task that trims the audit log.
func NewSweepAuditTask() *asynq.Task { return asynq.NewTask(TypeSweepAudit, nil) }

// importPayload is the payload of TypeImport.
type importPayload struct {
	ImportID int64 `json:"import_id"`
}

// NewImportTask returns the task that applies an import; its id is unique
// per import.
func NewImportTask(importID int64) (*asynq.Task, []asynq.Option, error) {
	payload, err := json.Marshal(importPayload{ImportID: importID})
	if err != nil {
		return nil, nil, fmt.Errorf("encode import: %w", err)
	}
	id := "import:" + strconv.FormatInt(importID, 10)
	return asynq.NewTask(TypeImport, payload), []asynq.Option{asynq.TaskID(id), asynq.Timeout(time.Hour), asynq.MaxRetry(8)}, nil
}

func parseImport(t *asynq.Task) (int64, error) {
	var p importPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil || p.ImportID <= 0 {
		return 0, fmt.Errorf("bad %s payload %q: %w", t.Type(), t.Payload(), asynq.SkipRetry)
	}
	return p.ImportID, nil
}

// NewResumeImportsTask returns the periodic task that runs unfinished
// imports.
func NewResumeImportsTask() *asynq.Task { return asynq.NewTask(TypeResumeImports, nil) }

// rolloutPayload is the payload of TypeRollout.
type rolloutPayload struct {
	SegmentID int64 `json:"segment_id"`
}

// NewRolloutTask returns the rollout task of a segment, retried up to
// maxRetry times; its id is unique per segment (RolloutTaskID), so a
// rollout is never queued twice.
func NewRolloutTask(segmentID int64, maxRetry int) (*asynq.Task, []asynq.Option, error) {
	payload, err := json.Marshal(rolloutPayload{SegmentID: segmentID})
	if err != nil {
		return nil, nil, fmt.Errorf("encode rollout: %w", err)
	}
	opts := []asynq.Option{asynq.TaskID(RolloutTaskID(segmentID)), asynq.Timeout(time.Hour), asynq.MaxRetry(maxRetry)}
	return asynq.NewTask(TypeRollout, payload), opts, nil
}

// RolloutTaskID is the task id of a segment's rollout.
func RolloutTaskID(segmentID int64) string { return "rollout:" + strconv.FormatInt(segmentID, 10) }

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

// NewDeleteSegmentTask returns the task that deletes a segment at
// d.DeleteAt. Its id is unique per segment and time: a deletion moved to
// another time is a new task, and the old one finds the segment not due.
func NewDeleteSegmentTask(d domain.ScheduledDeletion) (*asynq.Task, []asynq.Option, error) {
	payload, err := json.Marshal(d)
	if err != nil {
		return nil, nil, fmt.Errorf("encode deletion: %w", err)
	}
	id := "delete:" + strconv.FormatInt(d.SegmentID, 10) + ":" + strconv.FormatInt(d.DeleteAt.UnixMicro(), 10)
	return asynq.NewTask(TypeDeleteSegment, payload), []asynq.Option{asynq.TaskID(id), asynq.ProcessAt(d.DeleteAt), asynq.Timeout(10 * time.Minute)}, nil
}

func parseDeletion(t *asynq.Task) (domain.ScheduledDeletion, error) {
	var d domain.ScheduledDeletion
	if err := json.Unmarshal(t.Payload(), &d); err != nil || d.SegmentID <= 0 || d.DeleteAt.IsZero() {
		return d, fmt.Errorf("bad %s payload %q: %w", t.Type(), t.Payload(), asynq.SkipRetry)
	}
	return d, nil
}

// NewSweepDeletionsTask returns the periodic task that deletes the
// segments whose deletion is due.
func NewSweepDeletionsTask() *asynq.Task { return asynq.NewTask(TypeSweepDeletions, nil) }

// NewSweepTask returns the periodic sweep task.
func NewSweepTask() *asynq.Task { return asynq.NewTask(TypeSweepExpired, nil) }

// NewResumeRolloutsTask returns the periodic task that queues unfinished
// rollouts again.
func NewResumeRolloutsTask() *asynq.Task { return asynq.NewTask(TypeResumeRollouts, nil) }

// NewSweepIdempotencyKeysTask returns the periodic task that deletes
// Idempotency-Keys past their TTL.
func NewSweepIdempotencyKeysTask() *asynq.Task { return asynq.NewTask(TypeSweepIdempotencyKeys, nil) }

func parseExpiry(t *asynq.Task) (domain.Expiry, error) {
	var e domain.Expiry
	if err := json.Unmarshal(t.Payload(), &e); err != nil || e.UserID <= 0 || e.Slug == "" || e.ExpiresAt.IsZero() {
		return e, fmt.Errorf("bad %s payload %q: %w", t.Type(), t.Payload(), asynq.SkipRetry)
	}
	return e, nil
}

// Client enqueues the service's tasks.
type Client struct {
	c               *asynq.Client
	inspector       *asynq.Inspector
	queue           string
	rolloutMaxRetry int
}

// NewClient returns a Client writing to queue on rdb; a rollout task is
// retried up to rolloutMaxRetry times before its rollout is marked failed.
func NewClient(rdb redis.UniversalClient, queue string, rolloutMaxRetry int) *Client {
	return &Client{
		c:               asynq.NewClientFromRedisClient(rdb),
		inspector:       asynq.NewInspectorFromRedisClient(rdb),
		queue:           queue,
		rolloutMaxRetry: rolloutMaxRetry,
	}
}

// ScheduleExpiry enqueues the removal of e at its expiry. Scheduling the
// same membership and expiry twice is not an error.
func (c *Client) ScheduleExpiry(ctx context.Context, e domain.Expiry) error {
	if err := c.enqueue(ctx)(NewExpireTask(e)); !errors.Is(err, asynq.ErrTaskIDConflict) {
		return err
	}
	return nil
}

// ScheduleDeletion enqueues the deletion of a segment at d.DeleteAt.
// Scheduling the same segment and time twice is not an error.
func (c *Client) ScheduleDeletion(ctx context.Context, d domain.ScheduledDeletion) error {
	if err := c.enqueue(ctx)(NewDeleteSegmentTask(d)); !errors.Is(err, asynq.ErrTaskIDConflict) {
		return err
	}
	return nil
}

// ScheduleStep enqueues a step of a segment's plan at its time.
// Scheduling the same segment and time twice is not an error.
func (c *Client) ScheduleStep(ctx context.Context, st domain.ScheduledStep) error {
	if err := c.enqueue(ctx)(NewStepTask(st)); !errors.Is(err, asynq.ErrTaskIDConflict) {
		return err
	}
	return nil
}

// ScheduleRollout enqueues the rollout of a percent segment. Scheduling a
// rollout that is queued or running already is not an error. A rollout
// task that exhausted its retries stays in asynq's archive under the same
// id (which would refuse a new task for the archive's retention, 90 days):
// it is deleted and the rollout queued afresh.
func (c *Client) ScheduleRollout(ctx context.Context, segmentID int64) error {
	err := c.enqueue(ctx)(NewRolloutTask(segmentID, c.rolloutMaxRetry))
	if !errors.Is(err, asynq.ErrTaskIDConflict) {
		return err
	}
	id := RolloutTaskID(segmentID)
	info, ierr := c.inspector.GetTaskInfo(c.queue, id)
	if ierr != nil || info.State != asynq.TaskStateArchived {
		return nil // queued, running or just finished: nothing to do
	}
	if err := c.inspector.DeleteTask(c.queue, id); err != nil && !errors.Is(err, asynq.ErrTaskNotFound) {
		return fmt.Errorf("delete archived %s: %w", id, err)
	}
	err = c.enqueue(ctx)(NewRolloutTask(segmentID, c.rolloutMaxRetry))
	if errors.Is(err, asynq.ErrTaskIDConflict) {
		return nil // another worker queued it meanwhile
	}
	return err
}

// ScheduleImport enqueues the run of an import. Scheduling one that is
// queued, running or archived is not an error (the periodic resume runs
// any unfinished import).
func (c *Client) ScheduleImport(ctx context.Context, importID int64) error {
	if err := c.enqueue(ctx)(NewImportTask(importID)); !errors.Is(err, asynq.ErrTaskIDConflict) {
		return err
	}
	return nil
}

// ScheduleSweep enqueues a sweep of expired memberships at at (one per
// second of at: a sweep removes every membership expired by then).
func (c *Client) ScheduleSweep(ctx context.Context, at time.Time) error {
	at = at.Truncate(time.Second).Add(time.Second)
	id := "sweep:" + strconv.FormatInt(at.Unix(), 10)
	err := c.enqueue(ctx)(NewSweepTask(), []asynq.Option{asynq.TaskID(id), asynq.ProcessAt(at), asynq.MaxRetry(3), asynq.Timeout(10 * time.Minute)}, nil)
	if !errors.Is(err, asynq.ErrTaskIDConflict) {
		return err
	}
	return nil
}

// RolloutQueued reports whether the segment's rollout task is waiting to
// run: pending, scheduled or waiting for a retry. An active task (running,
// or orphaned by a killed worker), an archived one or none is not queued.
func (c *Client) RolloutQueued(ctx context.Context, segmentID int64) (bool, error) {
	info, err := c.inspector.GetTaskInfo(c.queue, RolloutTaskID(segmentID))
	switch {
	case errors.Is(err, asynq.ErrTaskNotFound), errors.Is(err, asynq.ErrQueueNotFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("look up the rollout task of segment %d: %w", segmentID, err)
	}
	switch info.State {
	case asynq.TaskStatePending, asynq.TaskStateScheduled, asynq.TaskStateRetry:
		return true, nil
	}
	return false, nil
}

// enqueue returns a function that enqueues what a task constructor made.
// A task id that exists already gives an error wrapping
// asynq.ErrTaskIDConflict.
func (c *Client) enqueue(ctx context.Context) func(*asynq.Task, []asynq.Option, error) error {
	return func(t *asynq.Task, opts []asynq.Option, err error) error {
		if err != nil {
			return err
		}
		if _, err = c.c.EnqueueContext(ctx, t, append(opts, asynq.Queue(c.queue))...); err != nil {
			return fmt.Errorf("enqueue %s: %w", t.Type(), err)
		}
		return nil
	}
}
