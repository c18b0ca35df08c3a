package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/supervise"
)

// foldBatch bounds the deltas one fold takes.
const foldBatch = 10000

// foldSQL moves up to $1 member count deltas into member_counts, in one
// statement: the deltas it deletes are the ones it adds, and deltas
// another fold holds are skipped, so folds may run side by side. A
// segment being deleted is waited for (its row is locked FOR KEY SHARE)
// and then skipped, with its deltas. It returns how many deltas it took.
const foldSQL = `
	WITH taken AS (
		DELETE FROM member_count_deltas
		WHERE ctid = ANY (ARRAY(SELECT ctid FROM member_count_deltas LIMIT $1 FOR UPDATE SKIP LOCKED))
		RETURNING segment_id, n
	), sums AS (
		SELECT segment_id, sum(n) AS n FROM taken GROUP BY segment_id
	), live AS (
		SELECT s.segment_id, s.n FROM sums s JOIN segments seg ON seg.id = s.segment_id
		FOR KEY SHARE OF seg
	), folded AS (
		INSERT INTO member_counts AS c (segment_id, n)
		SELECT segment_id, n FROM live
		ON CONFLICT (segment_id) DO UPDATE SET n = c.n + EXCLUDED.n
	)
	SELECT count(*) FROM taken`

// MemberCountFolder returns the loop that folds the member count deltas
// the membership triggers append into member_counts every interval (and
// at once again while there are more than a batch), so that a segment's
// count reads a few rows (migration 14). The worker runs it; any number
// may run at once.
func MemberCountFolder(pool *pgxpool.Pool, interval time.Duration) supervise.Loop {
	return supervise.Loop{
		Name: "member_counts",
		Run: func(ctx context.Context) error {
			t := time.NewTicker(interval)
			defer t.Stop()
			for {
				n, err := FoldMemberCounts(ctx, pool)
				if err != nil {
					return err
				}
				if n == foldBatch {
					continue
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-t.C:
				}
			}
		},
	}
}

// FoldMemberCounts folds one batch of member count deltas and returns how
// many it took.
func FoldMemberCounts(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var n int
	if err := pool.QueryRow(ctx, foldSQL, foldBatch).Scan(&n); err != nil {
		return 0, fmt.Errorf("fold member counts: %w", dbError(err))
	}
	return n, nil
}
