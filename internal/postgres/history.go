package postgres

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/domain"
)

// HistoryRepo reads membership history.
type HistoryRepo struct {
	pool *pgxpool.Pool
	// copyTimeout bounds one CSV export on the server.
	copyTimeout time.Duration
}

// NewHistoryRepo returns a HistoryRepo on pool; one CSV export may run for
// up to copyTimeout.
func NewHistoryRepo(pool *pgxpool.Pool, copyTimeout time.Duration) *HistoryRepo {
	return &HistoryRepo{pool: pool, copyTimeout: copyTimeout}
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

	return exportTx(ctx, r.pool, r.copyTimeout, func(tx pgx.Tx) error {
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
	return exportTx(ctx, r.pool, r.copyTimeout, func(tx pgx.Tx) error {
		var found bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM segments WHERE id = $1)`, segmentID).Scan(&found); err != nil {
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

// ExportName is the application_name of the read-only transactions that
// stream CSV exports. The change event relay does not wait for them: they
// can write no history (EventLog).
const ExportName = "segments export (read only)"

// exportTx runs fn in a read-only, repeatable read transaction of its own
// (one snapshot for all its statements; exports are downloads, never part
// of a write's transaction) named ExportName, whose statements may run for
// up to timeout.
func exportTx(ctx context.Context, pool *pgxpool.Pool, timeout time.Duration, fn func(pgx.Tx) error) error {
	opts := pgx.TxOptions{AccessMode: pgx.ReadOnly, IsoLevel: pgx.RepeatableRead}
	return dbError(pgx.BeginTxFunc(ctx, pool, opts, func(tx pgx.Tx) error {
		settings := fmt.Sprintf("SET LOCAL statement_timeout = %d; SET LOCAL application_name = '%s'", timeout.Milliseconds(), ExportName)
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
