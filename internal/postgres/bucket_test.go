package postgres_test

import (
	"fmt"
	"testing"

	"github.com/segments-service/segments/internal/domain"
)

// TestDatabaseHashMatchesGo checks that the database's segment_hash and
// segment_bucket agree with the Go ones (and so with README's vectors) on
// many users and slugs.
func TestDatabaseHashMatchesGo(t *testing.T) {
	pool := env.NewPool(t)
	for _, slug := range []string{"AVITO_VOICE_MESSAGES", "AVITO_DISCOUNT_30", "A", "a.b-c_9"} {
		rows, err := pool.Query(t.Context(), `
			SELECT u, segment_hash($1, u), segment_bucket($1, u)
			FROM (SELECT generate_series(1, 5000)::bigint UNION ALL SELECT 9223372036854775807) g(u)`, slug)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rows.Next() {
			var (
				id     int64
				hash   int64
				bucket int
			)
			if err := rows.Scan(&id, &hash, &bucket); err != nil {
				t.Fatal(err)
			}
			n++
			if uint32(hash) != domain.SegmentHash(slug, id) || hash < 0 || hash > 1<<32-1 || bucket != domain.SegmentBucket(slug, id) {
				t.Fatalf("%s:%d: database %d/%d, Go %d/%d", slug, id, hash, bucket, domain.SegmentHash(slug, id), domain.SegmentBucket(slug, id))
			}
		}
		if err := rows.Err(); err != nil || n != 5001 {
			t.Fatal(fmt.Sprint(n, err))
		}
	}
}
