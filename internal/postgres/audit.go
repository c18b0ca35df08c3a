package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/domain"
)

// auditContext is the transaction setting segments.audit, which the
// audit triggers (migration 18) read: who makes the change, and for a
// scheduled step that could not apply, why.
type auditContext struct {
	Actor     *string `json:"actor"`
	RequestID *string `json:"request_id"`
	Error     string  `json:"error,omitempty"`
}

// setAudit tells the audit triggers who makes tx's changes (the actor
// ctx carries) and, if problem is not "", that the change is a scheduled
// step that could not apply for that problem. The schema refuses a change
// of a segment or a layer without it.
func setAudit(ctx context.Context, tx pgx.Tx, problem string) error {
	a := domain.ActorFrom(ctx)
	c := auditContext{Error: problem}
	if a.Name != "" {
		c.Actor = &a.Name
	}
	if a.RequestID != "" {
		c.RequestID = &a.RequestID
	}
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode the audit context: %w", err)
	}
	if _, err := tx.Exec(ctx, `SELECT set_config('segments.audit', $1, true)`, string(b)); err != nil {
		return fmt.Errorf("set the audit context: %w", dbError(err))
	}
	return nil
}

// AuditRepo reads and trims the audit log.
type AuditRepo struct {
	pool *pgxpool.Pool
}

// NewAuditRepo returns an AuditRepo on pool.
func NewAuditRepo(pool *pgxpool.Pool) *AuditRepo { return &AuditRepo{pool: pool} }

// AuditEntries returns up to limit entries with ids below before (0: from
// the newest), newest first: every entry, or with slug set those about
// the segments that have had that slug and their imports.
func (r *AuditRepo) AuditEntries(ctx context.Context, slug string, before int64, limit int) ([]domain.AuditEntry, error) {
	const q = `
		SELECT id, at, coalesce(actor, ''), action, target_kind, target_slug, changes, coalesce(error, ''), coalesce(request_id, '')
		FROM audit_log
		WHERE ($1 = '' OR (target_slug = $1 AND target_kind IN ('segment', 'import')))
		  AND ($2::bigint = 0 OR id < $2)
		ORDER BY id DESC
		LIMIT $3`
	return readAgain(ctx, r.pool, func() ([]domain.AuditEntry, error) {
		rows, _ := on(ctx, r.pool).Query(ctx, q, slug, before, limit)
		entries, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (domain.AuditEntry, error) {
			var e domain.AuditEntry
			err := row.Scan(&e.ID, &e.At, &e.Actor, &e.Action, &e.Kind, &e.Slug, &e.Changes, &e.Error, &e.RequestID)
			return e, err
		})
		if err != nil {
			return nil, fmt.Errorf("read the audit log: %w", dbError(err))
		}
		return entries, nil
	})
}

// SweepAudit deletes up to limit entries older than before, the oldest
// first, and returns how many it deleted.
func (r *AuditRepo) SweepAudit(ctx context.Context, before time.Time, limit int) (int64, error) {
	const q = `
		DELETE FROM audit_log WHERE id IN (
			SELECT id FROM audit_log WHERE at < $1 ORDER BY at LIMIT $2)`
	tag, err := on(ctx, r.pool).Exec(ctx, q, before, limit)
	if err != nil {
		return 0, fmt.Errorf("sweep the audit log: %w", dbError(err))
	}
	return tag.RowsAffected(), nil
}

// scheduleJSON is a plan as the segments table keeps it: as the API shows
// it, so that the audit log's from and to are the API's.
type scheduleJSON []struct {
	At          time.Time `json:"at"`
	AutoPercent float64   `json:"auto_percent"`
}

func encodeSchedule(steps []domain.ScheduleStep) ([]byte, *time.Time) {
	out := make(scheduleJSON, len(steps))
	for i, s := range steps {
		out[i].At, out[i].AutoPercent = s.At.UTC(), s.AutoPercent.Float()
	}
	b, _ := json.Marshal(out) // a slice of times and floats always encodes
	if len(steps) == 0 {
		return b, nil
	}
	return b, &steps[0].At
}

func decodeSchedule(b []byte) ([]domain.ScheduleStep, error) {
	var in scheduleJSON
	if err := json.Unmarshal(b, &in); err != nil {
		return nil, fmt.Errorf("decode a percent schedule: %w", err)
	}
	steps := make([]domain.ScheduleStep, len(in))
	for i, s := range in {
		steps[i] = domain.ScheduleStep{At: s.At, AutoPercent: domain.Percent(math.Round(s.AutoPercent * 100))}
	}
	return steps, nil
}
