// Package service holds the use cases of the segments service. It validates
// what the HTTP layer cannot see (rules across fields, time), calls the
// stores (each store call is one transaction) and schedules background work.
// It knows nothing of HTTP or SQL.
package service

import (
	"context"

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
}

// Segments manages segments.
type Segments struct {
	store    SegmentStore
	rollouts RolloutScheduler
	log      *zap.Logger
}

// NewSegments returns Segments on store; the rollouts of percent segments
// are queued with rollouts.
func NewSegments(store SegmentStore, rollouts RolloutScheduler, log *zap.Logger) *Segments {
	return &Segments{store: store, rollouts: rollouts, log: log}
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
	seg, err := s.store.CreateSegment(ctx, ns)
	if err != nil || seg.AutoPercent == nil {
		return seg, err
	}
	aftercommit.Do(ctx, func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), scheduleTimeout)
		defer cancel()
		if err := s.rollouts.ScheduleRollout(sctx, seg.ID); err != nil {
			logctx.From(ctx, s.log).Warn("could not queue rollout; the worker's periodic resume will run it",
				zap.String("slug", seg.Slug), zap.Error(err))
		}
	})
	return seg, nil
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
	p := Page{Segments: segs}
	if len(segs) > limit {
		p.Segments = segs[:limit]
		p.NextAfter = segs[limit-1].Slug
	}
	return p, nil
}

// Delete deletes the segment named slug; every member loses it (history
// reason segment_deleted) and the slug becomes free. It returns
// domain.ErrNotFound if there is no such segment.
func (s *Segments) Delete(ctx context.Context, slug string) error {
	return s.store.DeleteSegment(ctx, slug)
}
