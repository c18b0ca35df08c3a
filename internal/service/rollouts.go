package service

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/logctx"
)

// RolloutScheduler queues the rollout of a percent segment. It is best
// effort: the periodic Resume runs an unfinished rollout that has no task.
type RolloutScheduler interface {
	ScheduleRollout(ctx context.Context, segmentID int64) error
}

// RolloutQueue tells whether a rollout's task is waiting to run: pending,
// scheduled, or waiting for a retry.
type RolloutQueue interface {
	RolloutQueued(ctx context.Context, segmentID int64) (bool, error)
}

// RolloutStore is the storage Rollouts needs. Every method is atomic.
type RolloutStore interface {
	// ClaimRollout makes the caller the one runner of the rollout until
	// release, unless another runner holds it (ok false). A claim dies with
	// its runner.
	ClaimRollout(ctx context.Context, segmentID int64) (release func(), ok bool, err error)
	// PrepareRollout turns a pending rollout into a running one (choosing
	// its users and splitting them into batches of batchSize), takes up a
	// failed one where it stopped, and returns the rollout; a running or
	// done one is returned as it is. It returns domain.ErrNotFound if the
	// segment is gone.
	PrepareRollout(ctx context.Context, segmentID int64, batchSize int) (domain.Rollout, error)
	// RolloutBatch processes one unfinished batch no one else holds and
	// reports whether there was one and how many memberships it created.
	RolloutBatch(ctx context.Context, segmentID int64) (claimed bool, added int64, err error)
	// FinishRollout marks the rollout done if every batch is, and returns
	// it. It returns domain.ErrNotFound if the segment is gone.
	FinishRollout(ctx context.Context, segmentID int64) (domain.Rollout, error)
	// FailRollout marks an unfinished rollout failed.
	FailRollout(ctx context.Context, segmentID int64) error
	// UnfinishedRollouts lists the segments whose rollout is pending,
	// running or failed.
	UnfinishedRollouts(ctx context.Context) ([]int64, error)
}

// ErrRolloutIncomplete means the rollout is not done and another run holds
// it (or some of its batches); it should be run again later.
var ErrRolloutIncomplete = errors.New("rollout incomplete: another run holds it")

// RolloutSettings tune how rollouts run.
type RolloutSettings struct {
	// Workers is how many batches run at once.
	Workers int
	// Batch is how many registered users one batch considers.
	Batch int
	// Rate bounds how many registered users per second the batches of
	// this process's rollouts go through, together; 0 sets no bound. A
	// bounded rollout takes longer and leaves the database more room for
	// reads (BENCHMARKS.md, "A percent segment's change").
	Rate int
}

// Rollouts gives percent segments to the users registered when they were
// created.
type Rollouts struct {
	store     RolloutStore
	queue     RolloutQueue
	workers   int
	batchSize int
	pace      *rate.Limiter // nil: no bound
	log       *zap.Logger
}

// NewRollouts returns Rollouts on store that run as s says.
func NewRollouts(store RolloutStore, queue RolloutQueue, s RolloutSettings, log *zap.Logger) *Rollouts {
	r := &Rollouts{store: store, queue: queue, workers: s.Workers, batchSize: s.Batch, log: log}
	if s.Rate > 0 {
		// A batch takes Batch users' worth at once: the first starts at
		// once, each later one when the rate allows it.
		r.pace = rate.NewLimiter(rate.Limit(s.Rate), s.Batch)
	}
	return r
}

// Run carries the rollout of segment segmentID to the end. It is safe to
// run twice, at once or after a crash: each batch commits with its done
// mark, so no user is assigned twice and none is skipped. A deleted segment
// ends the rollout without error. It returns ErrRolloutIncomplete if another
// run held batches that are still unfinished.
func (r *Rollouts) Run(ctx context.Context, segmentID int64) error {
	release, ok, err := r.store.ClaimRollout(ctx, segmentID)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("segment %d: %w", segmentID, ErrRolloutIncomplete)
	}
	defer release()
	for {
		ro, err := r.store.PrepareRollout(ctx, segmentID, r.batchSize)
		if errors.Is(err, domain.ErrNotFound) {
			return nil
		}
		if err != nil || ro.Status != domain.RolloutRunning {
			return err
		}
		g, gctx := errgroup.WithContext(ctx)
		for range r.workers {
			g.Go(func() error {
				for {
					if r.pace != nil {
						if err := r.pace.WaitN(gctx, r.batchSize); err != nil {
							return err
						}
					}
					claimed, _, err := r.store.RolloutBatch(gctx, segmentID)
					if err != nil || !claimed {
						return err
					}
				}
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
		ro, err = r.store.FinishRollout(ctx, segmentID)
		if errors.Is(err, domain.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if ro.Status == domain.RolloutPending {
			// The share changed while this rollout ran: the latest wins,
			// and this run carries it out.
			continue
		}
		if ro.Status != domain.RolloutDone {
			return fmt.Errorf("segment %d: %w", segmentID, ErrRolloutIncomplete)
		}
		logctx.From(ctx, r.log).Info("rollout done", zap.Int64("segment_id", segmentID), zap.Int64("assigned", ro.Assigned))
		return nil
	}
}

// Fail marks the rollout of segmentID failed, when it will not be retried.
func (r *Rollouts) Fail(ctx context.Context, segmentID int64) error {
	return r.store.FailRollout(ctx, segmentID)
}

// Resume runs every unfinished rollout (failed ones included) that has no
// live runner: one whose task ran out of retries or was lost, or whose
// runner was killed. A rollout whose task is queued (it runs soon, or
// retries after a failure, counting toward its retry budget) is left to
// it, and so is one another run holds. The resume is the last resort: a
// rollout its run fails on is marked failed.
func (r *Rollouts) Resume(ctx context.Context) error {
	ids, err := r.store.UnfinishedRollouts(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		queued, err := r.queue.RolloutQueued(ctx, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if queued {
			continue
		}
		if err := r.Run(ctx, id); err != nil && !errors.Is(err, ErrRolloutIncomplete) {
			errs = append(errs, err)
			if ferr := r.store.FailRollout(context.WithoutCancel(ctx), id); ferr != nil {
				errs = append(errs, ferr)
			}
		}
	}
	return errors.Join(errs...)
}
