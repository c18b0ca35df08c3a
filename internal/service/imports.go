package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/logctx"
)

// ImportStore is the storage Imports needs. Every method is atomic.
type ImportStore interface {
	// CreateImport stores a pending import of list, read to its end, or
	// refuses it whole: a *domain.ImportListError for bad lines,
	// domain.ErrNotFound for no such segment, domain.ErrInvalid for
	// replace on a percent segment.
	CreateImport(ctx context.Context, ni domain.NewImport, list io.Reader) (domain.Import, error)
	// Import returns an import, or domain.ErrNotFound.
	Import(ctx context.Context, id int64) (domain.Import, error)
	// ClaimImports makes the caller the one runner of a segment's imports
	// until release, unless another runner holds them (ok false). A claim
	// dies with its runner.
	ClaimImports(ctx context.Context, segmentID int64) (release func(), ok bool, err error)
	// NextImport returns the oldest unfinished import of a segment, or nil.
	NextImport(ctx context.Context, segmentID int64) (*domain.Import, error)
	// SortImport sorts and dedupes an uploaded list (counting received),
	// once; the batches need it sorted.
	SortImport(ctx context.Context, importID int64) error
	// ApplyImportBatch applies the next batch of a sorted import, exactly
	// once, and ends the import when none is left.
	ApplyImportBatch(ctx context.Context, importID int64, batchSize int) (domain.ImportStep, error)
	// UnfinishedImports returns the ids of pending and running imports,
	// oldest first.
	UnfinishedImports(ctx context.Context) ([]int64, error)
}

// ImportScheduler queues an import's background work.
type ImportScheduler interface {
	// ScheduleImport queues the run of an import; queueing one that is
	// queued already is not an error.
	ScheduleImport(ctx context.Context, importID int64) error
	// ScheduleSweep queues a sweep of expired memberships at at.
	ScheduleSweep(ctx context.Context, at time.Time) error
}

// ImportRecorder counts what imports did, for monitoring.
type ImportRecorder interface {
	ImportIDsApplied(n int64)
}

// ImportSettings tune how imports apply.
type ImportSettings struct {
	// Batch is how many listed users one transaction applies.
	Batch int
	// Rate bounds how many listed users per second this process's
	// imports apply, together; 0 sets no bound.
	Rate int
}

// Imports applies lists of users to segments: uploaded whole, applied in
// the background in batches, exactly once.
type Imports struct {
	store     ImportStore
	tasks     ImportScheduler
	rec       ImportRecorder
	batchSize int
	pace      *rate.Limiter // nil: no bound
	now       func() time.Time
	log       *zap.Logger
}

// NewImports returns Imports on store that queue their runs with tasks and
// apply as s says; now tells the time.
func NewImports(store ImportStore, tasks ImportScheduler, rec ImportRecorder, s ImportSettings, now func() time.Time, log *zap.Logger) *Imports {
	i := &Imports{store: store, tasks: tasks, rec: rec, batchSize: s.Batch, now: now, log: log}
	if s.Rate > 0 {
		i.pace = rate.NewLimiter(rate.Limit(s.Rate), s.Batch)
	}
	return i
}

// Upload stores the import of list (read to its end) and queues its run
// once the upload has committed; it returns the pending import. Both
// expiry forms, an expiry with mode remove, or one not in the future, are
// domain.ErrInvalid; so is
// a list with bad lines (a *domain.ImportListError) and replace on a
// percent segment; a segment that does not exist is domain.ErrNotFound.
// Nothing is stored for a refused upload.
func (i *Imports) Upload(ctx context.Context, ni domain.NewImport, list io.Reader) (domain.Import, error) {
	switch ni.Mode {
	case domain.ImportAdd, domain.ImportReplace, domain.ImportRemove:
	default:
		return domain.Import{}, domain.Invalid(fmt.Sprintf("mode %q is not one of add, remove, replace", ni.Mode),
			domain.FieldError{Field: "/mode", Message: "must be add, remove or replace"})
	}
	if ni.TTL != 0 && ni.ExpiresAt != nil {
		return domain.Import{}, domain.Invalid("give the expiry as ttl_seconds or as expires_at, not both",
			domain.FieldError{Field: "/expires_at", Message: "cannot be combined with ttl_seconds"})
	}
	now := i.now()
	if ni.TTL != 0 {
		at := now.Add(ni.TTL)
		ni.ExpiresAt, ni.TTL = &at, 0
	}
	if ni.ExpiresAt != nil {
		if ni.Mode == domain.ImportRemove {
			return domain.Import{}, domain.Invalid("an expiry goes with add or replace: remove gives no membership to expire",
				domain.FieldError{Field: "/mode", Message: "remove takes no ttl_seconds or expires_at"})
		}
		if !ni.ExpiresAt.After(now) {
			return domain.Import{}, domain.Invalid(fmt.Sprintf("expires_at %s is not in the future", ni.ExpiresAt.UTC().Format(time.RFC3339)),
				domain.FieldError{Field: "/expires_at", Message: "must be in the future"})
		}
	}
	imp, err := i.store.CreateImport(ctx, ni, list)
	if err != nil {
		return imp, err
	}
	scheduleAfterCommit(ctx, i.log, func(sctx context.Context) error { return i.tasks.ScheduleImport(sctx, imp.ID) },
		"could not queue the import; the worker's periodic resume will run it", zap.Int64("import_id", imp.ID))
	return imp, nil
}

// Get returns the import with id id, or domain.ErrNotFound.
func (i *Imports) Get(ctx context.Context, id int64) (domain.Import, error) {
	return i.store.Import(ctx, id)
}

// ErrImportBusy means another run holds the imports of the segment; it
// applies this import too (it goes on until the segment has none left),
// and this run should look again later in case it had just finished.
var ErrImportBusy = errors.New("another run applies the imports of this segment")

// Run applies import id to its end, and every other unfinished import of
// its segment, oldest first: one runner a segment (ClaimImports), so a
// segment's imports apply in the order they were created. It is safe to
// run twice, at once or after a crash: each batch commits with its done
// mark, and a second run finds the segment claimed (ErrImportBusy). An
// import whose segment is deleted ends failed (without error here).
func (i *Imports) Run(ctx context.Context, id int64) error {
	imp, err := i.store.Import(ctx, id)
	if errors.Is(err, domain.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if imp.Status == domain.ImportDone || imp.Status == domain.ImportFailed {
		return nil
	}
	release, ok, err := i.store.ClaimImports(ctx, imp.SegmentID)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("import %d of segment %s: %w", id, imp.Segment, ErrImportBusy)
	}
	defer release()
	for {
		next, err := i.store.NextImport(ctx, imp.SegmentID)
		if err != nil || next == nil {
			return err
		}
		if next.Received == nil {
			if err := i.store.SortImport(ctx, next.ID); err != nil && !errors.Is(err, domain.ErrNotFound) {
				return err
			}
			continue
		}
		if i.pace != nil {
			if err := i.pace.WaitN(ctx, i.batchSize); err != nil {
				return err
			}
		}
		step, err := i.store.ApplyImportBatch(ctx, next.ID, i.batchSize)
		if err != nil {
			return err
		}
		i.rec.ImportIDsApplied(step.Applied)
		if step.Ended {
			i.ended(ctx, step.Import)
		}
	}
}

// ended logs an import's end and, for one with an expiry, queues a sweep
// at the expiry: the memberships it gave then leave together (reads leave
// them out from the expiry on either way; the periodic sweep is the last
// resort).
func (i *Imports) ended(ctx context.Context, imp domain.Import) {
	log := logctx.From(ctx, i.log).With(zap.Int64("import_id", imp.ID), zap.String("segment", imp.Segment))
	if imp.Status == domain.ImportFailed {
		log.Warn("import failed", zap.String("error", imp.Error), zap.Int64("processed", imp.Processed))
		return
	}
	log.Info("import done", zap.String("mode", string(imp.Mode)), zap.Int64p("received", imp.Received),
		zap.Int64("added", imp.Added), zap.Int64("removed", imp.Removed), zap.Int64("conflicts", imp.Conflicts))
	if imp.ExpiresAt == nil || imp.Added == 0 {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), scheduleTimeout)
	defer cancel()
	if err := i.tasks.ScheduleSweep(sctx, *imp.ExpiresAt); err != nil {
		log.Warn("could not schedule the sweep at the import's expiry; the periodic sweep will remove its memberships", zap.Error(err))
	}
}

// Resume runs every unfinished import, oldest first: one whose task was
// lost or ran out of retries, or whose worker was killed (its claim died
// with it). A segment whose imports another run holds is left to it.
func (i *Imports) Resume(ctx context.Context) error {
	ids, err := i.store.UnfinishedImports(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		if err := i.Run(ctx, id); err != nil && !errors.Is(err, ErrImportBusy) {
			errs = append(errs, fmt.Errorf("import %d: %w", id, err))
		}
	}
	return errors.Join(errs...)
}
