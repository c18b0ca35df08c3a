package readcache

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type counts struct {
	mu          sync.Mutex
	lookups     map[Status]int
	invalidated map[string]int
	flushes     map[string]int
	refused     int
}

func newCounts() *counts {
	return &counts{lookups: map[Status]int{}, invalidated: map[string]int{}, flushes: map[string]int{}}
}

func (c *counts) CacheLookup(s Status) { c.mu.Lock(); c.lookups[s]++; c.mu.Unlock() }
func (c *counts) CacheInvalidated(source string, n int) {
	c.mu.Lock()
	c.invalidated[source] += n
	c.mu.Unlock()
}
func (c *counts) CacheFlushed(cause string) { c.mu.Lock(); c.flushes[cause]++; c.mu.Unlock() }
func (c *counts) CacheFillRefused()         { c.mu.Lock(); c.refused++; c.mu.Unlock() }

type clock struct{ t atomic.Int64 }

func (c *clock) now() time.Time          { return time.Unix(0, c.t.Load()) }
func (c *clock) set(t time.Time)         { c.t.Store(t.UnixNano()) }
func (c *clock) advance(d time.Duration) { c.t.Add(int64(d)) }

func newCache(t *testing.T) (*Cache, *clock, *counts) {
	t.Helper()
	clk := &clock{}
	clk.set(time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC))
	rec := newCounts()
	c := New(1<<20, clk.now, rec)
	c.Listening(true)
	return c, clk, rec
}

// answer is a user's memberships standing for a version v of its answer:
// one membership added at microsecond v, with the expiry given (0: none).
func answer(v, expiresAt int64) []Membership {
	return []Membership{{SegmentID: 3, Slug: "S", AddedAt: v, ExpiresAt: expiresAt}}
}

// version is what answer wrote into ms.
func version(t *testing.T, ms []Membership) int64 {
	t.Helper()
	if len(ms) != 1 || ms[0].Slug != "S" || ms[0].SegmentID != 3 {
		t.Fatalf("cached %+v", ms)
	}
	return ms[0].AddedAt
}

func mustGet(t *testing.T, c *Cache, id int64, want Status) ([]Membership, Ticket) {
	t.Helper()
	ms, ticket, st := c.Get(id, nil)
	if st != want {
		t.Fatalf("Get(%d) = %v, want %v", id, st, want)
	}
	return ms, ticket
}

func TestFillThenHit(t *testing.T) {
	c, _, rec := newCache(t)
	_, ticket := mustGet(t, c, 7, Miss)
	if !c.Fill(7, ticket, answer(7, 0)) {
		t.Fatal("fill refused")
	}
	if ms, _ := mustGet(t, c, 7, Hit); version(t, ms) != 7 {
		t.Fatalf("hit %+v", ms)
	}
	mustGet(t, c, 8, Miss)
	if rec.lookups[Hit] != 1 || rec.lookups[Miss] != 2 {
		t.Fatalf("lookups counted %v", rec.lookups)
	}
}

func TestEntryStopsAtItsEarliestExpiry(t *testing.T) {
	c, clk, _ := newCache(t)
	expiry := clk.now().Add(2 * time.Second)
	_, ticket := mustGet(t, c, 7, Miss)
	c.Fill(7, ticket, []Membership{{SegmentID: 1, Slug: "P", AddedAt: 1}, {SegmentID: 2, Slug: "Q", AddedAt: 1, ExpiresAt: expiry.UnixMicro()}})

	clk.set(expiry.Add(-time.Microsecond))
	if ms, _ := mustGet(t, c, 7, Hit); len(ms) != 2 || ms[1].ExpiresAt != expiry.UnixMicro() {
		t.Fatalf("hit %+v", ms)
	}
	clk.set(expiry)
	_, ticket = mustGet(t, c, 7, Expired)
	// The expired entry is replaced by the next fill.
	if !c.Fill(7, ticket, answer(8, 0)) {
		t.Fatal("fill after expiry refused")
	}
	if ms, _ := mustGet(t, c, 7, Hit); version(t, ms) != 8 {
		t.Fatalf("hit %+v", ms)
	}
}

func TestFillOfAnExpiredAnswerIsRefused(t *testing.T) {
	c, clk, _ := newCache(t)
	_, ticket := mustGet(t, c, 7, Miss)
	if c.Fill(7, ticket, answer(1, clk.now().UnixMicro())) {
		t.Fatal("stored an answer that expires now")
	}
	mustGet(t, c, 7, Miss)
}

// The set-after-invalidate race, step by step: a reader misses, a write
// commits and invalidates while the reader is at the database, then the
// reader fills with what it read before the write.
func TestFillOvertakenByAnInvalidationIsRefused(t *testing.T) {
	for _, tc := range []struct {
		name       string
		invalidate func(c *Cache)
	}{
		{"same user", func(c *Cache) { c.Invalidate("notified", 7) }},
		{"flush", func(c *Cache) { c.InvalidateAll("notified") }},
		{"reconnect", func(c *Cache) { c.Listening(false); c.Listening(true) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, rec := newCache(t)
			_, ticket := mustGet(t, c, 7, Miss)
			tc.invalidate(c)
			if c.Fill(7, ticket, answer(1, 0)) {
				t.Fatal("stale fill stored")
			}
			mustGet(t, c, 7, Miss)
			if rec.refused != 1 {
				t.Fatalf("refusals counted %d", rec.refused)
			}
		})
	}
}

func TestNotListeningServesNothing(t *testing.T) {
	c, _, rec := newCache(t)
	_, ticket := mustGet(t, c, 7, Miss)
	c.Fill(7, ticket, answer(7, 0))

	c.Listening(false)
	if _, ticket, st := c.Get(7, nil); st != NotListening || ticket.valid {
		t.Fatalf("Get while not listening = %v, ticket %v", st, ticket)
	}
	if rec.flushes["disconnect"] != 1 {
		t.Fatalf("flushes %v", rec.flushes)
	}
	c.Listening(true)
	// What was cached before the connection dropped is gone.
	mustGet(t, c, 7, Miss)
}

func TestNilCacheIsOff(t *testing.T) {
	var c *Cache
	if _, _, st := c.Get(1, nil); st != Off {
		t.Fatalf("status %v", st)
	}
	c.Invalidate("local", 1)
	c.InvalidateAll("local")
	c.Listening(true)
	if n, _ := c.Size(); c.Fill(1, Ticket{}, nil) || c.Serving() || n != 0 || c.FlushOnce("x") {
		t.Fatal("a nil cache did something")
	}
}

func TestCacheStatusHeader(t *testing.T) {
	for st, want := range map[Status]string{
		Hit:          "segments; hit",
		Miss:         "segments; fwd=miss",
		Expired:      "segments; fwd=stale",
		NotListening: `segments; fwd=bypass; detail="not listening"`,
		Off:          "segments; fwd=bypass; detail=off",
	} {
		if got := st.CacheStatus(); got != want {
			t.Errorf("%v: %q, want %q", st, got, want)
		}
	}
}

// Readers and writers of a few keys at once, against a "database" of one
// version per key. A writer commits (bumps the version), invalidates, then
// answers (publishes the version as done); a reader that misses reads the
// version, sometimes sleeps, and fills. No hit may return a version older
// than a write answered before the Get began. With the generation check
// removed from Fill this fails at once.
func TestNoHitOlderThanAnAnsweredWrite(t *testing.T) {
	c, _, _ := newCache(t)
	const keys = 4
	var db, done [keys]atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 2 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := i % keys
				v := db[k].Add(1)
				c.Invalidate("local", int64(k))
				for {
					d := done[k].Load()
					if d >= v || done[k].CompareAndSwap(d, v) {
						break
					}
				}
			}
		})
	}
	var stale atomic.Int64
	for range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := i % keys
				answered := done[k].Load()
				ms, ticket, st := c.Get(int64(k), nil)
				if st == Hit {
					if ms[0].AddedAt < answered {
						stale.Add(1)
					}
					continue
				}
				v := db[k].Load()
				if i%3 == 0 {
					time.Sleep(time.Microsecond) // a slow read
				}
				c.Fill(int64(k), ticket, answer(v, 0))
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if n := stale.Load(); n > 0 {
		t.Fatalf("%d hits older than an answered write", n)
	}
}
