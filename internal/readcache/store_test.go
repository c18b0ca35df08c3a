package readcache

import (
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"
)

// userAnswer is what a user with n memberships of 50 segments looks like:
// ids in slug order, added over a few changes, some expiring.
func userAnswer(r *rand.Rand, n int) []Membership {
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC).UnixMicro() + r.Int64N(30*24*3600*1e6)
	ids := r.Perm(50)[:n]
	slices.Sort(ids)
	ms := make([]Membership, n)
	for i, id := range ids {
		ms[i] = Membership{SegmentID: int64(id + 1), Slug: slugOf(id + 1), AddedAt: base + int64(r.IntN(3))*1_234_567, Auto: r.IntN(3) == 0}
		if r.IntN(4) == 0 {
			ms[i].ExpiresAt = ms[i].AddedAt + r.Int64N(1e12) + 1
		}
	}
	return ms
}

func slugOf(id int) string { return "SEG_" + string(rune('A'+id%26)) + string(rune('A'+id/26)) }

// Entries read back exactly as they were filled.
func TestEntriesRoundTrip(t *testing.T) {
	c, clk, _ := newCache(t)
	clk.set(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC))
	r := rand.New(rand.NewPCG(1, 2))
	want := map[int64][]Membership{}
	for id := int64(1); id <= 2000; id++ {
		ms := userAnswer(r, r.IntN(8))
		_, ticket := mustGet(t, c, id, Miss)
		if !c.Fill(id, ticket, ms) {
			t.Fatalf("fill of %d refused", id)
		}
		want[id] = ms
	}
	for id, ms := range want {
		got, _, st := c.Get(id, nil)
		if st != Hit || !slices.Equal(got, ms) {
			t.Fatalf("user %d: %v %+v, filled %+v", id, st, got, ms)
		}
	}
}

// Filled far past its budget, the cache stays within it, both by its own
// count and by the live heap; users read again and again stay cached while
// the rest come and go.
func TestByteBoundHolds(t *testing.T) {
	const budget = 8 << 20
	heap := func() int64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	before := heap()
	rec := newCounts()
	clk := &clock{}
	clk.set(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC))
	c := New(budget, clk.now, rec)
	c.Listening(true)
	r := rand.New(rand.NewPCG(3, 4))
	hot := []int64{1, 2, 3}
	for id := int64(1); id <= 1_000_000; id++ {
		if _, ticket, st := c.Get(id, nil); st == Miss {
			c.Fill(id, ticket, userAnswer(r, 5))
		}
		if id%1000 == 0 {
			for _, h := range hot {
				if _, _, st := c.Get(h, nil); st != Hit {
					t.Fatalf("hot user %d not cached after %d fills: %v", h, id, st)
				}
			}
		}
	}
	entries, bytes := c.Size()
	grown := heap() - before
	t.Logf("budget %d: %d users cached, %d bytes counted, live heap grew %d (%.0f bytes a user)", budget, entries, bytes, grown, float64(grown)/float64(entries))
	if bytes > budget || grown > budget*11/10 {
		t.Fatalf("over budget: %d bytes counted, heap grew %d, budget %d", bytes, grown, budget)
	}
	if entries < budget/200 {
		t.Fatalf("only %d users in %d bytes", entries, budget)
	}
	runtime.KeepAlive(c)
}

// BenchmarkBytesPerUser fills a cache large enough for them with 1,000,000
// users of 5 memberships each and reports the live heap they take (after a
// collection) per user: the figure CACHE_MAX_BYTES is sized by.
func BenchmarkBytesPerUser(b *testing.B) {
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		clk := &clock{}
		clk.set(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC))
		c := New(1<<30, clk.now, newCounts())
		c.Listening(true)
		r := rand.New(rand.NewPCG(5, 6))
		const users = 1_000_000
		for id := int64(1); id <= users; id++ {
			_, ticket, _ := c.Get(id, nil)
			c.Fill(id, ticket, userAnswer(r, 5))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		entries, counted := c.Size()
		if entries != users {
			b.Fatalf("%d users cached", entries)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/users, "heap-B/user")
		b.ReportMetric(float64(counted)/users, "counted-B/user")
		runtime.KeepAlive(c)
	}
}
