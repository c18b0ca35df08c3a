package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/domain"
)

// SegmentRepo stores segments.
type SegmentRepo struct {
	pool *pgxpool.Pool
	rec  Recorder
	// standby, if set, answers members pages when it may.
	standby *Standby
}

// WithStandby makes the repo read members pages from s's standby when it
// may (see Standby) and returns it.
func (r *SegmentRepo) WithStandby(s *Standby) *SegmentRepo {
	r.standby = s
	return r
}

// NewSegmentRepo returns a SegmentRepo on pool that reports the
// memberships a deletion removes to rec.
func NewSegmentRepo(pool *pgxpool.Pool, rec Recorder) *SegmentRepo {
	return &SegmentRepo{pool: pool, rec: rec}
}

// segmentColumns selects a segment with its count of active members
// (segment_member_count: a few index probes, whatever the segment's size;
// migration 14); scanSegment reads them.
var segmentColumns = `
	s.id, s.slug, s.description, s.created_at, segment_member_count(s.id) AS member_count,
	(s.auto_percent * 100)::integer, s.rollout_status, s.rollout_assigned, coalesce(s.rollout_total, 0), s.delete_at,
	coalesce(s.rollout_id, 0), coalesce((SELECT l.slug FROM layers l WHERE l.id = s.layer_id), ''),
	s.auto_percent_schedule, ` + rangesOf("s.layer_buckets")

func scanSegment(row pgx.CollectableRow) (domain.Segment, error) {
	var (
		seg        domain.Segment
		status     *string
		ro         domain.Rollout
		froms, tos []int32
		schedule   []byte
	)
	err := row.Scan(&seg.ID, &seg.Slug, &seg.Description, &seg.CreatedAt, &seg.MemberCount,
		&seg.AutoPercent, &status, &ro.Assigned, &ro.Total, &seg.DeleteAt, &ro.ID, &seg.Layer, &schedule, &froms, &tos)
	if err != nil {
		return seg, err
	}
	seg.Buckets = bucketRanges(froms, tos)
	if seg.Schedule, err = decodeSchedule(schedule); err != nil {
		return seg, err
	}
	if status != nil {
		ro.Status = domain.RolloutStatus(*status)
		seg.Rollout = &ro
	}
	return seg, nil
}

// CreateSegment inserts a segment. It returns domain.ErrConflict if the slug
// is taken.
//
// A percent segment is created pending, under the registry lock held
// exclusively: every user registered so far has committed, and its rollout
// population is exactly the users with seq up to the sequence's last value;
// every user registered later waits for this commit and then sees the
// segment.
func (r *SegmentRepo) CreateSegment(ctx context.Context, ns domain.NewSegment) (domain.Segment, error) {
	var seg domain.Segment
	err := withTx(ctx, r.pool, func(tx pgx.Tx) error {
		if err := setAudit(ctx, tx, ""); err != nil {
			return err
		}
		if ns.AutoPercent != nil {
			const lock = `SELECT pg_advisory_xact_lock($1)`
			if _, err := tx.Exec(ctx, lock, registryLock); err != nil {
				return fmt.Errorf("take the registry lock: %w", dbError(err))
			}
		}
		// A segment of a layer: the layer is locked while its buckets are
		// allocated; a percent one takes the lowest free.
		var (
			layerID *int64
			buckets domain.BucketRanges
		)
		if ns.Layer != "" {
			id, free, err := lockLayer(ctx, tx, ns.Layer)
			if err != nil {
				return err
			}
			layerID = &id
			if ns.AutoPercent != nil {
				if buckets, err = domain.Reshare(nil, free, int(*ns.AutoPercent)); err != nil {
					return err
				}
			}
		}
		froms, tos := bucketArrays(buckets)
		schedule, nextStep := encodeSchedule(ns.Schedule)
		q := `
			INSERT INTO segments AS s (slug, description, auto_percent, rollout_status, population_seq, delete_at, rollout_id,
			                           layer_id, layer_buckets, auto_percent_schedule, next_step_at)
			SELECT $1, $2, $3::numeric / 100, CASE WHEN $3::integer IS NOT NULL THEN 'pending' END,
			       CASE WHEN $3::integer IS NOT NULL THEN coalesce(pg_sequence_last_value('users_seq_seq'), 0) END, $4,
			       CASE WHEN $3::integer IS NOT NULL THEN nextval('segment_rollout_ids') END,
			       $5, CASE WHEN $5::bigint IS NOT NULL AND $3::integer IS NOT NULL THEN ` + multirangeSQL(6) + ` END,
			       $8::jsonb, $9
			RETURNING ` + segmentColumns
		rows, _ := tx.Query(ctx, q, ns.Slug, ns.Description, ns.AutoPercent, ns.DeleteAt, layerID, froms, tos, json.RawMessage(schedule), nextStep)
		var err error
		seg, err = pgx.CollectExactlyOneRow(rows, scanSegment)
		return err
	})
	var de *domain.Error
	var full *domain.LayerFullError
	switch {
	case pgCode(err) == uniqueViolation:
		return domain.Segment{}, domain.Conflictf("segment %q already exists", ns.Slug)
	case errors.As(err, &de), errors.As(err, &full):
		return domain.Segment{}, err
	case err != nil:
		return domain.Segment{}, fmt.Errorf("insert segment %s: %w", ns.Slug, dbError(err))
	}
	return seg, nil
}

// Segment returns the segment named slug, or domain.ErrNotFound.
func (r *SegmentRepo) Segment(ctx context.Context, slug string) (domain.Segment, error) {
	return readAgain(ctx, r.pool, func() (domain.Segment, error) { return r.segment(ctx, slug) })
}

func (r *SegmentRepo) segment(ctx context.Context, slug string) (domain.Segment, error) {
	q := `SELECT ` + segmentColumns + ` FROM segments s WHERE s.slug = $1`
	rows, _ := on(ctx, r.pool).Query(ctx, q, slug)
	seg, err := pgx.CollectExactlyOneRow(rows, scanSegment)
	if errors.Is(err, pgx.ErrNoRows) {
		return domain.Segment{}, domain.NotFoundf("segment %q does not exist", slug)
	}
	if err != nil {
		return domain.Segment{}, fmt.Errorf("select segment %s: %w", slug, dbError(err))
	}
	return seg, nil
}

// Segments returns up to limit segments whose slugs sort after after, in
// byte order of slug.
func (r *SegmentRepo) Segments(ctx context.Context, after string, limit int) ([]domain.Segment, error) {
	return readAgain(ctx, r.pool, func() ([]domain.Segment, error) { return r.segments(ctx, after, limit) })
}

func (r *SegmentRepo) segments(ctx context.Context, after string, limit int) ([]domain.Segment, error) {
	q := `SELECT ` + segmentColumns + `
		FROM segments s
		WHERE s.slug > $1
		ORDER BY s.slug
		LIMIT $2`
	rows, _ := on(ctx, r.pool).Query(ctx, q, after, limit)
	segs, err := pgx.CollectRows(rows, scanSegment)
	if err != nil {
		return nil, fmt.Errorf("list segments after %q: %w", after, dbError(err))
	}
	return segs, nil
}

// DeleteSegment deletes the segment named slug and every membership in it,
// or returns domain.ErrNotFound. Memberships that had expired are removed
// first (history reason ttl), the rest as segment_deleted. The segment's
// row is locked first, so a concurrent change that adds it to a user
// either completes before the delete or finds the slug unknown.
func (r *SegmentRepo) DeleteSegment(ctx context.Context, slug string) error {
	const lock = `SELECT id FROM segments WHERE slug = $1 FOR UPDATE`
	found, err := r.deleteSegment(ctx, slug, lock, slug)
	if err == nil && !found {
		return domain.NotFoundf("segment %q does not exist", slug)
	}
	return err
}

// DeleteSegmentIfDue deletes the segment as DeleteSegment does if it is
// still scheduled for deletion at d.DeleteAt and that time has passed on
// the database's clock. It reports whether it deleted it, and the
// database's time.
func (r *SegmentRepo) DeleteSegmentIfDue(ctx context.Context, d domain.ScheduledDeletion) (bool, time.Time, error) {
	const lock = `SELECT id FROM segments WHERE id = $1 AND delete_at = $2 AND delete_at <= now() FOR UPDATE`
	deleted, err := r.deleteSegment(ctx, d.Slug, lock, d.SegmentID, d.DeleteAt)
	if err != nil || deleted {
		return deleted, time.Time{}, err
	}
	var now time.Time
	if err := on(ctx, r.pool).QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
		return false, time.Time{}, fmt.Errorf("read the time: %w", dbError(err))
	}
	return false, now, nil
}

// DueDeletions returns up to limit segments whose deletion is due, the
// earliest first.
func (r *SegmentRepo) DueDeletions(ctx context.Context, limit int) ([]domain.ScheduledDeletion, error) {
	const q = `
		SELECT id, slug, delete_at FROM segments
		WHERE delete_at <= now()
		ORDER BY delete_at, id
		LIMIT $1`
	rows, _ := on(ctx, r.pool).Query(ctx, q, limit)
	due, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (domain.ScheduledDeletion, error) {
		var d domain.ScheduledDeletion
		err := row.Scan(&d.SegmentID, &d.Slug, &d.DeleteAt)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("select due deletions: %w", dbError(err))
	}
	return due, nil
}

// deleteSegment deletes the segment that the locking statement lock
// (with args) selects and locks, with its memberships; it reports whether
// lock found one.
func (r *SegmentRepo) deleteSegment(ctx context.Context, slug, lock string, args ...any) (bool, error) {
	var expired, deleted int64
	found := false
	err := withTx(ctx, r.pool, func(tx pgx.Tx) error {
		var id int64
		err := tx.QueryRow(ctx, lock, args...).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("lock segment %s: %w", slug, dbError(err))
		}
		found = true
		if err := setAudit(ctx, tx, ""); err != nil {
			return err
		}
		// One instant for the whole deletion, so that the members counted as
		// expired are exactly those the trigger records as ttl.
		const begin = `SELECT set_config('segments.reason', $1, true), set_config('segments.now', clock_timestamp()::text, true)`
		if _, err := tx.Exec(ctx, begin, domain.ReasonSegmentDeleted); err != nil {
			return fmt.Errorf("begin deleting %s: %w", slug, dbError(err))
		}
		// Both DELETEs fire memberships_history_delete: history (ttl at
		// the expiry for the expired, segment_deleted for the rest) and the
		// members queued for the read caches.
		const delExpired = `DELETE FROM memberships WHERE segment_id = $1 AND expires_at <= current_setting('segments.now')::timestamptz`
		tag, err := tx.Exec(ctx, delExpired, id)
		if err != nil {
			return fmt.Errorf("delete expired members of %s: %w", slug, dbError(err))
		}
		expired = tag.RowsAffected()
		const delMembers = `DELETE FROM memberships WHERE segment_id = $1`
		if tag, err = tx.Exec(ctx, delMembers, id); err != nil {
			return fmt.Errorf("delete members of %s: %w", slug, dbError(err))
		}
		deleted = tag.RowsAffected()
		// Its unfinished imports end as failed (an import batch holds the
		// segment FOR KEY SHARE: none is half-applied here).
		const failImports = `
			UPDATE imports SET status = 'failed', error = 'the segment was deleted', finished_at = now()
			WHERE segment_id = $1 AND status IN ('pending', 'running')`
		if _, err := tx.Exec(ctx, failImports, id); err != nil {
			return fmt.Errorf("end the imports of %s: %w", slug, dbError(err))
		}
		const delSegment = `DELETE FROM segments WHERE id = $1`
		if _, err := tx.Exec(ctx, delSegment, id); err != nil {
			return fmt.Errorf("delete segment %s: %w", slug, dbError(err))
		}
		return nil
	})
	if err != nil || !found {
		return false, err
	}
	recordAfterCommit(ctx, r.rec, domain.OperationRemove, domain.ReasonTTL, expired)
	recordAfterCommit(ctx, r.rec, domain.OperationRemove, domain.ReasonSegmentDeleted, deleted)
	return true, nil
}

// PatchSegment changes the segment named slug as p says and returns it, or
// domain.ErrNotFound. A new share for a percent segment (p.AutoPercent, not
// its current one) starts a new rollout, pending, over the users
// registered now: it is taken under the registry lock held exclusively, as
// a percent segment's creation is, so that every user registered so far is
// in that population and every later one sees the new share. An
// unfinished rollout is dropped (its batches deleted; the latest change
// wins). With p.Step, the plan's first step is applied if it is the one
// p.Step names and it is due (see domain.SegmentPatch). The caller
// validates p against the segment's kind.
func (r *SegmentRepo) PatchSegment(ctx context.Context, slug string, p domain.SegmentPatch) (domain.Segment, error) {
	var seg domain.Segment
	err := withTx(ctx, r.pool, func(tx pgx.Tx) error {
		if err := setAudit(ctx, tx, ""); err != nil {
			return err
		}
		if p.AutoPercent != nil || p.Step != nil {
			const lock = `SELECT pg_advisory_xact_lock($1)`
			if _, err := tx.Exec(ctx, lock, registryLock); err != nil {
				return fmt.Errorf("take the registry lock: %w", dbError(err))
			}
		}
		// Whether the share changes is decided on the locked row.
		cur, err := lockSegment(ctx, tx, slug)
		if err != nil {
			return err
		}
		if p.Step != nil {
			if p, err = cur.step(p); err != nil {
				return err
			}
		}
		reshare := p.AutoPercent != nil && cur.percent != nil && *cur.percent != int(*p.AutoPercent)
		froms, tos := cur.froms, cur.tos
		// In a layer, a new share takes buckets from the lowest free or
		// gives back its highest, the layer locked meanwhile.
		if reshare && cur.layer != nil {
			_, free, err := lockLayer(ctx, tx, *cur.layer)
			if err != nil {
				return err
			}
			buckets, err := domain.Reshare(bucketRanges(froms, tos), free, int(*p.AutoPercent))
			if err != nil {
				return err
			}
			froms, tos = bucketArrays(buckets)
			set := `UPDATE segments SET layer_buckets = ` + multirangeSQL(2) + ` WHERE id = $1`
			if _, err := tx.Exec(ctx, set, cur.id, froms, tos); err != nil {
				return fmt.Errorf("move the buckets of %s: %w", slug, dbError(err))
			}
		}
		schedule, nextStep := encodeSchedule(p.Schedule)
		update := `
			UPDATE segments AS s
			SET description = coalesce($2, s.description),
			    delete_at = CASE WHEN $4 THEN NULL WHEN $3::timestamptz IS NOT NULL THEN $3 ELSE s.delete_at END,
			    auto_percent = CASE WHEN $6 THEN $5::numeric / 100 ELSE s.auto_percent END,
			    population_seq = CASE WHEN $6 THEN coalesce(pg_sequence_last_value('users_seq_seq'), 0) ELSE s.population_seq END,
			    rollout_status = CASE WHEN $6 THEN 'pending' ELSE s.rollout_status END,
			    rollout_id = CASE WHEN $6 THEN nextval('segment_rollout_ids') ELSE s.rollout_id END,
			    rollout_total = CASE WHEN $6 THEN NULL ELSE s.rollout_total END,
			    rollout_assigned = CASE WHEN $6 THEN 0 ELSE s.rollout_assigned END,
			    rollout_threshold_hash = CASE WHEN $6 THEN NULL ELSE s.rollout_threshold_hash END,
			    rollout_threshold_user = CASE WHEN $6 THEN NULL ELSE s.rollout_threshold_user END,
			    auto_percent_schedule = CASE WHEN $7 THEN $8::jsonb ELSE s.auto_percent_schedule END,
			    next_step_at = CASE WHEN $7 THEN $9 ELSE s.next_step_at END
			WHERE s.id = $1
			RETURNING ` + segmentColumns
		rows, _ := tx.Query(ctx, update, cur.id, p.Description, p.DeleteAt, p.CancelDeletion, p.AutoPercent, reshare,
			p.SetSchedule, json.RawMessage(schedule), nextStep)
		if seg, err = pgx.CollectExactlyOneRow(rows, scanSegment); err != nil {
			return fmt.Errorf("update segment %s: %w", slug, dbError(err))
		}
		if reshare {
			const drop = `DELETE FROM rollout_batches WHERE segment_id = $1`
			if _, err := tx.Exec(ctx, drop, cur.id); err != nil {
				return fmt.Errorf("drop the unfinished rollout of %s: %w", slug, dbError(err))
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, domain.ErrNotFound) {
		return domain.Segment{}, err
	}
	return seg, err
}

// lockedSegment is what a change of a segment reads of its locked row.
type lockedSegment struct {
	id         int64
	percent    *int // hundredths; nil for a manual segment
	layer      *string
	froms, tos []int32
	schedule   []domain.ScheduleStep
	nextStep   *time.Time
	now        time.Time // the database's
}

// lockSegment locks the segment named slug for a change (FOR NO KEY
// UPDATE: memberships may still reference it) and reads it, or returns
// domain.ErrNotFound.
func lockSegment(ctx context.Context, tx pgx.Tx, slug string) (lockedSegment, error) {
	q := `SELECT id, (auto_percent * 100)::integer, (SELECT l.slug FROM layers l WHERE l.id = s.layer_id), ` +
		rangesOf("s.layer_buckets") + `, auto_percent_schedule, next_step_at, now()
		FROM segments s WHERE slug = $1 FOR NO KEY UPDATE`
	var (
		cur      lockedSegment
		schedule []byte
	)
	err := tx.QueryRow(ctx, q, slug).Scan(&cur.id, &cur.percent, &cur.layer, &cur.froms, &cur.tos, &schedule, &cur.nextStep, &cur.now)
	if errors.Is(err, pgx.ErrNoRows) {
		return cur, domain.NotFoundf("segment %q does not exist", slug)
	}
	if err != nil {
		return cur, fmt.Errorf("lock segment %s: %w", slug, dbError(err))
	}
	if cur.schedule, err = decodeSchedule(schedule); err != nil {
		return cur, err
	}
	return cur, nil
}

// step turns p, a request to apply the step p.Step, into the change the
// step makes: its share, and the plan without it. It returns a
// *domain.StepNotDueError if the plan's first step is not that one or its
// time has not come.
func (cur lockedSegment) step(p domain.SegmentPatch) (domain.SegmentPatch, error) {
	st := p.Step
	if cur.id != st.SegmentID || cur.nextStep == nil || !cur.nextStep.Equal(st.At) || len(cur.schedule) == 0 {
		return p, &domain.StepNotDueError{} // replaced, applied or deleted since
	}
	if cur.now.Before(st.At) {
		return p, &domain.StepNotDueError{Wait: st.At.Sub(cur.now)}
	}
	p.AutoPercent = &cur.schedule[0].AutoPercent
	p.SetSchedule, p.Schedule = true, cur.schedule[1:]
	return p, nil
}

// SkipStep takes the step st out of its segment's plan without applying
// it, recorded in the audit log with the problem that stopped it. It
// returns a *domain.StepNotDueError if the plan's first step is not that
// one (it was replaced or applied meanwhile), and the segment's plan as it
// is left.
func (r *SegmentRepo) SkipStep(ctx context.Context, st domain.ScheduledStep, problem string) (domain.Segment, error) {
	var seg domain.Segment
	err := withTx(ctx, r.pool, func(tx pgx.Tx) error {
		if err := setAudit(ctx, tx, problem); err != nil {
			return err
		}
		cur, err := lockSegment(ctx, tx, st.Slug)
		if err != nil {
			return err
		}
		p, err := cur.step(domain.SegmentPatch{Step: &st})
		if err != nil {
			return err
		}
		schedule, nextStep := encodeSchedule(p.Schedule)
		q := `UPDATE segments s SET auto_percent_schedule = $2::jsonb, next_step_at = $3 WHERE id = $1 RETURNING ` + segmentColumns
		rows, _ := tx.Query(ctx, q, cur.id, json.RawMessage(schedule), nextStep)
		if seg, err = pgx.CollectExactlyOneRow(rows, scanSegment); err != nil {
			return fmt.Errorf("skip a step of %s: %w", st.Slug, dbError(err))
		}
		return nil
	})
	return seg, err
}

// DueSteps returns up to limit steps of percent schedules that are due,
// the earliest first.
func (r *SegmentRepo) DueSteps(ctx context.Context, limit int) ([]domain.ScheduledStep, error) {
	const q = `
		SELECT id, slug, next_step_at FROM segments
		WHERE next_step_at <= now()
		ORDER BY next_step_at, id
		LIMIT $1`
	rows, _ := on(ctx, r.pool).Query(ctx, q, limit)
	due, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (domain.ScheduledStep, error) {
		var st domain.ScheduledStep
		err := row.Scan(&st.SegmentID, &st.Slug, &st.At)
		return st, err
	})
	if err != nil {
		return nil, fmt.Errorf("select due steps: %w", dbError(err))
	}
	return due, nil
}

// Stats reads figures about all segments: one small scan of segments.
func (r *SegmentRepo) Stats(ctx context.Context) (domain.SegmentStats, error) {
	const q = `
		SELECT rollout_status, count(*),
		       coalesce(sum(rollout_total - rollout_assigned) FILTER (WHERE rollout_status = 'running'), 0)
		FROM segments
		GROUP BY 1`
	s := domain.SegmentStats{Rollouts: map[domain.RolloutStatus]int64{}}
	rows, err := on(ctx, r.pool).Query(ctx, q)
	if err != nil {
		return s, fmt.Errorf("segment stats: %w", dbError(err))
	}
	defer rows.Close()
	for rows.Next() {
		var (
			status   *domain.RolloutStatus // nil for manual segments
			n, users int64
		)
		if err := rows.Scan(&status, &n, &users); err != nil {
			return s, fmt.Errorf("segment stats: %w", dbError(err))
		}
		s.Segments += n
		s.RolloutUsersLeft += users
		if status != nil {
			s.Rollouts[*status] = n
		}
	}
	if err := rows.Err(); err != nil {
		return s, fmt.Errorf("segment stats: %w", dbError(err))
	}
	const layers = `
		SELECT l.slug, coalesce(sum((SELECT sum(upper(r) - lower(r)) FROM unnest(s.layer_buckets) AS r)), 0)
		FROM layers l LEFT JOIN segments s ON s.layer_id = l.id
		GROUP BY l.slug`
	rows, _ = on(ctx, r.pool).Query(ctx, layers)
	s.LayerBuckets = map[string]int64{}
	var (
		slug string
		used int64
	)
	_, err = pgx.ForEachRow(rows, []any{&slug, &used}, func() error { s.LayerBuckets[slug] = used; return nil })
	if err != nil {
		return s, fmt.Errorf("layer stats: %w", dbError(err))
	}
	// Imports are few (analysts upload them): a count every 5 s.
	rows, _ = on(ctx, r.pool).Query(ctx, `SELECT status, count(*) FROM imports GROUP BY status`)
	s.Imports = map[domain.ImportStatus]int64{}
	var (
		status domain.ImportStatus
		n      int64
	)
	_, err = pgx.ForEachRow(rows, []any{&status, &n}, func() error { s.Imports[status] = n; return nil })
	if err != nil {
		return s, fmt.Errorf("import stats: %w", dbError(err))
	}
	return s, nil
}
