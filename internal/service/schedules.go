package service

import (
	"context"
	"errors"

	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/domain"
)

// ScheduleStore is the storage Schedules needs.
type ScheduleStore interface {
	// PatchSegment with p.Step applies that step if it is due and still
	// the plan's first, or returns a *domain.StepNotDueError.
	PatchSegment(ctx context.Context, slug string, p domain.SegmentPatch) (domain.Segment, error)
	// SkipStep takes the step out of the plan unapplied, recorded in the
	// audit log with problem.
	SkipStep(ctx context.Context, st domain.ScheduledStep, problem string) (domain.Segment, error)
	// DueSteps returns up to limit steps that are due, the earliest first.
	DueSteps(ctx context.Context, limit int) ([]domain.ScheduledStep, error)
}

// StepRecorder counts the steps of percent schedules that ran, by how
// ("task" or "sweep") and with what result ("applied" or "failed").
type StepRecorder interface {
	ScheduleStepRan(via, result string)
}

// Schedules applies the steps of percent schedules at their times.
type Schedules struct {
	segments *Segments
	store    ScheduleStore
	rec      StepRecorder
	log      *zap.Logger
}

// NewSchedules returns Schedules on store; the rollouts and next steps
// its steps need are queued as segments queues them.
func NewSchedules(segments *Segments, store ScheduleStore, rec StepRecorder, log *zap.Logger) *Schedules {
	return &Schedules{segments: segments, store: store, rec: rec, log: log}
}

// Apply applies the step st if it is still the first of its segment's
// plan: the segment's share changes exactly as a PATCH of auto_percent
// changes it (a rollout; in a layer, buckets taken or given back), under
// the actor "schedule", and the plan's next step is queued. A step that
// cannot apply (its layer is full) leaves the plan with the problem in the
// audit log. A step replaced, applied or deleted since does nothing; one
// whose time has not come on the database's clock returns a *NotDueError.
func (x *Schedules) Apply(ctx context.Context, st domain.ScheduledStep) error {
	_, err := x.apply(ctx, st, "task")
	return err
}

func (x *Schedules) apply(ctx context.Context, st domain.ScheduledStep, via string) (bool, error) {
	ctx = domain.WithActor(ctx, domain.Actor{Name: domain.ActorSchedule})
	seg, err := x.store.PatchSegment(ctx, st.Slug, domain.SegmentPatch{Step: &st})
	result := "applied"
	var (
		notDue *domain.StepNotDueError
		full   *domain.LayerFullError
	)
	switch {
	case errors.As(err, &notDue) && notDue.Wait > 0:
		return false, &NotDueError{Wait: notDue.Wait}
	case errors.As(err, &notDue), errors.Is(err, domain.ErrNotFound):
		return false, nil // replaced, applied or deleted since
	case errors.As(err, &full):
		result = "failed"
		seg, err = x.store.SkipStep(ctx, st, domain.ProblemLayerFull)
		if errors.As(err, &notDue) || errors.Is(err, domain.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		x.log.Warn("a scheduled step found its layer full; skipped", zap.String("slug", st.Slug), zap.Time("at", st.At),
			zap.String("via", via), zap.Int("free_buckets", full.Free))
	case err != nil:
		return false, err
	default:
		x.log.Info("applied a scheduled step", zap.String("slug", st.Slug), zap.Time("at", st.At), zap.String("via", via))
		if seg.Rollout != nil && seg.Rollout.Status == domain.RolloutPending {
			x.segments.scheduleRollout(ctx, seg)
		}
	}
	x.rec.ScheduleStepRan(via, result)
	x.segments.scheduleStep(ctx, seg)
	return true, nil
}

// Sweep applies every step that is due (its task was lost: Redis flushed,
// the worker down) and returns how many it ran.
func (x *Schedules) Sweep(ctx context.Context) (int, error) {
	n := 0
	for {
		due, err := x.store.DueSteps(ctx, 100)
		if err != nil || len(due) == 0 {
			return n, err
		}
		ran := 0
		var failed error
		for _, st := range due {
			ok, err := x.apply(ctx, st, "sweep")
			var notDue *NotDueError
			switch {
			case errors.As(err, &notDue):
			case err != nil:
				// One segment's failure does not hold up the others' steps.
				x.log.Error("a due step could not be applied", zap.String("slug", st.Slug), zap.Time("at", st.At), zap.Error(err))
				failed = errors.Join(failed, err)
			case ok:
				n++
				ran++
			}
		}
		if ran == 0 {
			return n, failed
		}
	}
}
