package readcache

import (
	"strconv"
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
	c := New(100, clk.now, rec)
	c.Listening(true)
	return c, clk, rec
}

func mustGet(t *testing.T, c *Cache, id int64, want Status) ([]byte, Ticket) {
	t.Helper()
	body, ticket, st := c.Get(id)
	if st != want {
		t.Fatalf("Get(%d) = %v, want %v", id, st, want)
	}
	return body, ticket
}

func TestFillThenHit(t *testing.T) {
	c, _, rec := newCache(t)
	_, ticket := mustGet(t, c, 7, Miss)
	if !c.Fill(7, ticket, []byte("seven"), time.Time{}) {
		t.Fatal("fill refused")
	}
	if body, _ := mustGet(t, c, 7, Hit); string(body) != "seven" {
		t.Fatalf("hit body %q", body)
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
	c.Fill(7, ticket, []byte("expiring"), expiry)

	clk.set(expiry.Add(-time.Nanosecond))
	mustGet(t, c, 7, Hit)
	clk.set(expiry)
	_, ticket = mustGet(t, c, 7, Expired)
	// The expired entry is replaced by the next fill.
	if !c.Fill(7, ticket, []byte("after"), time.Time{}) {
		t.Fatal("fill after expiry refused")
	}
	if body, _ := mustGet(t, c, 7, Hit); string(body) != "after" {
		t.Fatalf("body %q", body)
	}
}

func TestFillOfAnExpiredAnswerIsRefused(t *testing.T) {
	c, clk, _ := newCache(t)
	_, ticket := mustGet(t, c, 7, Miss)
	if c.Fill(7, ticket, []byte("x"), clk.now()) {
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
			if c.Fill(7, ticket, []byte("old"), time.Time{}) {
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
	c.Fill(7, ticket, []byte("seven"), time.Time{})

	c.Listening(false)
	if _, ticket, st := c.Get(7); st != NotListening || ticket.valid {
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
	if _, _, st := c.Get(1); st != Off {
		t.Fatalf("status %v", st)
	}
	c.Invalidate("local", 1)
	c.InvalidateAll("local")
	c.Listening(true)
	if c.Fill(1, Ticket{}, nil, time.Time{}) || c.Serving() || c.Len() != 0 {
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
				body, ticket, st := c.Get(int64(k))
				if st == Hit {
					if v, _ := strconv.ParseInt(string(body), 10, 64); v < answered {
						stale.Add(1)
					}
					continue
				}
				v := db[k].Load()
				if i%3 == 0 {
					time.Sleep(time.Microsecond) // a slow read
				}
				c.Fill(int64(k), ticket, []byte(strconv.FormatInt(v, 10)), time.Time{})
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
