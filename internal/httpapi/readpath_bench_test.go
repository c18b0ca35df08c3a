package httpapi_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/segments-service/segments/internal/httpapi"
)

// BenchmarkReadThroughTheRouter reads random users' segments through the
// real router and a real database of 100,000 users × 5 segments, from 32
// goroutines, with the read cache off (every read a miss, batched) and on
// (warm): what the API itself adds to each.
func BenchmarkReadThroughTheRouter(b *testing.B) {
	const users = 100_000
	for _, cached := range []bool{false, true} {
		b.Run(fmt.Sprintf("cache %v", cached), func(b *testing.B) {
			a := newAPI(b, func(o *httpapi.Options) {
				if !cached {
					o.Cache = nil
				}
			})
			for i := 1; i <= 20; i++ {
				a.createSegment(fmt.Sprintf("SEG_%d", i))
			}
			ctx := context.Background()
			tx, err := a.pool.Begin(ctx)
			if err != nil {
				b.Fatal(err)
			}
			const seed = `
				WITH u AS (INSERT INTO users (id) SELECT generate_series(1, $1) RETURNING id)
				INSERT INTO memberships (user_id, segment_id, source)
				SELECT u.id, s.id, 'manual' FROM u CROSS JOIN LATERAL (
					SELECT id FROM segments ORDER BY (id * 7919 + u.id) % 20 LIMIT 5) AS s`
			if _, err := tx.Exec(ctx, `SELECT set_config('segments.reason', 'manual', true)`); err != nil {
				b.Fatal(err)
			}
			if _, err := tx.Exec(ctx, seed, users); err != nil {
				b.Fatal(err)
			}
			if err := tx.Commit(ctx); err != nil {
				b.Fatal(err)
			}
			if _, err := a.pool.Exec(ctx, `VACUUM ANALYZE`); err != nil {
				b.Fatal(err)
			}
			if cached {
				for id := 1; id <= users; id++ {
					rec := httptest.NewRecorder()
					a.h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, fmt.Sprintf("/api/v1/users/%d/segments", id), nil))
				}
			}
			b.ResetTimer()
			b.SetParallelism(16)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					rec := httptest.NewRecorder()
					a.h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, fmt.Sprintf("/api/v1/users/%d/segments", 1+rand.IntN(users)), nil))
					if rec.Code != http.StatusOK {
						b.Errorf("status %d", rec.Code)
						return
					}
				}
			})
		})
	}
}
