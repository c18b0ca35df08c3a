package postgres_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/postgres"
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
			ms, err := users.UserSegments(context.Background(), 1+rand.Int64N(1000))
			if err != nil || len(ms) != 5 {
				b.Errorf("%d segments, %v", len(ms), err)
				return
			}
		}
	})
}
