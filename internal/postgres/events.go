package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/domain"
)

// eventsLock is the session advisory lock the one publishing process holds.
const eventsLock int64 = 7346012917432108717

// EventLog reads the history events the relay publishes, in (at, id)
// order, over a connection of its own that holds the publisher's lock.
// Its methods are not safe for concurrent use.
//
// membership_history is the outbox (migrations/000008). A cursor over it is
// safe although transactions commit out of order because Next reads only
// below a horizon that no transaction committing later can write under:
//
//   - the start of the oldest transaction of a client running in this
//     database, read from pg_stat_activity before the events are: every at
//     a transaction writes is a clock reading taken inside it (added_at,
//     segments.now, clock_timestamp()), and a transaction that starts
//     later reads a later clock;
//   - the earliest expiry among memberships still present, read in the
//     same snapshot as the events: a ttl removal is recorded at the expiry,
//     which may be long past when a writer removes the row, but until that
//     writer commits the row is still there.
//
// So every event below the horizon has committed and is in the snapshot,
// and no event that commits later can sort before the cursor. CSV exports
// do not count: their transactions are read-only (named ExportName), so
// they write nothing, and they may stream for minutes. What it costs: an
// event waits for every other transaction that was running when it was
// written, and for the removal of every membership that expired before it
// (the expiry task's delay; the sweep's interval when a task was lost).
type EventLog struct {
	conn   *pgx.Conn
	cursor domain.EventCursor
}

// OpenEventLog connects with cfg and returns once this process holds the
// publisher's lock: until then (another process publishes) it tries again
// every standby. Close releases the lock.
func OpenEventLog(ctx context.Context, cfg *pgx.ConnConfig, standby time.Duration) (*EventLog, error) {
	cfg = cfg.Copy()
	cfg.RuntimeParams["application_name"] = "segments event relay " + processName()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, dbError(err)
	}
	if err := lead(ctx, conn, eventsLock, standby); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	// Without track_activities, pg_stat_activity shows no transaction and
	// the horizon would pass rows that commit later.
	var tracked bool
	if err := conn.QueryRow(ctx, `SELECT current_setting('track_activities')::boolean`).Scan(&tracked); err != nil || !tracked {
		conn.Close(context.WithoutCancel(ctx))
		if err == nil {
			err = errors.New("track_activities is off on the database server: the event relay cannot see which transactions are running, and does not publish")
		}
		return nil, dbError(err)
	}
	l := &EventLog{conn: conn}
	if err := conn.QueryRow(ctx, `SELECT at, id FROM event_relay`).Scan(&l.cursor.At, &l.cursor.ID); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("read the event cursor: %w", dbError(err))
	}
	return l, nil
}

// lead waits until conn holds the session advisory lock key, trying every
// standby.
func lead(ctx context.Context, conn *pgx.Conn, key int64, standby time.Duration) error {
	for {
		var leader bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&leader); err != nil {
			return dbError(err)
		}
		if leader {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(standby):
		}
	}
}

// Close ends the session, which releases the lock.
func (l *EventLog) Close(ctx context.Context) { l.conn.Close(ctx) }

// Cursor is the last event published.
func (l *EventLog) Cursor() domain.EventCursor { return l.cursor }

// The horizon is fixed in one implicit transaction, statement by
// statement: the oldest running transaction first (statement_timestamp()
// was read before pg_stat_activity, so a transaction missing from it
// started later), then, in a later snapshot, the events and the earliest
// expiry.
const (
	eventsHorizon = `
		SELECT set_config('segments.horizon', least(statement_timestamp(), (
			SELECT min(xact_start) FROM pg_stat_activity
			WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
			  AND application_name <> '` + ExportName + `'))::text, true)`
	eventsNext = `
		SELECT id, user_id, slug, operation, reason, at
		FROM membership_history
		WHERE (at, id) > ($1, $2)
		  AND at < least(current_setting('segments.horizon')::timestamptz, (SELECT min(expires_at) FROM memberships))
		ORDER BY at, id
		LIMIT $3`
)

// Next returns up to limit events after the cursor, oldest first: only
// events that no later commit can sort before (see EventLog).
func (l *EventLog) Next(ctx context.Context, limit int) ([]domain.Event, error) {
	b := &pgx.Batch{}
	b.Queue(eventsHorizon)
	var events []domain.Event
	b.Queue(eventsNext, l.cursor.At, l.cursor.ID, limit).Query(func(rows pgx.Rows) error {
		var err error
		events, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (domain.Event, error) {
			var e domain.Event
			err := row.Scan(&e.ID, &e.UserID, &e.Segment, &e.Operation, &e.Reason, &e.At)
			return e, err
		})
		return err
	})
	if err := l.conn.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("read events: %w", dbError(err))
	}
	return events, nil
}

// Published moves the cursor to c, the last event the stream took.
func (l *EventLog) Published(ctx context.Context, c domain.EventCursor) error {
	if _, err := l.conn.Exec(ctx, `UPDATE event_relay SET at = $1, id = $2`, c.At, c.ID); err != nil {
		return fmt.Errorf("move the event cursor: %w", dbError(err))
	}
	l.cursor = c
	return nil
}

// Backlog counts the events after the cursor (not published yet), up to
// limit.
func (l *EventLog) Backlog(ctx context.Context, limit int64) (int64, error) {
	const q = `SELECT count(*) FROM (SELECT FROM membership_history WHERE (at, id) > ($1, $2) LIMIT $3) AS t`
	var n int64
	if err := l.conn.QueryRow(ctx, q, l.cursor.At, l.cursor.ID, limit).Scan(&n); err != nil {
		return 0, fmt.Errorf("count unpublished events: %w", dbError(err))
	}
	return n, nil
}

// UnpublishedEvents counts the events after the cursor the relay last
// stored: 0 once everything written so far is in the stream. For tests,
// the bench and operators; the relay itself counts with Backlog.
func UnpublishedEvents(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	const q = `SELECT count(*) FROM membership_history h, event_relay r WHERE (h.at, h.id) > (r.at, r.id)`
	var n int64
	if err := pool.QueryRow(ctx, q).Scan(&n); err != nil {
		return 0, fmt.Errorf("count unpublished events: %w", dbError(err))
	}
	return n, nil
}
