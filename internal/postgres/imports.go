package postgres

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/domain"
)

// ImportRepo stores imports and applies them.
type ImportRepo struct {
	pool *pgxpool.Pool
	rec  Recorder
	// uploadTimeout bounds the statements of an upload (a list of 10
	// million ids streams into one COPY).
	uploadTimeout time.Duration
}

// NewImportRepo returns an ImportRepo on pool that reports the memberships
// imports change to rec; an upload's statements may run for up to
// uploadTimeout.
func NewImportRepo(pool *pgxpool.Pool, rec Recorder, uploadTimeout time.Duration) *ImportRepo {
	return &ImportRepo{pool: pool, rec: rec, uploadTimeout: uploadTimeout}
}

// importColumns selects an import; scanImport reads it.
const importColumns = `id, coalesce(segment_id, 0), segment_slug, mode, expires_at, status, listed, received, processed,
	added, removed, unchanged, conflicts, conflict_ids, coalesce(error, ''), created_at, finished_at`

func scanImport(row pgx.Row) (domain.Import, error) {
	var imp domain.Import
	err := row.Scan(&imp.ID, &imp.SegmentID, &imp.Segment, &imp.Mode, &imp.ExpiresAt, &imp.Status, &imp.Listed, &imp.Received, &imp.Processed,
		&imp.Added, &imp.Removed, &imp.Unchanged, &imp.Conflicts, &imp.ConflictIDs, &imp.Error, &imp.CreatedAt, &imp.FinishedAt)
	return imp, err
}

// importChunk is how many ids one row of import_uploads or import_chunks
// holds; a batch applies at most that many listed ids (it reads the one or
// two chunks past its cursor).
const importChunk = 10_000

// MaxImportBatch bounds the listed users one batch applies.
const MaxImportBatch = importChunk

// CreateImport stores an import of list into the segment ni names, pending,
// in one transaction: the list is read line by line as it arrives and
// streamed into PostgreSQL (COPY, 10,000 ids a row, in the order listed).
// Memory does not grow with the list. A list with bad lines is refused
// whole (a *domain.ImportListError with the first 100); nothing is kept.
// It returns domain.ErrNotFound if there is no such segment,
// domain.ErrInvalid for replace on a percent segment. The distinct ids are
// counted when the worker sorts them (SortImport).
func (r *ImportRepo) CreateImport(ctx context.Context, ni domain.NewImport, list io.Reader) (domain.Import, error) {
	var imp domain.Import
	err := withTx(ctx, r.pool, func(tx pgx.Tx) error {
		const segment = `SELECT id, auto_percent IS NOT NULL FROM segments WHERE slug = $1 FOR KEY SHARE`
		var (
			segmentID int64
			percent   bool
		)
		err := tx.QueryRow(ctx, segment, ni.Segment).Scan(&segmentID, &percent)
		if errors.Is(err, pgx.ErrNoRows) {
			return domain.NotFoundf("segment %q does not exist", ni.Segment)
		}
		if err != nil {
			return fmt.Errorf("find segment %s: %w", ni.Segment, err)
		}
		if percent && ni.Mode == domain.ImportReplace {
			return domain.Invalid("replace would take a percent segment from the users its rule gives it to; add and remove lists instead",
				domain.FieldError{Field: "/mode", Message: "replace is not allowed on a percent segment"})
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL statement_timeout = %d", r.uploadTimeout.Milliseconds())); err != nil {
			return fmt.Errorf("set upload timeout: %w", err)
		}
		const create = `
			INSERT INTO imports (segment_id, segment_slug, mode, expires_at, listed)
			VALUES ($1, $2, $3, $4, 0)
			RETURNING id`
		if err := tx.QueryRow(ctx, create, segmentID, ni.Segment, ni.Mode, ni.ExpiresAt).Scan(&imp.ID); err != nil {
			return fmt.Errorf("insert import: %w", err)
		}
		src := &importLines{r: bufio.NewReaderSize(list, 64<<10), importID: imp.ID, chunk: make([]int64, 0, importChunk)}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"import_uploads"}, []string{"import_id", "seq", "ids"}, src); err != nil {
			if src.err != nil {
				return src.err
			}
			return fmt.Errorf("copy the list: %w", err)
		}
		if src.err != nil {
			return src.err
		}
		if len(src.bad) > 0 {
			return &domain.ImportListError{Lines: src.bad, More: src.more}
		}
		imp, err = scanImport(tx.QueryRow(ctx, `UPDATE imports SET listed = $2 WHERE id = $1 RETURNING `+importColumns, imp.ID, src.ids))
		if err != nil {
			return fmt.Errorf("count the list: %w", err)
		}
		return nil
	})
	var de *domain.Error
	var le *domain.ImportListError
	if errors.As(err, &de) || errors.As(err, &le) {
		return domain.Import{}, err
	}
	if err != nil {
		return domain.Import{}, fmt.Errorf("create import into %s: %w", ni.Segment, dbError(err))
	}
	return imp, nil
}

// importLines is a pgx.CopyFromSource over an uploaded list: one user id
// per line (decimal, 1 to 2^63−1), an optional first line "user_id",
// blank lines skipped, "\r\n" accepted, spaces and tabs around an id
// ignored. It yields a row of up to importChunk ids at a time. Bad lines
// are collected (up to domain.MaxImportLineErrors, then reading stops) and
// nothing more is sent to the database after the first.
type importLines struct {
	r        *bufio.Reader
	importID int64
	line     int64
	// ids counts the ids read; seq numbers the rows.
	ids   int64
	seq   int32
	chunk []int64
	bad   []domain.ImportLineError
	more  bool
	// err is a failure to read the list (not a bad line).
	err error
}

// Next reads lines until a chunk is full or the list ends.
func (s *importLines) Next() bool {
	s.chunk = s.chunk[:0]
	for len(s.chunk) < importChunk && s.readLine() {
	}
	if len(s.chunk) == 0 || len(s.bad) > 0 || s.err != nil {
		return false
	}
	s.seq++
	return true
}

// readLine reads one line, adding its id to the chunk; it reports whether
// to read on.
func (s *importLines) readLine() bool {
	raw, err := s.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		// A line longer than the buffer: no id is that long.
		s.line++
		s.fail(string(raw), "is too long to be a user id")
		for errors.Is(err, bufio.ErrBufferFull) {
			_, err = s.r.ReadSlice('\n')
		}
		return !s.more && err == nil
	}
	if len(raw) == 0 && err != nil {
		if !errors.Is(err, io.EOF) {
			s.err = fmt.Errorf("read the list: %w", err)
		}
		return false
	}
	s.line++
	v := bytes.Trim(raw, " \t\r\n")
	switch {
	case len(v) == 0:
	case s.line == 1 && string(v) == "user_id":
	default:
		id, perr := strconv.ParseInt(string(v), 10, 64)
		switch {
		case perr != nil || v[0] == '+' || v[0] == '-':
			s.fail(string(v), "is not a user id (a whole number from 1 to 9223372036854775807)")
		case id < 1:
			s.fail(string(v), "is not a user id: ids start at 1")
		case s.ids == domain.MaxImportIDs:
			s.fail(string(v), fmt.Sprintf("is past the %d ids a list may hold", domain.MaxImportIDs))
		default:
			s.ids++
			if len(s.bad) == 0 {
				s.chunk = append(s.chunk, id)
			}
		}
	}
	if err != nil { // the last line had no newline
		if !errors.Is(err, io.EOF) {
			s.err = fmt.Errorf("read the list: %w", err)
		}
		return false
	}
	return !s.more
}

// fail records a bad line; its value is cut to its first 40 bytes.
func (s *importLines) fail(value, detail string) {
	if len(s.bad) == domain.MaxImportLineErrors {
		s.more = true
		return
	}
	if len(value) > 40 {
		value = strings.ToValidUTF8(value[:40], "") + "…"
	}
	s.bad = append(s.bad, domain.ImportLineError{Line: s.line, Value: value, Detail: detail})
}

// Values returns the current chunk's row.
func (s *importLines) Values() ([]any, error) { return []any{s.importID, s.seq, s.chunk}, nil }

// Err reports nothing: bad lines are not a COPY failure.
func (s *importLines) Err() error { return nil }

// SortImport turns an uploaded list into its distinct ids in order
// (import_chunks) and counts them (received), once: in one transaction
// that holds the import, reads the uploaded rows, sorts and dedupes them
// in memory (8 bytes an id: 80 MB for the largest list, for the moment of
// the sort), writes the chunks and deletes the upload. An import sorted
// already is left as it is.
func (r *ImportRepo) SortImport(ctx context.Context, importID int64) error {
	err := withTx(ctx, r.pool, func(tx pgx.Tx) error {
		var (
			listed   int64
			received *int64
		)
		err := tx.QueryRow(ctx, `SELECT listed, received FROM imports WHERE id = $1 FOR UPDATE`, importID).Scan(&listed, &received)
		if errors.Is(err, pgx.ErrNoRows) {
			return domain.NotFoundf("import %d does not exist", importID)
		}
		if err != nil {
			return fmt.Errorf("lock import: %w", err)
		}
		if received != nil {
			return nil
		}
		ids := make([]int64, 0, listed)
		rows, _ := tx.Query(ctx, `SELECT ids FROM import_uploads WHERE import_id = $1`, importID)
		var chunk []int64
		_, err = pgx.ForEachRow(rows, []any{&chunk}, func() error { ids = append(ids, chunk...); return nil })
		if err != nil {
			return fmt.Errorf("read the list: %w", err)
		}
		slices.Sort(ids)
		ids = slices.Compact(ids)
		n := 0
		_, err = tx.CopyFrom(ctx, pgx.Identifier{"import_chunks"}, []string{"import_id", "last_id", "ids"},
			pgx.CopyFromFunc(func() ([]any, error) {
				if n == len(ids) {
					return nil, nil
				}
				c := ids[n:min(n+importChunk, len(ids))]
				n += len(c)
				return []any{importID, c[len(c)-1], c}, nil
			}))
		if err != nil {
			return fmt.Errorf("store the sorted list: %w", err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM import_uploads WHERE import_id = $1`, importID); err != nil {
			return fmt.Errorf("delete the upload: %w", err)
		}
		_, err = tx.Exec(ctx, `UPDATE imports SET received = $2 WHERE id = $1`, importID, len(ids))
		return err
	})
	var de *domain.Error
	if errors.As(err, &de) {
		return err
	}
	if err != nil {
		return fmt.Errorf("sort import %d: %w", importID, dbError(err))
	}
	return nil
}

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
	conn, err := r.pool.Acquire(ctx)
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
