package postgres_test

import (
	"context"
	"errors"
	"maps"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/postgres"
)

// A segment's member_count equals a count of its active memberships at
// every moment, while changes add and remove memberships (some expiring
// within a second), the sweep removes expired ones, folds run, and a
// segment is deleted and created again: each check reads both in one
// statement, so in one snapshot and at one now().
func TestMemberCountsAreExact(t *testing.T) {
	pool := env.NewPool(t)
	segs := postgres.NewSegmentRepo(pool, postgres.NopRecorder{})
	mustCreate(t, segs, "A", "B", "C")
	users := postgres.NewUserRepo(pool, postgres.NopRecorder{})
	expiry := postgres.NewExpiryRepo(pool, postgres.NopRecorder{})
	ctx, stop := context.WithTimeout(context.Background(), 4*time.Second)
	defer stop()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 9))
			for ctx.Err() == nil {
				c := domain.SegmentChange{UserID: 1 + r.Int64N(300)}
				slugs := []string{"A", "B", "C"}[:1+r.IntN(3)]
				if r.IntN(3) == 0 {
					c.Remove = slugs
				} else {
					c.Add = slugs
					if r.IntN(2) == 0 {
						at := time.Now().Add(time.Duration(200+r.IntN(800)) * time.Millisecond)
						c.ExpiresAt = &at
					}
				}
				if _, err := users.ChangeUserSegments(context.Background(), c); err != nil && !isNotFound(err) {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() { // the sweep
		for ctx.Err() == nil {
			if _, err := expiry.DeleteExpired(context.Background(), 50); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	wg.Go(func() { // two folders
		for ctx.Err() == nil {
			if _, err := postgres.FoldMemberCounts(context.Background(), pool); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(30 * time.Millisecond)
		}
	})
	wg.Go(func() {
		for ctx.Err() == nil {
			if _, err := postgres.FoldMemberCounts(context.Background(), pool); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(70 * time.Millisecond)
		}
	})
	wg.Go(func() { // C deleted and created again
		for ctx.Err() == nil {
			time.Sleep(700 * time.Millisecond)
			if err := segs.DeleteSegment(context.Background(), "C"); err != nil {
				t.Error(err)
				return
			}
			mustCreate(t, segs, "C")
		}
	})
	checks := 0
	check := func() {
		t.Helper()
		rows, err := pool.Query(context.Background(), `
			SELECT s.slug, segment_member_count(s.id),
			       (SELECT count(*) FROM memberships m WHERE m.segment_id = s.id AND (m.expires_at IS NULL OR m.expires_at > now()))
			FROM segments s ORDER BY s.slug`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var (
				slug        string
				kept, count int64
			)
			if err := rows.Scan(&slug, &kept, &count); err != nil {
				t.Fatal(err)
			}
			if kept != count {
				t.Fatalf("check %d: %s has member_count %d, %d active memberships", checks, slug, kept, count)
			}
		}
		checks++
	}
	for ctx.Err() == nil {
		check()
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	check()
	if _, err := postgres.FoldMemberCounts(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	check()
	var left int64
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM member_count_deltas`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d deltas left after a fold (%v)", left, err)
	}
	// The repo's read and the count below are two statements at two
	// instants: once every expiry set during the run (at most 1 s ahead)
	// has passed, none falls between them.
	time.Sleep(time.Second)
	seg, err := segs.Segment(context.Background(), "A")
	if err != nil {
		t.Fatal(err)
	}
	var want int64
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM memberships m JOIN segments s ON s.id = m.segment_id WHERE s.slug = 'A' AND (m.expires_at IS NULL OR m.expires_at > now())`).Scan(&want); err != nil || seg.MemberCount != want {
		t.Fatalf("A: member_count %d, want %d (%v)", seg.MemberCount, want, err)
	}
	t.Logf("%d checks", checks)
}

func isNotFound(err error) bool { return errors.Is(err, domain.ErrNotFound) }

// Stats counts the buckets each layer's percent segments own.
func TestStatsCountLayerBuckets(t *testing.T) {
	pool := env.NewPool(t)
	segs := postgres.NewSegmentRepo(pool, postgres.NopRecorder{})
	layers := postgres.NewLayerRepo(pool)
	for _, l := range []string{"L", "EMPTY"} {
		if _, err := layers.CreateLayer(context.Background(), domain.NewLayer{Slug: l}); err != nil {
			t.Fatal(err)
		}
	}
	for slug, p := range map[string]domain.Percent{"P1": 3000, "P2": 1250} {
		if _, err := segs.CreateSegment(context.Background(), domain.NewSegment{Slug: slug, AutoPercent: &p, Layer: "L"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := segs.CreateSegment(context.Background(), domain.NewSegment{Slug: "M", Layer: "L"}); err != nil {
		t.Fatal(err)
	}
	s, err := segs.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]int64{"L": 4250, "EMPTY": 0}; !maps.Equal(s.LayerBuckets, want) {
		t.Fatalf("layer buckets %v, want %v", s.LayerBuckets, want)
	}
}
