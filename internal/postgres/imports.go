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
	// sessions holds the claims' connections (see RolloutRepo).
	sessions *pgxpool.Pool
	rec      Recorder
	// uploadTimeout bounds the statements of an upload (a list of 10
	// million ids streams into one COPY).
	uploadTimeout time.Duration
}

// NewImportRepo returns an ImportRepo on pool that reports the memberships
// imports change to rec; an upload's statements may run for up to
// uploadTimeout.
func NewImportRepo(pool *pgxpool.Pool, rec Recorder, uploadTimeout time.Duration) *ImportRepo {
	return &ImportRepo{pool: pool, sessions: pool, rec: rec, uploadTimeout: uploadTimeout}
}

// WithSessions makes the repo take its claims on sessions (a pool of
// direct connections) and returns it.
func (r *ImportRepo) WithSessions(sessions *pgxpool.Pool) *ImportRepo {
	r.sessions = sessions
	return r
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
			INSERT INTO imports (segment_id, segment_slug, mode, expires_at, listed, actor, request_id)
			VALUES ($1, $2, $3, $4, 0, nullif($5, ''), nullif($6, ''))
			RETURNING id`
		// Its start and its end are recorded in the audit log under the
		// uploader's name (migration 18).
		who := domain.ActorFrom(ctx)
		if err := tx.QueryRow(ctx, create, segmentID, ni.Segment, ni.Mode, ni.ExpiresAt, who.Name, who.RequestID).Scan(&imp.ID); err != nil {
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
