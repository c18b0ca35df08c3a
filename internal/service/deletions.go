package service

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/domain"
)

// DeletionStore is the storage Deletions needs.
type DeletionStore interface {
	// DeleteSegmentIfDue deletes the segment as DELETE does if it is still
	// to be deleted at d.DeleteAt and that time has passed; it reports
	// whether it did, and the database's time if it did not.
	DeleteSegmentIfDue(ctx context.Context, d domain.ScheduledDeletion) (bool, time.Time, error)
	// DueDeletions returns up to limit segments whose deletion is due.
	DueDeletions(ctx context.Context, limit int) ([]domain.ScheduledDeletion, error)
}

// DeletionRecorder counts scheduled deletions done, by how: "task" or
// "sweep".
type DeletionRecorder interface {
	SegmentDeletedOnSchedule(via string)
}

// NotDueError says a deletion task ran before its time (clocks differ); it
// should run again after Wait.
type NotDueError struct{ Wait time.Duration }

func (e *NotDueError) Error() string {
	return fmt.Sprintf("the segment is to be deleted in %s; not yet", e.Wait)
}

// Deletions deletes segments at the time set for them.
type Deletions struct {
	store DeletionStore
	rec   DeletionRecorder
	log   *zap.Logger
}

// NewDeletions returns Deletions on store.
func NewDeletions(store DeletionStore, rec DeletionRecorder, log *zap.Logger) *Deletions {
	return &Deletions{store: store, rec: rec, log: log}
}

// Delete deletes the segment d names if it is still to be deleted at
// d.DeleteAt (a deletion moved or cancelled since does nothing), or
// returns a *NotDueError if that time has not come on the database's
// clock.
func (x *Deletions) Delete(ctx context.Context, d domain.ScheduledDeletion) error {
	ctx = domain.WithActor(ctx, domain.Actor{Name: domain.ActorSchedule})
	deleted, now, err := x.store.DeleteSegmentIfDue(ctx, d)
	switch {
	case err != nil:
		return err
	case deleted:
		x.rec.SegmentDeletedOnSchedule("task")
		x.log.Info("deleted a segment at its scheduled time", zap.String("slug", d.Slug), zap.Time("delete_at", d.DeleteAt))
	case now.Before(d.DeleteAt):
		return &NotDueError{Wait: d.DeleteAt.Sub(now)}
	}
	return nil
}

// Sweep deletes every segment whose deletion is due (their tasks were
// lost: Redis flushed, the worker down) and returns how many it deleted.
func (x *Deletions) Sweep(ctx context.Context) (int, error) {
	ctx = domain.WithActor(ctx, domain.Actor{Name: domain.ActorSchedule})
	n := 0
	for {
		due, err := x.store.DueDeletions(ctx, 100)
		if err != nil || len(due) == 0 {
			return n, err
		}
		for _, d := range due {
			deleted, _, err := x.store.DeleteSegmentIfDue(ctx, d)
			if err != nil {
				return n, err
			}
			if deleted {
				n++
				x.rec.SegmentDeletedOnSchedule("sweep")
				x.log.Info("swept a segment due for deletion", zap.String("slug", d.Slug), zap.Time("delete_at", d.DeleteAt))
			}
		}
	}
}
