package main

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// seed fills the database with COPY: users 1..N, segments SEG_1..SEG_S,
// and perUser memberships per user (history via the triggers, reason
// manual), a million users per transaction.
func seed(ctx context.Context, pool *pgxpool.Pool, o options) error {
	var slugs []string
	for i := 1; i <= o.segments; i++ {
		slugs = append(slugs, fmt.Sprintf("SEG_%d", i))
	}
	// The audit log records them as the bench's.
	const qSegments = `
		INSERT INTO segments (slug)
		SELECT unnest($1::text[]) FROM (SELECT set_config('segments.audit', '{"actor": "bench"}', true)) audit
		ON CONFLICT DO NOTHING`
	if _, err := pool.Exec(ctx, qSegments, slugs); err != nil {
		return err
	}
	rows, _ := pool.Query(ctx, `SELECT id FROM segments WHERE slug = ANY ($1) ORDER BY id`, slugs)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return err
	}
	const chunk = 1_000_000
	for from := 1; from <= o.users; from += chunk {
		to := min(from+chunk-1, o.users)
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			i := int64(from - 1)
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"users"}, []string{"id"}, pgx.CopyFromFunc(func() ([]any, error) {
				if i >= int64(to) {
					return nil, nil
				}
				i++
				return []any{i}, nil
			})); err != nil {
				return fmt.Errorf("copy users: %w", err)
			}
			if _, err := tx.Exec(ctx, `SELECT set_config('segments.reason', 'manual', true)`); err != nil {
				return err
			}
			u, k := int64(from), 0
			perm := rand.Perm(o.segments)
			_, err := tx.CopyFrom(ctx, pgx.Identifier{"memberships"}, []string{"user_id", "segment_id"}, pgx.CopyFromFunc(func() ([]any, error) {
				if u > int64(to) {
					return nil, nil
				}
				row := []any{u, ids[perm[k]]}
				if k++; k == o.perUser {
					k, u = 0, u+1
					perm = rand.Perm(o.segments)
				}
				return row, nil
			}))
			if err != nil {
				return fmt.Errorf("copy memberships: %w", err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	// The seed is a bulk load, not changes anyone consumes: the event
	// relay starts after it.
	const skip = `UPDATE event_relay SET (at, id) = (SELECT at, id FROM membership_history ORDER BY at DESC, id DESC LIMIT 1)
	              WHERE EXISTS (SELECT FROM membership_history)`
	if _, err := pool.Exec(ctx, skip); err != nil {
		return err
	}
	_, err = pool.Exec(ctx, `VACUUM ANALYZE`)
	return err
}

// databaseSizes describes the database's size and its main tables', each
// with its indexes and TOAST.
func databaseSizes(ctx context.Context, pool *pgxpool.Pool) (string, error) {
	const q = `SELECT pg_database_size(current_database()), pg_total_relation_size('memberships'),
	                  pg_total_relation_size('membership_history'), pg_total_relation_size('users')`
	var db, memberships, history, users int64
	if err := pool.QueryRow(ctx, q).Scan(&db, &memberships, &history, &users); err != nil {
		return "", fmt.Errorf("database size: %w", err)
	}
	return fmt.Sprintf("database %s; with indexes: memberships %s, membership_history %s, users %s",
		sizeText(db), sizeText(memberships), sizeText(history), sizeText(users)), nil
}

// sizeText is n bytes in GB, or in MB below a tenth of a GB.
func sizeText(n int64) string {
	if n < 1e8 {
		return fmt.Sprintf("%.0f MB", float64(n)/1e6)
	}
	return fmt.Sprintf("%.2f GB", float64(n)/1e9)
}
