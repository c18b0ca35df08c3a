// Package service holds the use cases of the segments service. It validates
// what the HTTP layer cannot see (rules across fields, time), calls the
// stores (each store call is one transaction) and schedules background work.
// It knows nothing of HTTP or SQL.
package service

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/aftercommit"
	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/logctx"
)

// SegmentStore is the storage Segments needs. Every method is atomic.
type SegmentStore interface {
	CreateSegment(ctx context.Context, s domain.NewSegment) (domain.Segment, error)
	Segment(ctx context.Context, slug string) (domain.Segment, error)
	Segments(ctx context.Context, after string, limit int) ([]domain.Segment, error)
	// DeleteSegment deletes the segment and its memberships (history:
	// segment_deleted, or ttl for those that had expired), or returns
	// domain.ErrNotFound.
	DeleteSegment(ctx context.Context, slug string) error
	// PatchSegment changes a segment's description and scheduled deletion,
	// or returns domain.ErrNotFound.
	PatchSegment(ctx context.Context, slug string, p domain.SegmentPatch) (domain.Segment, error)
	// Explain reads why a user is or is not in a segment, without
	// registering the user, or returns domain.ErrNotFound.
	Explain(ctx context.Context, userID int64, slug string) (domain.Explanation, error)
	// Members returns up to limit active members with user ids above
	// after, in user id order, or domain.ErrNotFound.
	Members(ctx context.Context, slug string, after int64, limit int) ([]domain.Member, error)
}

// SegmentScheduler queues a segment's background work: its rollout, its
// deletion at the time set for it, and the steps of its percent schedule.
type SegmentScheduler interface {
	RolloutScheduler
	ScheduleDeletion(ctx context.Context, d domain.ScheduledDeletion) error
	ScheduleStep(ctx context.Context, st domain.ScheduledStep) error
}

// Segments manages segments.
type Segments struct {
	store SegmentStore
	tasks SegmentScheduler
	now   func() time.Time
	log   *zap.Logger
}

// NewSegments returns Segments on store; rollouts and scheduled deletions
// are queued with tasks; now tells the time.
func NewSegments(store SegmentStore, tasks SegmentScheduler, now func() time.Time, log *zap.Logger) *Segments {
	return &Segments{store: store, tasks: tasks, now: now, log: log}
}

// Create creates a segment. It returns domain.ErrConflict if the slug is
// taken.
//
// A percent segment starts with its rollout pending and queued (once the
// creation has committed: see aftercommit). Users
// registered from then on get it by the bucket rule at once; the rollout
// reaches those registered before. A failure to queue the rollout (Redis
// down) is logged and does not fail the creation: the worker's periodic
// resume runs an unfinished rollout that has no task.
func (s *Segments) Create(ctx context.Context, ns domain.NewSegment) (domain.Segment, error) {
	if err := s.checkDeleteAt(ns.DeleteAt); err != nil {
		return domain.Segment{}, err
	}
	if len(ns.Schedule) > 0 && ns.AutoPercent == nil {
		return domain.Segment{}, errScheduleOnManual
	}
	var err error
	if ns.Schedule, err = s.checkSchedule(ns.Schedule); err != nil {
		return domain.Segment{}, err
	}
	seg, err := s.store.CreateSegment(ctx, ns)
	if err != nil {
		return seg, err
	}
	s.scheduleDeletion(ctx, seg)
	s.scheduleStep(ctx, seg)
	if seg.AutoPercent == nil {
		return seg, nil
	}
	s.scheduleRollout(ctx, seg)
	return seg, nil
}

// scheduleRollout queues seg's rollout once the write has committed. A
// failure (Redis down) is logged: the worker's periodic resume runs an
// unfinished rollout that has no task.
func (s *Segments) scheduleRollout(ctx context.Context, seg domain.Segment) {
	scheduleAfterCommit(ctx, s.log, func(sctx context.Context) error { return s.tasks.ScheduleRollout(sctx, seg.ID) },
		"could not queue rollout; the worker's periodic resume will run it", zap.String("slug", seg.Slug))
}

// Patch changes the segment named slug: its description, when it is
// deleted (p.DeleteAt moves or sets it, p.CancelDeletion cancels it; a
// deletion task queued for an earlier time finds the segment no longer due
// then and does nothing), and a percent segment's share: a new share
// starts a new rollout over the users registered now (see
// RolloutStore.PrepareRollout), replacing an unfinished one. It returns
// domain.ErrInvalid for a deletion time not in the future, for auto_percent
// on a manual segment or null on a percent one; domain.ErrNotFound if there
// is no such segment.
func (s *Segments) Patch(ctx context.Context, slug string, p domain.SegmentPatch) (domain.Segment, error) {
	if err := s.checkDeleteAt(p.DeleteAt); err != nil {
		return domain.Segment{}, err
	}
	var err error
	if p.Schedule, err = s.checkSchedule(p.Schedule); err != nil {
		return domain.Segment{}, err
	}
	if p.AutoPercent != nil || p.AutoPercentNull || len(p.Schedule) > 0 {
		seg, err := s.store.Segment(ctx, slug)
		if err != nil {
			return domain.Segment{}, err
		}
		switch {
		case seg.AutoPercent == nil && len(p.Schedule) > 0:
			return domain.Segment{}, errScheduleOnManual
		case seg.AutoPercent == nil:
			return domain.Segment{}, domain.Invalid("a manual segment has no auto_percent; create a percent segment instead",
				domain.FieldError{Field: "/auto_percent", Message: "not allowed on a manual segment"})
		case p.AutoPercentNull:
			return domain.Segment{}, domain.Invalid("a percent segment cannot become manual",
				domain.FieldError{Field: "/auto_percent", Message: "cannot be null on a percent segment"})
		}
	}
	seg, err := s.store.PatchSegment(ctx, slug, p)
	if err != nil {
		return seg, err
	}
	s.scheduleDeletion(ctx, seg)
	if p.SetSchedule {
		s.scheduleStep(ctx, seg)
	}
	if p.AutoPercent != nil && seg.Rollout != nil && seg.Rollout.Status == domain.RolloutPending {
		s.scheduleRollout(ctx, seg)
	}
	return seg, nil
}

// errScheduleOnManual refuses a plan of shares for a manual segment.
var errScheduleOnManual = domain.Invalid("a manual segment has no auto_percent to change on a schedule",
	domain.FieldError{Field: "/auto_percent_schedule", Message: "not allowed on a manual segment"})

// checkSchedule refuses a plan of over domain.MaxScheduleSteps steps or
// whose times are not strictly increasing and in the future; it returns
// the plan with its times in UTC, to the microsecond the database keeps.
func (s *Segments) checkSchedule(steps []domain.ScheduleStep) ([]domain.ScheduleStep, error) {
	if len(steps) > domain.MaxScheduleSteps {
		return nil, domain.Invalid(fmt.Sprintf("a schedule has at most %d steps", domain.MaxScheduleSteps),
			domain.FieldError{Field: "/auto_percent_schedule", Message: fmt.Sprintf("has %d steps; at most %d", len(steps), domain.MaxScheduleSteps)})
	}
	now := s.now()
	out := make([]domain.ScheduleStep, len(steps))
	for i, st := range steps {
		st.At = st.At.UTC().Truncate(time.Microsecond)
		field := fmt.Sprintf("/auto_percent_schedule/%d/at", i)
		switch {
		case !st.At.After(now):
			return nil, domain.Invalid("a step of the schedule is not in the future", domain.FieldError{Field: field, Message: "must be in the future"})
		case i > 0 && !st.At.After(out[i-1].At):
			return nil, domain.Invalid("the steps of a schedule are in order of time", domain.FieldError{Field: field, Message: "must be after the previous step's"})
		}
		out[i] = st
	}
	return out, nil
}

// scheduleStep queues the first step of seg's plan once the write has
// committed. A failure (Redis down) is logged: the worker's sweep applies
// what is due either way.
func (s *Segments) scheduleStep(ctx context.Context, seg domain.Segment) {
	if len(seg.Schedule) == 0 {
		return
	}
	st := domain.ScheduledStep{SegmentID: seg.ID, Slug: seg.Slug, At: seg.Schedule[0].At}
	scheduleAfterCommit(ctx, s.log, func(sctx context.Context) error { return s.tasks.ScheduleStep(sctx, st) },
		"could not schedule the segment's next step; the sweep will apply it", zap.String("slug", st.Slug), zap.Time("at", st.At))
}

// checkDeleteAt refuses a deletion time that is not in the future.
func (s *Segments) checkDeleteAt(at *time.Time) error {
	if at != nil && !at.After(s.now()) {
		return domain.Invalid("delete_at is not in the future",
			domain.FieldError{Field: "/delete_at", Message: "must be in the future"})
	}
	return nil
}

// scheduleDeletion queues seg's deletion at its delete_at once the write
// has committed. A failure (Redis down) is logged: the worker's sweep
// deletes what is due either way.
func (s *Segments) scheduleDeletion(ctx context.Context, seg domain.Segment) {
	if seg.DeleteAt == nil {
		return
	}
	d := domain.ScheduledDeletion{SegmentID: seg.ID, Slug: seg.Slug, DeleteAt: *seg.DeleteAt}
	scheduleAfterCommit(ctx, s.log, func(sctx context.Context) error { return s.tasks.ScheduleDeletion(sctx, d) },
		"could not schedule the segment's deletion; the sweep will delete it", zap.String("slug", d.Slug), zap.Time("delete_at", d.DeleteAt))
}

// scheduleAfterCommit runs schedule once ctx's transaction has committed
// (see aftercommit), bounded by scheduleTimeout so that a Redis outage
// slows a request by that much at most. A failure is logged as warn: what
// it would have queued, a periodic task of the worker does in the end.
func scheduleAfterCommit(ctx context.Context, log *zap.Logger, schedule func(context.Context) error, warn string, fields ...zap.Field) {
	aftercommit.Do(ctx, func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), scheduleTimeout)
		defer cancel()
		if err := schedule(sctx); err != nil {
			logctx.From(ctx, log).Warn(warn, append(fields, zap.Error(err))...)
		}
	})
}

// Get returns the segment named slug, or domain.ErrNotFound.
func (s *Segments) Get(ctx context.Context, slug string) (domain.Segment, error) {
	return s.store.Segment(ctx, slug)
}

// Page is one page of segments in byte order of slug.
type Page struct {
	Segments []domain.Segment
	// NextAfter is the cursor of the next page; empty on the last page.
	NextAfter string
}

// List returns up to limit segments whose slugs sort after after.
func (s *Segments) List(ctx context.Context, after string, limit int) (Page, error) {
	segs, err := s.store.Segments(ctx, after, limit+1)
	if err != nil {
		return Page{}, err
	}
	p := Page{}
	if last := cutPage(&segs, limit); last != nil {
		p.NextAfter = last.Slug
	}
	p.Segments = segs
	return p, nil
}

// Delete deletes the segment named slug; every member loses it (history
// reason segment_deleted) and the slug becomes free. It returns
// domain.ErrNotFound if there is no such segment.
func (s *Segments) Delete(ctx context.Context, slug string) error {
	return s.store.DeleteSegment(ctx, slug)
}

// Explain says why the user is or is not in the segment named slug: the
// active membership, the bucket and the percent rule's verdict, and the
// user's last events in it. It does not register the user. It returns
// domain.ErrNotFound if there is no such segment.
func (s *Segments) Explain(ctx context.Context, userID int64, slug string) (domain.Explanation, error) {
	return s.store.Explain(ctx, userID, slug)
}

// MemberPage is one page of a segment's members in user id order.
type MemberPage struct {
	Members []domain.Member
	// NextAfter is the cursor of the next page; 0 on the last page.
	NextAfter int64
}

// Members returns up to limit active members of the segment named slug
// with user ids above after. Paging by user id sees every member that
// stays a member while the pages are read exactly once. It returns
// domain.ErrNotFound if there is no such segment.
func (s *Segments) Members(ctx context.Context, slug string, after int64, limit int) (MemberPage, error) {
	ms, err := s.store.Members(ctx, slug, after, limit+1)
	if err != nil {
		return MemberPage{}, err
	}
	p := MemberPage{}
	if last := cutPage(&ms, limit); last != nil {
		p.NextAfter = last.UserID
	}
	p.Members = ms
	return p, nil
}

// cutPage trims items, read with limit+1, to one page of limit, and
// returns the page's last item if another page follows (its cursor), else
// nil.
func cutPage[T any](items *[]T, limit int) *T {
	if len(*items) <= limit {
		return nil
	}
	*items = (*items)[:limit]
	return &(*items)[limit-1]
}
