package postgres_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/tools/apitest"
)

// parallelism × GOMAXPROCS goroutines send changes at once.
const parallelism = 16

// BenchmarkChangeUserSegments runs add-2/remove-1 changes of 20 segments
// for 10,000 users from parallel goroutines: the change's client side
// (building the batch, reading its results) and its SQL on a real server.
func BenchmarkChangeUserSegments(b *testing.B) {
	pool := env.NewPool(b)
	segs := postgres.NewSegmentRepo(pool, postgres.NopRecorder{})
	for i := 1; i <= 20; i++ {
		mustCreate(b, segs, fmt.Sprintf("SEG_%d", i))
	}
	users := postgres.NewUserRepo(pool, postgres.NopRecorder{})
	ids := make([]int64, 10000)
	for i := range ids {
		ids[i] = int64(i + 1)
	}
	if _, err := users.RegisterUsers(context.Background(), ids); err != nil {
		b.Fatal(err)
	}
	b.SetParallelism(parallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			a := rand.IntN(20)
			c := domain.SegmentChange{
				UserID: 1 + rand.Int64N(10000),
				Add:    []string{fmt.Sprintf("SEG_%d", a+1), fmt.Sprintf("SEG_%d", (a+1+rand.IntN(9))%20+1)},
				Remove: []string{fmt.Sprintf("SEG_%d", (a+10+rand.IntN(9))%20+1)},
			}
			if _, err := users.ChangeUserSegments(context.Background(), c); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkUserSegments reads a registered user holding 5 of 20 segments,
// one of them expiring, from parallel goroutines: the read that misses the
// cache, client side and SQL.
func BenchmarkUserSegments(b *testing.B) {
	pool := env.NewPool(b)
	segs := postgres.NewSegmentRepo(pool, postgres.NopRecorder{})
	for i := 1; i <= 20; i++ {
		mustCreate(b, segs, fmt.Sprintf("SEG_%d", i))
	}
	users := postgres.NewUserRepo(pool, postgres.NopRecorder{})
	expiry := time.Now().Add(time.Hour)
	for u := int64(1); u <= 1000; u++ {
		c := domain.SegmentChange{UserID: u, Add: []string{"SEG_1", "SEG_5", "SEG_9", "SEG_13"}}
		if _, err := users.ChangeUserSegments(context.Background(), c); err != nil {
			b.Fatal(err)
		}
		c = domain.SegmentChange{UserID: u, Add: []string{"SEG_17"}, ExpiresAt: &expiry}
		if _, err := users.ChangeUserSegments(context.Background(), c); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.SetParallelism(parallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ms, _, err := users.UserSegments(context.Background(), 1+rand.Int64N(1000), true)
			if err != nil || len(ms) != 5 {
				b.Errorf("%d segments, %v", len(ms), err)
				return
			}
		}
	})
}

// BenchmarkUserSegmentsAt reads one user's segments at a past instant
// (?at=) from a history of 1,000 events of that user in 20 segments, with
// 100,000 events of other users around it: the time the database spends
// on the read the issue bounds (≤ 5 ms).
func BenchmarkUserSegmentsAt(b *testing.B) {
	pool := env.NewPool(b)
	segs := postgres.NewSegmentRepo(pool, postgres.NopRecorder{})
	for i := 1; i <= 20; i++ {
		mustCreate(b, segs, fmt.Sprintf("SEG_%d", i))
	}
	users := postgres.NewUserRepo(pool, postgres.NopRecorder{})
	ctx := context.Background()
	// Other users' history: 100 users × 1,000 events, written directly.
	const others = `
		INSERT INTO membership_history (user_id, segment_id, slug, operation, reason, at)
		SELECT u, s.id, s.slug, CASE WHEN e % 2 = 0 THEN 'add' ELSE 'remove' END, 'manual',
		       now() - interval '1 day' + e * interval '1 ms'
		FROM generate_series(2, 101) u, generate_series(1, 1000) e
		JOIN segments s ON s.slug = 'SEG_' || (e % 20 + 1)`
	if _, err := pool.Exec(ctx, others); err != nil {
		b.Fatal(err)
	}
	// User 1: 1,000 events through the service's own changes.
	var mid time.Time
	for i := range 1000 {
		c := domain.SegmentChange{UserID: 1, Add: []string{fmt.Sprintf("SEG_%d", i%20+1)}}
		if i%2 == 1 {
			c = domain.SegmentChange{UserID: 1, Remove: []string{fmt.Sprintf("SEG_%d", (i-1)%20+1)}}
		}
		if _, err := users.ChangeUserSegments(ctx, c); err != nil {
			b.Fatal(err)
		}
		if i == 500 {
			mid = time.Now()
		}
	}
	var n int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM membership_history WHERE user_id = 1`).Scan(&n); err != nil || n < 500 {
		b.Fatalf("user 1 has %d events (%v)", n, err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE membership_history`); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := users.UserSegmentsAt(ctx, 1, mid); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n), "events")
}

// BenchmarkLongHistory reads, for a user with 100,000 events across 50
// segments, its segments at an instant in the middle of that history (?at=)
// and the explanation of one segment (its last 100 events): neither may
// cost in proportion to the user's events (the issue bounds both at 5 ms
// in the database). db-ms/op is the database's own execution time of the
// ?at= query (EXPLAIN ANALYZE).
func BenchmarkLongHistory(b *testing.B) {
	pool := env.NewPool(b)
	segs := postgres.NewSegmentRepo(pool, postgres.NopRecorder{})
	for i := 1; i <= 50; i++ {
		mustCreate(b, segs, fmt.Sprintf("SEG_%d", i))
	}
	ctx := context.Background()
	// 1,000 add/remove pairs a segment, one event a millisecond, written
	// straight into history (a fixture, not changes).
	const seed = `
		INSERT INTO membership_history (user_id, segment_id, slug, operation, reason, at)
		SELECT 1, s.id, s.slug, CASE WHEN e % 2 = 0 THEN 'add' ELSE 'remove' END, 'manual',
		       now() - interval '1 day' + e * interval '1 ms'
		FROM generate_series(1, 100000) e
		JOIN segments s ON s.slug = 'SEG_' || (e % 50 + 1)`
	if _, err := pool.Exec(ctx, seed); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE membership_history`); err != nil {
		b.Fatal(err)
	}
	users := postgres.NewUserRepo(pool, postgres.NopRecorder{})
	var mid time.Time
	if err := pool.QueryRow(ctx, `SELECT now() - interval '1 day' + 50000 * interval '1 ms'`).Scan(&mid); err != nil {
		b.Fatal(err)
	}
	b.Run("at", func(b *testing.B) {
		for b.Loop() {
			ms, err := users.UserSegmentsAt(ctx, 1, mid)
			if err != nil || len(ms) != 25 {
				b.Fatalf("%d segments at the middle, %v; want the 25 whose last event was an add", len(ms), err)
			}
		}
		b.ReportMetric(dbMillis(b, pool, postgres.UserSegmentsAtSQL, int64(1), mid), "db-ms/op")
	})
	b.Run("explain", func(b *testing.B) {
		for b.Loop() {
			e, err := segs.Explain(ctx, 1, "SEG_25")
			if err != nil || len(e.Events) != 100 {
				b.Fatalf("%d events, %v", len(e.Events), err)
			}
		}
	})
}

// dbMillis is the execution time PostgreSQL reports for sql with args
// (EXPLAIN ANALYZE), in milliseconds: the best of five runs.
func dbMillis(b *testing.B, pool *pgxpool.Pool, sql string, args ...any) float64 {
	b.Helper()
	best := math.Inf(1)
	for range 5 {
		var plan []map[string]any
		if err := pool.QueryRow(context.Background(), "EXPLAIN (ANALYZE, FORMAT JSON) "+sql, args...).Scan(&plan); err != nil {
			b.Fatal(err)
		}
		best = min(best, plan[0]["Execution Time"].(float64))
	}
	return best
}

// BenchmarkPrepareRollout plans a 50 % rollout of 1,000,000 users: one read of the population, the hashes,
// the line and the batch bounds, stored. ns/op is one planning, which
// comes before a rollout's first batch.
func BenchmarkPrepareRollout(b *testing.B) {
	const users = 1_000_000
	pool := env.NewPool(b)
	ctx := context.Background()
	mustExec(b, pool, `INSERT INTO users (id) SELECT generate_series(1, $1::bigint)`, users)
	mustExec(b, pool, `VACUUM ANALYZE users`)
	mustExec(b, pool, `
		INSERT INTO segments (slug, auto_percent, population_seq, rollout_status)
		SELECT 'PLAN', 50, (SELECT max(seq) FROM users), 'pending' FROM (`+asTest+`) audit`)
	var segmentID int64
	if err := pool.QueryRow(ctx, `SELECT id FROM segments WHERE slug = 'PLAN'`).Scan(&segmentID); err != nil {
		b.Fatal(err)
	}
	repo := postgres.NewRolloutRepo(pool, postgres.NopRecorder{})
	b.ResetTimer()
	for range b.N {
		ro, err := repo.PrepareRollout(ctx, segmentID, 20000)
		if err != nil {
			b.Fatal(err)
		}
		if want := int64(users / 2); ro.Total != want {
			b.Fatalf("planned %d users, want %d", ro.Total, want)
		}
		b.StopTimer()
		mustExec(b, pool, `DELETE FROM rollout_batches`)
		mustExec(b, pool, `UPDATE segments SET rollout_status = 'pending', rollout_total = NULL WHERE id = $1`, segmentID)
		b.StartTimer()
	}
}

// BenchmarkReadsMissingTheCache reads random users' segments from 32
// goroutines, as cache misses do, two ways on one database of 200,000
// users × 5 of 20 segments: one statement per read (what pgbench measures
// as the read's ceiling) and UserRepo.UserSegments, which batches the
// reads waiting together. ns/op is per read.
func BenchmarkReadsMissingTheCache(b *testing.B) {
	const users = 200_000
	pool := env.NewPool(b)
	segs := postgres.NewSegmentRepo(pool, postgres.NopRecorder{})
	for i := 1; i <= 20; i++ {
		mustCreate(b, segs, fmt.Sprintf("SEG_%d", i))
	}
	ctx := context.Background()
	const seed = `
		WITH u AS (INSERT INTO users (id) SELECT generate_series(1, $1) RETURNING id)
		INSERT INTO memberships (user_id, segment_id, source)
		SELECT u.id, s.id, 'manual' FROM u CROSS JOIN LATERAL (
			SELECT id FROM segments ORDER BY (id * 7919 + u.id) % 20 LIMIT 5) AS s`
	if _, err := pool.Exec(ctx, `SELECT set_config('segments.reason', 'manual', false)`); err != nil {
		b.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT set_config('segments.reason', 'manual', true)`); err != nil {
		b.Fatal(err)
	}
	if _, err := tx.Exec(ctx, seed, users); err != nil {
		b.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE`); err != nil {
		b.Fatal(err)
	}
	repo := postgres.NewUserRepo(pool, postgres.NopRecorder{})
	b.Run("one statement a read", func(b *testing.B) {
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				rows, err := pool.Query(ctx, postgres.UserSegmentsSQL, 1+rand.Int64N(users))
				if err != nil {
					b.Error(err)
					return
				}
				rows.Close()
			}
		})
	})
	b.Run("batched", func(b *testing.B) {
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, known, err := repo.UserSegments(ctx, 1+rand.Int64N(users), false); err != nil || !known {
					b.Errorf("%v, known %v", err, known)
					return
				}
			}
		})
	})
}

// BenchmarkPatchSegment changes segments' descriptions (PatchSegment: one
// transaction, the audit context set, the row locked and updated), with
// the audit triggers on (an entry each) and off (ALTER TABLE ... DISABLE
// TRIGGER: the same work without the entry), for a paired comparison:
// go test -bench PatchSegment -count 6.
func BenchmarkPatchSegment(b *testing.B) {
	pool := env.NewPool(b)
	segs := postgres.NewSegmentRepo(pool, postgres.NopRecorder{})
	for i := range 20 {
		mustCreate(b, segs, fmt.Sprintf("SEG_%d", i))
	}
	for _, audit := range []bool{true, false} {
		b.Run(fmt.Sprintf("audit=%v", audit), func(b *testing.B) {
			toggle := "ENABLE"
			if !audit {
				toggle = "DISABLE"
			}
			mustExec(b, pool, `ALTER TABLE segments `+toggle+` TRIGGER segments_audit_update`)
			before := apitest.Scalar(b, pool, `SELECT count(*) FROM audit_log`)
			b.SetParallelism(parallelism)
			b.ResetTimer()
			var n atomic.Int64
			run := time.Now().UnixNano() // every description new: each PATCH changes one
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					d := fmt.Sprintf("description %d-%d", run, i)
					if _, err := segs.PatchSegment(context.Background(), fmt.Sprintf("SEG_%d", i%20), domain.SegmentPatch{Description: &d}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			if got, want := apitest.Scalar(b, pool, `SELECT count(*) FROM audit_log`)-before, map[bool]int64{true: n.Load(), false: 0}[audit]; got != want {
				b.Fatalf("%d audit entries for %d changes, want %d", got, n.Load(), want)
			}
			mustExec(b, pool, `ALTER TABLE segments ENABLE TRIGGER segments_audit_update`)
		})
	}
}
