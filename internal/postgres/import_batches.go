package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/segments-service/segments/internal/domain"
)

// Import returns the import with id id, or domain.ErrNotFound.
func (r *ImportRepo) Import(ctx context.Context, id int64) (domain.Import, error) {
	return readAgain(ctx, r.pool, func() (domain.Import, error) {
		imp, err := scanImport(on(ctx, r.pool).QueryRow(ctx, `SELECT `+importColumns+` FROM imports WHERE id = $1`, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return domain.Import{}, domain.NotFoundf("import %d does not exist", id)
		}
		if err != nil {
			return domain.Import{}, fmt.Errorf("select import %d: %w", id, dbError(err))
		}
		return imp, nil
	})
}

// NextImport returns the oldest unfinished import of the segment with id
// segmentID, or nil when there is none.
func (r *ImportRepo) NextImport(ctx context.Context, segmentID int64) (*domain.Import, error) {
	const q = `SELECT ` + importColumns + ` FROM imports WHERE segment_id = $1 AND status IN ('pending', 'running') ORDER BY id LIMIT 1`
	imp, err := scanImport(r.pool.QueryRow(ctx, q, segmentID))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("next import of segment %d: %w", segmentID, dbError(err))
	}
	return &imp, nil
}

// ClaimImports makes the caller the one runner of the imports of segment
// segmentID until release, unless another runner holds them (ok false):
// a session advisory lock (key −2^62 − segmentID, apart from the rollouts'
// −segmentID) on a connection kept until release. A claim dies with its
// runner's connection.
func (r *ImportRepo) ClaimImports(ctx context.Context, segmentID int64) (release func(), ok bool, err error) {
	key := -(int64(1) << 62) - segmentID
	conn, err := r.sessions.Acquire(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("claim the imports of segment %d: %w", segmentID, dbError(err))
	}
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&ok); err != nil || !ok {
		conn.Release()
		if err != nil {
			err = fmt.Errorf("claim the imports of segment %d: %w", segmentID, dbError(err))
		}
		return nil, false, err
	}
	return func() {
		if _, err := conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, key); err != nil {
			// The lock must not outlive the claim on a pooled connection.
			_ = conn.Conn().Close(context.WithoutCancel(ctx))
		}
		conn.Release()
	}, true, nil
}

// UnfinishedImports returns the ids of the pending and running imports,
// oldest first.
func (r *ImportRepo) UnfinishedImports(ctx context.Context) ([]int64, error) {
	const q = `SELECT id FROM imports WHERE status IN ('pending', 'running') ORDER BY id`
	rows, _ := r.pool.Query(ctx, q)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("unfinished imports: %w", dbError(err))
	}
	return ids, nil
}

// ApplyImportBatch applies the next batch of up to batchSize listed users
// of import importID, in one transaction that also records the batch as
// done: a batch is applied exactly once, whoever stops in the middle, and
// two callers on one import take turns (the import's row is locked for
// the batch). It returns the import as it stands after; the import ends
// (done, or failed if its segment is gone) in the call that finds no
// batch left.
//
// Each listed user's change is atomic and is what a change would do:
// add and replace register unknown users (with their percent segments),
// remove the users' expired memberships (ttl at their expiry), clear an
// opt-out, give the segment (source manual, history reason import) with
// the import's expiry, or change a held membership's expiry; a user who
// holds another segment of the segment's layer is skipped and counted.
// remove takes the segment from the listed users who hold it (an explicit
// removal: a percent segment's opt-out). replace also removes, in the same
// batches, the members between the listed ids who are not listed.
func (r *ImportRepo) ApplyImportBatch(ctx context.Context, importID int64, batchSize int) (domain.ImportStep, error) {
	var (
		step                               domain.ImportStep
		added, removed, expired, conflicts int64
		granted, inserted                  int64
	)
	imp := &step.Import
	err := withTx(ctx, r.pool, func(tx pgx.Tx) error {
		var cursor int64
		row := tx.QueryRow(ctx, `SELECT `+importColumns+`, cursor FROM imports WHERE id = $1 FOR UPDATE`, importID)
		err := row.Scan(&imp.ID, &imp.SegmentID, &imp.Segment, &imp.Mode, &imp.ExpiresAt, &imp.Status, &imp.Listed, &imp.Received, &imp.Processed,
			&imp.Added, &imp.Removed, &imp.Unchanged, &imp.Conflicts, &imp.ConflictIDs, &imp.Error, &imp.CreatedAt, &imp.FinishedAt, &cursor)
		if errors.Is(err, pgx.ErrNoRows) {
			return domain.NotFoundf("import %d does not exist", importID)
		}
		if err != nil {
			return fmt.Errorf("lock import: %w", err)
		}
		if imp.Status == domain.ImportDone || imp.Status == domain.ImportFailed {
			return nil
		}
		if imp.SegmentID == 0 {
			step.Ended = true
			return r.finish(ctx, tx, imp, domain.ImportFailed, "the segment was deleted")
		}
		// The segment, locked against deletion for the batch.
		const segment = `SELECT layer_id, auto_percent IS NOT NULL FROM segments WHERE id = $1 FOR KEY SHARE`
		var (
			layerID *int64
			percent bool
		)
		err = tx.QueryRow(ctx, segment, imp.SegmentID).Scan(&layerID, &percent)
		if errors.Is(err, pgx.ErrNoRows) {
			step.Ended = true
			return r.finish(ctx, tx, imp, domain.ImportFailed, "the segment was deleted")
		}
		if err != nil {
			return fmt.Errorf("lock segment: %w", err)
		}

		if imp.Received == nil {
			return errImportUnsorted
		}
		ids, hi, err := nextBatch(ctx, tx, imp, cursor, batchSize)
		if err != nil {
			return err
		}
		if hi == 0 {
			step.Ended = true
			return r.finish(ctx, tx, imp, domain.ImportDone, "")
		}
		if imp.Status == domain.ImportPending {
			imp.Status = domain.ImportRunning
		}

		b := &pgx.Batch{}
		if imp.Mode != domain.ImportRemove && len(ids) > 0 {
			queueRegistration(b, ids, func(_, g int64) { granted = g })
		}
		b.Queue(`SELECT set_config('segments.reason', 'import', true), set_config('segments.now', clock_timestamp()::text, true)`)
		// Every write for a user first removes its expired memberships.
		b.Queue(`
			WITH gone AS (
				DELETE FROM memberships
				WHERE user_id = ANY ($1::bigint[]) AND expires_at <= current_setting('segments.now')::timestamptz
				RETURNING 1
			) SELECT count(*) FROM gone`, ids).QueryRow(func(row pgx.Row) error { return row.Scan(&expired) })
		switch imp.Mode {
		case domain.ImportAdd, domain.ImportReplace:
			// Users who hold another segment of the layer are skipped; an
			// opt-out of a percent segment is cleared. Outside layers and
			// on a manual segment those parts are left out: the insert is
			// most of a batch's time.
			skipped := `SELECT NULL::bigint AS user_id WHERE false`
			if layerID != nil {
				skipped = `SELECT DISTINCT m.user_id FROM memberships m
				           WHERE m.layer_id = $2 AND m.segment_id <> $3 AND m.user_id = ANY ($1::bigint[])`
			}
			cleared := ""
			if percent {
				cleared = `cleared AS (DELETE FROM segment_opt_outs WHERE segment_id = $3 AND user_id = ANY ($1::bigint[])),`
			}
			b.Queue(`
				WITH skipped AS (`+skipped+`), `+cleared+`
				given AS (
					INSERT INTO memberships AS m (user_id, segment_id, layer_id, source, added_at, expires_at)
					SELECT u, $3, $2, 'manual', current_setting('segments.now')::timestamptz, $4
					FROM unnest($1::bigint[]) AS u
					WHERE NOT EXISTS (SELECT FROM skipped WHERE skipped.user_id = u)
					ON CONFLICT (user_id, segment_id) DO UPDATE SET expires_at = EXCLUDED.expires_at
					 WHERE m.expires_at IS DISTINCT FROM EXCLUDED.expires_at
					RETURNING xmax = 0 AS inserted
				)
				SELECT (SELECT count(*) FROM given), (SELECT count(*) FILTER (WHERE inserted) FROM given),
				       coalesce((SELECT array_agg(user_id ORDER BY user_id) FROM skipped), '{}')`,
				ids, layerID, imp.SegmentID, imp.ExpiresAt).QueryRow(func(row pgx.Row) error {
				var skipped []int64
				if err := row.Scan(&added, &inserted, &skipped); err != nil {
					return err
				}
				conflicts = int64(len(skipped))
				imp.ConflictIDs = append(imp.ConflictIDs, skipped[:min(len(skipped), domain.MaxImportConflictIDs-len(imp.ConflictIDs))]...)
				return nil
			})
		}
		switch imp.Mode {
		case domain.ImportRemove:
			// An explicit removal: a percent segment's opt-out.
			b.Queue(`
				WITH taken AS (
					DELETE FROM memberships WHERE segment_id = $2 AND user_id = ANY ($1::bigint[])
					RETURNING user_id
				), opted_out AS (
					INSERT INTO segment_opt_outs (segment_id, user_id)
					SELECT $2, user_id FROM taken WHERE $3 ON CONFLICT DO NOTHING
				)
				SELECT count(*) FROM taken`, ids, imp.SegmentID, percent).QueryRow(func(row pgx.Row) error { return row.Scan(&removed) })
		case domain.ImportReplace:
			// The members in the batch's range who are not listed.
			b.Queue(`
				WITH taken AS (
					DELETE FROM memberships m
					WHERE m.segment_id = $2 AND m.user_id > $3 AND m.user_id <= $4 AND NOT (m.user_id = ANY ($1::bigint[]))
					RETURNING coalesce(m.expires_at > current_setting('segments.now')::timestamptz, true) AS active
				)
				SELECT count(*) FILTER (WHERE active) FROM taken`, ids, imp.SegmentID, cursor, hi).QueryRow(func(row pgx.Row) error { return row.Scan(&removed) })
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("apply users %d..%d: %w", cursor+1, hi, err)
		}
		n := int64(len(ids))
		step.Applied = n
		imp.Processed += n
		imp.Added += added
		imp.Removed += removed
		imp.Conflicts += conflicts
		switch imp.Mode {
		case domain.ImportRemove:
			// A listed user who held it lost it; the rest were unchanged.
			imp.Unchanged += n - removed
		default:
			imp.Unchanged += n - added - conflicts
		}
		const progress = `
			UPDATE imports SET status = $2, processed = $3, added = $4, removed = $5, unchanged = $6, conflicts = $7,
			       conflict_ids = $8, cursor = $9
			WHERE id = $1`
		_, err = tx.Exec(ctx, progress, importID, imp.Status, imp.Processed, imp.Added, imp.Removed, imp.Unchanged,
			imp.Conflicts, imp.ConflictIDs, hi)
		return err
	})
	var de *domain.Error
	if errors.As(err, &de) {
		return domain.ImportStep{}, err
	}
	if err != nil {
		return domain.ImportStep{}, fmt.Errorf("import %d: %w", importID, dbError(err))
	}
	r.rec.MembershipsChanged(domain.OperationAdd, domain.ReasonAuto, granted)
	r.rec.MembershipsChanged(domain.OperationRemove, domain.ReasonTTL, expired)
	r.rec.MembershipsChanged(domain.OperationAdd, domain.ReasonImport, inserted)
	r.rec.MembershipsChanged(domain.OperationRemove, domain.ReasonImport, removed)
	return step, nil
}

// nextBatch returns the batch after cursor: the next batchSize listed ids,
// and for replace the segment's next batchSize members with them, up to
// hi, the batchSize-th of both together (or the last); hi is 0 when
// nothing is left. The listed ids past the cursor are in the one or two
// chunks that end past it (a chunk holds importChunk ids, no fewer than a
// batch).
func nextBatch(ctx context.Context, tx pgx.Tx, imp *domain.Import, cursor int64, batchSize int) (ids []int64, hi int64, err error) {
	const chunks = `SELECT ids FROM import_chunks WHERE import_id = $1 AND last_id > $2 ORDER BY last_id LIMIT 2`
	rows, _ := tx.Query(ctx, chunks, imp.ID, cursor)
	var chunk []int64
	_, err = pgx.ForEachRow(rows, []any{&chunk}, func() error {
		for _, id := range chunk {
			if id > cursor && len(ids) < batchSize {
				ids = append(ids, id)
			}
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("read the batch: %w", err)
	}
	next := ids
	if imp.Mode == domain.ImportReplace {
		const members = `SELECT user_id FROM memberships WHERE segment_id = $1 AND user_id > $2 ORDER BY user_id LIMIT $3`
		rows, _ := tx.Query(ctx, members, imp.SegmentID, cursor, batchSize)
		held, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return nil, 0, fmt.Errorf("read the members: %w", err)
		}
		next = slices.Compact(slices.Sorted(slices.Values(append(slices.Clip(ids), held...))))
	}
	if len(next) == 0 {
		return nil, 0, nil
	}
	hi = next[min(len(next), batchSize)-1]
	end, _ := slices.BinarySearch(ids, hi+1)
	// Never nil: a nil slice is sent as NULL, and x = ANY (NULL) is never
	// false.
	return append([]int64{}, ids[:end]...), hi, nil
}

// errImportUnsorted says a batch was asked of an import whose list is not
// sorted yet (SortImport first).
var errImportUnsorted = errors.New("the import's list is not sorted yet")

// finish ends imp as status (with why, for a failure).
func (r *ImportRepo) finish(ctx context.Context, tx pgx.Tx, imp *domain.Import, status domain.ImportStatus, why string) error {
	const q = `UPDATE imports SET status = $2, error = nullif($3, ''), finished_at = now() WHERE id = $1 RETURNING finished_at`
	imp.Status, imp.Error = status, why
	var at time.Time
	if err := tx.QueryRow(ctx, q, imp.ID, status, why).Scan(&at); err != nil {
		return fmt.Errorf("finish import: %w", err)
	}
	imp.FinishedAt = &at
	return nil
}
