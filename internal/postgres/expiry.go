package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/domain"
)

// ExpiryRepo removes expired memberships. History records each removal as
// reason ttl at the membership's expiry (the history trigger does this).
type ExpiryRepo struct {
	pool *pgxpool.Pool
	rec  Recorder
}

// NewExpiryRepo returns an ExpiryRepo on pool that reports removals to rec.
func NewExpiryRepo(pool *pgxpool.Pool, rec Recorder) *ExpiryRepo {
	return &ExpiryRepo{pool: pool, rec: rec}
}

// ExpireMembership deletes the membership e names if it still expires at
// e.ExpiresAt and that time has passed. It reports whether it deleted it and
// the database's clock.
func (r *ExpiryRepo) ExpireMembership(ctx context.Context, e domain.Expiry) (deleted bool, now time.Time, err error) {
	err = withTx(ctx, r.pool, func(tx pgx.Tx) error {
		if err := setReason(ctx, tx, domain.ReasonTTL); err != nil {
			return err
		}
		// memberships_history_delete records the removal (ttl, at the
		// expiry) and queues the user for the read caches.
		const q = `
			WITH d AS (
				DELETE FROM memberships m
				USING segments s
				WHERE s.slug = $2 AND m.segment_id = s.id AND m.user_id = $1
				  AND m.expires_at = $3 AND m.expires_at <= clock_timestamp()
				RETURNING 1
			)
			SELECT EXISTS (SELECT 1 FROM d), clock_timestamp()`
		return tx.QueryRow(ctx, q, e.UserID, e.Slug, e.ExpiresAt).Scan(&deleted, &now)
	})
	if err != nil {
		return false, time.Time{}, fmt.Errorf("expire %s of user %d: %w", e.Slug, e.UserID, dbError(err))
	}
	if deleted {
		r.rec.MembershipsChanged(domain.OperationRemove, domain.ReasonTTL, 1)
	}
	return deleted, now, nil
}

// DeleteExpired deletes up to limit expired memberships, oldest expiry
// first, in one transaction. Rows locked by other transactions (a change
// of the same user purging them, another sweep) are skipped, so sweeps
// never wait on or duplicate each other's work.
func (r *ExpiryRepo) DeleteExpired(ctx context.Context, limit int) (int64, error) {
	var n int64
	err := withTx(ctx, r.pool, func(tx pgx.Tx) error {
		if err := setReason(ctx, tx, domain.ReasonTTL); err != nil {
			return err
		}
		// memberships_history_delete records each removal (ttl, at its
		// expiry) and queues the users for the read caches.
		const q = `
			WITH doomed AS (
				SELECT user_id, segment_id
				FROM memberships
				WHERE expires_at <= clock_timestamp()
				ORDER BY expires_at
				LIMIT $1
				FOR UPDATE SKIP LOCKED
			)
			DELETE FROM memberships m
			USING doomed d
			WHERE m.user_id = d.user_id AND m.segment_id = d.segment_id`
		tag, err := tx.Exec(ctx, q, limit)
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("delete expired memberships: %w", dbError(err))
	}
	r.rec.MembershipsChanged(domain.OperationRemove, domain.ReasonTTL, n)
	return n, nil
}
