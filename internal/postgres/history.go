package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/domain"
)

// HistoryRepo reads membership history and exports it.
type HistoryRepo struct {
	pool *pgxpool.Pool
	// export configures the connection each CSV export opens for itself;
	// standbyExport the same on the standby, when there is one.
	export, standbyExport *pgx.ConnConfig
	standby               *Standby
	// copyTimeout bounds one CSV export on the server.
	copyTimeout time.Duration
}

// NewHistoryRepo returns a HistoryRepo on pool; one CSV export may run for
// up to copyTimeout, on a connection of its own (made as pool makes
// them), so that no number of downloads takes the pool's connections
// from the requests that need them.
func NewHistoryRepo(pool *pgxpool.Pool, copyTimeout time.Duration) *HistoryRepo {
	export := pool.Config().ConnConfig.Copy()
	export.RuntimeParams["application_name"] = ExportName
	return &HistoryRepo{pool: pool, export: export, copyTimeout: copyTimeout}
}

// CopyHistoryCSV streams q's history as CSV to w with COPY … TO STDOUT:
// PostgreSQL formats the rows and quotes per RFC 4180, pgx hands each chunk
// to w as it arrives. COPY takes no bind parameters, so the period's bounds
// and the user id, all typed values of ours, are written into the statement.
func (r *HistoryRepo) CopyHistoryCSV(ctx context.Context, q domain.HistoryQuery, w io.Writer) error {
	const query = `COPY (
		SELECT user_id, slug AS segment, operation,
		       to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS datetime,
		       reason
		FROM membership_history
		WHERE at >= '%s' AND at < '%s'%s
		ORDER BY at, id
	) TO STDOUT WITH (FORMAT csv, HEADER true, DELIMITER ';')`
	user := ""
	if q.UserID != 0 {
		user = fmt.Sprintf(" AND user_id = %d", q.UserID)
	}
	sql := fmt.Sprintf(query, q.Period.Start().Format(time.RFC3339), q.Period.End().Format(time.RFC3339), user)

	return r.exportTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Conn().PgConn().CopyTo(ctx, w, sql); err != nil {
			return fmt.Errorf("export history of %s (user %d): %w", q.Period, q.UserID, dbError(err))
		}
		return nil
	})
}

// CopyMembersCSV streams the active members of segment segmentID as CSV
// to w with COPY … TO STDOUT, in user id order (from the (segment_id,
// user_id) index), times as the history CSV writes them, a permanent
// membership's expires_at empty. The segment's existence and its members
// are read in one snapshot (the export's transaction is repeatable read),
// so a segment deleted while its members stream still lists them as they
// were; a segment that is gone gives domain.ErrNotFound.
func (r *HistoryRepo) CopyMembersCSV(ctx context.Context, segmentID int64, w io.Writer) error {
	const query = `COPY (
		SELECT user_id,
		       to_char(added_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS added_at,
		       to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS expires_at,
		       source
		FROM memberships
		WHERE segment_id = %d AND (expires_at IS NULL OR expires_at > now())
		ORDER BY user_id
	) TO STDOUT WITH (FORMAT csv, HEADER true, DELIMITER ';')`
	return r.exportTx(ctx, func(tx pgx.Tx) error {
		var found bool
		if err := tx.QueryRow(ctx, segmentExistsSQL, segmentID).Scan(&found); err != nil {
			return fmt.Errorf("find segment %d: %w", segmentID, dbError(err))
		}
		if !found {
			return domain.NotFoundf("the segment no longer exists; its member list is gone with it")
		}
		if _, err := tx.Conn().PgConn().CopyTo(ctx, w, fmt.Sprintf(query, segmentID)); err != nil {
			return fmt.Errorf("export members of segment %d: %w", segmentID, dbError(err))
		}
		return nil
	})
}

// segmentExistsSQL says whether the segment with id $1 exists.
const segmentExistsSQL = `SELECT EXISTS (SELECT FROM segments WHERE id = $1)`

// SegmentExists reports whether the segment with id segmentID exists.
func (r *HistoryRepo) SegmentExists(ctx context.Context, segmentID int64) (bool, error) {
	return readAgain(ctx, r.pool, func() (bool, error) {
		var found bool
		err := on(ctx, r.pool).QueryRow(ctx, segmentExistsSQL, segmentID).Scan(&found)
		if err != nil {
			return false, fmt.Errorf("find segment %d: %w", segmentID, dbError(err))
		}
		return found, nil
	})
}

// ExportName is the application_name of the read-only transactions that
// stream CSV exports. The change event relay does not wait for them: they
// can write no history (EventLog).
const ExportName = "segments export (read only)"

// WithStandby makes the repo's exports read from s's standby when it may
// (see Standby) and returns it.
func (r *HistoryRepo) WithStandby(s *Standby) *HistoryRepo {
	if s == nil {
		return r
	}
	r.standby = s
	r.standbyExport = s.standby.Config().ConnConfig.Copy()
	r.standbyExport.RuntimeParams["application_name"] = ExportName
	return r
}

// exportTx runs fn in a read-only, repeatable read transaction (one
// snapshot for all its statements; exports are downloads, never part of a
// write's transaction) on a connection of its own named ExportName, whose
// statements may run for up to the export timeout. The connection is
// closed when fn returns.
//
// With a standby that has replayed past the fence, the export runs there
// (its snapshot is taken after the position is checked); one that finds
// its segment missing there (a creation is not fenced) runs again on the
// primary.
func (r *HistoryRepo) exportTx(ctx context.Context, fn func(pgx.Tx) error) error {
	if r.standby != nil {
		ran, err := r.exportOnStandby(ctx, fn)
		if ran && !errors.Is(err, domain.ErrNotFound) {
			return err
		}
	}
	conn, err := pgx.ConnectConfig(ctx, r.export)
	if err != nil {
		return fmt.Errorf("connect for an export: %w", dbError(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return r.export1(ctx, conn, fn)
}

// exportOnStandby runs the export on the standby if it may; ran says
// whether it did.
func (r *HistoryRepo) exportOnStandby(ctx context.Context, fn func(pgx.Tx) error) (ran bool, err error) {
	s := r.standby
	if ok, why := s.mayRead(); !ok {
		s.rec.StandbyFallback(why)
		return false, nil
	}
	sctx, cancel := context.WithTimeout(ctx, standbyStepTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(sctx, r.standbyExport)
	if err != nil {
		s.rec.StandbyFallback("down")
		return false, nil
	}
	defer conn.Close(context.WithoutCancel(ctx))
	switch reached, err := s.reached(sctx, conn); {
	case err != nil:
		s.rec.StandbyFallback("down")
		return false, nil
	case !reached:
		s.rec.StandbyFallback("behind")
		return false, nil
	}
	if err := r.export1(ctx, conn, fn); err != nil {
		return true, err
	}
	s.rec.StandbyRead()
	return true, nil
}

// export1 runs fn in the export's transaction on conn.
func (r *HistoryRepo) export1(ctx context.Context, conn *pgx.Conn, fn func(pgx.Tx) error) error {
	opts := pgx.TxOptions{AccessMode: pgx.ReadOnly, IsoLevel: pgx.RepeatableRead}
	return dbError(pgx.BeginTxFunc(ctx, conn, opts, func(tx pgx.Tx) error {
		settings := fmt.Sprintf("SET LOCAL statement_timeout = %d", r.copyTimeout.Milliseconds())
		if _, err := tx.Exec(ctx, settings); err != nil {
			return fmt.Errorf("set export timeout: %w", dbError(err))
		}
		return fn(tx)
	}))
}

// UserHistory returns up to limit events of the user in [from, to) after
// the cursor, in (at, id) order, from the primary key.
func (r *HistoryRepo) UserHistory(ctx context.Context, userID int64, from, to time.Time, after domain.HistoryCursor, limit int) ([]domain.HistoryEvent, error) {
	return readAgain(ctx, r.pool, func() ([]domain.HistoryEvent, error) {
		return r.userHistory(ctx, userID, from, to, after, limit)
	})
}

func (r *HistoryRepo) userHistory(ctx context.Context, userID int64, from, to time.Time, after domain.HistoryCursor, limit int) ([]domain.HistoryEvent, error) {
	const q = `
		SELECT id, user_id, slug, operation, reason, at
		FROM membership_history
		WHERE user_id = $1 AND at >= $2 AND at < $3 AND (at, id) > ($4, $5)
		ORDER BY at, id
		LIMIT $6`
	rows, _ := on(ctx, r.pool).Query(ctx, q, userID, from, to, after.At, after.ID, limit)
	events, err := pgx.CollectRows(rows, pgx.RowToStructByPos[domain.HistoryEvent])
	if err != nil {
		return nil, fmt.Errorf("history of user %d: %w", userID, dbError(err))
	}
	return events, nil
}
