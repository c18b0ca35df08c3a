package postgres_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/postgres"
)

// Reads batched together never answer older than a write answered before
// the read began. Writers give user k segment V again and again with a
// later expiry each time (the expiry is the write's version) and then
// publish the version as answered; readers note the answered version, read
// (in batches with each other), and must see at least it. Reads of users
// that are not registered come back unknown, in the same batches.
func TestBatchedReadsAreNeverOlderThanAnsweredWrites(t *testing.T) {
	pool := env.NewPool(t)
	mustCreate(t, postgres.NewSegmentRepo(pool, postgres.NopRecorder{}), "V")
	users := postgres.NewUserRepo(pool, postgres.NopRecorder{})
	const keys = 8
	base := time.Now().Add(24 * time.Hour).Truncate(time.Second)
	var answered [keys]atomic.Int64
	write := func(k int, v int64) {
		at := base.Add(time.Duration(v) * time.Second)
		if _, err := users.ChangeUserSegments(context.Background(), domain.SegmentChange{UserID: int64(k + 1), Add: []string{"V"}, ExpiresAt: &at}); err != nil {
			t.Error(err)
		}
	}
	for k := range keys {
		write(k, 0)
	}
	ctx, stop := context.WithTimeout(context.Background(), 3*time.Second)
	defer stop()
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			for v := int64(1); ctx.Err() == nil; v++ {
				for k := w; k < keys; k += 2 {
					write(k, v)
					answered[k].Store(v)
				}
			}
		})
	}
	var reads, stale, unknown atomic.Int64
	for r := range 16 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				k := (r + i) % keys
				want := answered[k].Load()
				ms, known, err := users.UserSegments(context.Background(), int64(k+1), false)
				if err != nil {
					t.Error(err)
					return
				}
				if len(ms) != 1 || !known {
					t.Errorf("user %d: %+v, known %v", k+1, ms, known)
					return
				}
				if got := int64(ms[0].ExpiresAt.Sub(base) / time.Second); got < want {
					stale.Add(1)
				}
				reads.Add(1)
				if i%5 == 0 { // an unknown user in the same batches
					if ms, known, err := users.UserSegments(context.Background(), int64(1000+r), false); err != nil || known || len(ms) != 0 {
						t.Errorf("unknown user: %+v, known %v, %v", ms, known, err)
						return
					}
					unknown.Add(1)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d reads, %d of unknown users", reads.Load(), unknown.Load())
	if n := stale.Load(); n > 0 {
		t.Fatalf("%d reads older than a write answered before they began", n)
	}
	if reads.Load() < 100 {
		t.Fatalf("only %d reads", reads.Load())
	}
}
