// Package readcache keeps users' active memberships (the answer to GET
// /users/{id}/segments) in memory, exactly: an entry is never served at or
// after the earliest expiry it holds, and an entry filled from a read that
// an invalidation overtook is refused. It is bounded in bytes and keeps
// each user in about 90 bytes (5 memberships; store.go, encode.go).
//
// The fill race it closes: a reader misses, reads the old memberships, a
// writer commits and invalidates (nothing is cached yet), then the reader
// stores what it read — stale until the next change. Each key belongs to
// one of a fixed set of stripes, each with a generation counter. A miss
// hands out a Ticket holding its stripe's generation, taken before the
// database read; an invalidation bumps the generation under the stripe's
// lock; a fill is stored only if, under the same lock, the generation is
// still the ticket's. (The leases of "Scaling Memcache at Facebook", in
// process.)
//
// The cache serves only while the notifications that carry other replicas'
// changes are arriving: Listening(false) drops every entry and refuses
// fills until Listening(true).
package readcache

import (
	"sync"
	"sync/atomic"
	"time"
)

// Status is how a lookup went, for the Cache-Status header and metrics.
type Status uint8

// Lookup outcomes.
const (
	// Hit: the answer came from memory.
	Hit Status = iota
	// Miss: no entry; the caller reads the database and fills.
	Miss
	// Expired: an entry was there, but a membership in it has expired.
	Expired
	// NotListening: the cache is not serving because its notification
	// connection is down.
	NotListening
	// Off: there is no cache (CACHE_MAX_BYTES=0).
	Off
)

// String names s for metrics labels.
func (s Status) String() string {
	switch s {
	case Hit:
		return "hit"
	case Miss:
		return "miss"
	case Expired:
		return "expired"
	case NotListening:
		return "not_listening"
	default:
		return "off"
	}
}

// CacheStatus is s as an RFC 9211 Cache-Status header value for a cache
// named segments.
func (s Status) CacheStatus() string {
	switch s {
	case Hit:
		return "segments; hit"
	case Miss:
		return "segments; fwd=miss"
	case Expired:
		return "segments; fwd=stale"
	case NotListening:
		return `segments; fwd=bypass; detail="not listening"`
	default:
		return `segments; fwd=bypass; detail=off`
	}
}

// Recorder counts what the cache does; metrics.Metrics is one.
type Recorder interface {
	CacheLookup(Status)
	// CacheInvalidated counts n users invalidated by source: local (a
	// write through this process) or notified (another process's write).
	CacheInvalidated(source string, n int)
	// CacheFlushed counts a drop of every entry by cause: local, notified
	// or disconnect (the notification connection was lost).
	CacheFlushed(cause string)
	// CacheFillRefused counts fills refused because an invalidation
	// overtook the read.
	CacheFillRefused()
}

// stripes is how many generation counters keys share. An invalidation of
// one user refuses the fills in flight for the other users of its stripe;
// with 4096 stripes that is rare.
const (
	stripeBits = 12
	stripes    = 1 << stripeBits
)

type stripe struct {
	mu  sync.Mutex
	gen uint64
	_   [48]byte // one cache line per stripe
}

// Cache holds users' active memberships, compactly, keyed by user id. A
// nil *Cache is a cache that is off: lookups say Off and everything else
// does nothing.
type Cache struct {
	store     *store
	catalog   catalog
	stripes   []stripe
	listening atomic.Bool
	now       func() time.Time
	rec       Recorder

	// finished holds the keys FlushOnce has flushed for.
	finishedMu sync.Mutex
	finished   map[string]struct{}
}

// Ticket lets a miss fill its key. The zero Ticket fills nothing.
type Ticket struct {
	stripe uint32
	gen    uint64
	valid  bool
}

// New returns a cache that takes at most maxBytes of memory for its
// entries, reads time from now and counts on rec. It does not serve until
// Listening(true).
func New(maxBytes int64, now func() time.Time, rec Recorder) *Cache {
	return &Cache{store: newStore(maxBytes), stripes: make([]stripe, stripes), now: now, rec: rec}
}

func stripeOf(id int64) uint32 {
	// Fibonacci hashing spreads sequential ids over the stripes.
	return uint32((uint64(id) * 0x9E3779B97F4A7C15) >> (64 - stripeBits))
}

// Get appends to into the memberships cached for id, sorted by slug, if an
// entry is there and still exact. On Miss and Expired it returns the ticket
// to Fill with after reading the database; it must be taken before that
// read.
func (c *Cache) Get(id int64, into []Membership) ([]Membership, Ticket, Status) {
	if c == nil {
		return into, Ticket{}, Off
	}
	ms, t, st := c.get(id, into)
	c.rec.CacheLookup(st)
	return ms, t, st
}

func (c *Cache) get(id int64, into []Membership) ([]Membership, Ticket, Status) {
	if !c.listening.Load() {
		return into, Ticket{}, NotListening
	}
	if e, ok := c.store.Get(id); ok {
		if until := entryUntil(e); until != 0 && c.now().UnixMicro() >= until {
			return into, c.ticket(id), Expired
		}
		if ms, err := decodeEntry(into, e, &c.catalog); err == nil {
			return ms, Ticket{}, Hit
		}
	}
	return into, c.ticket(id), Miss
}

func (c *Cache) ticket(id int64) Ticket {
	i := stripeOf(id)
	s := &c.stripes[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	return Ticket{stripe: i, gen: s.gen, valid: true}
}

// Fill stores ms, the user's active memberships sorted by slug, for id if
// nothing invalidated id's stripe since t was handed out and the cache is
// still listening; an entry whose earliest expiry has passed is not
// stored. It reports whether ms was stored.
func (c *Cache) Fill(id int64, t Ticket, ms []Membership) bool {
	if c == nil || !t.valid {
		return false
	}
	var scratch [256]byte
	e := appendEntry(scratch[:0], ms)
	if until := entryUntil(e); until != 0 && c.now().UnixMicro() >= until {
		return false
	}
	c.catalog.learn(ms)
	s := &c.stripes[t.stripe]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen != t.gen || !c.listening.Load() {
		c.rec.CacheFillRefused()
		return false
	}
	c.store.Set(id, e)
	return true
}

// Invalidate drops ids' entries and voids the tickets of their stripes.
// source labels the metric (see Recorder).
func (c *Cache) Invalidate(source string, ids ...int64) {
	if c == nil {
		return
	}
	for _, id := range ids {
		s := &c.stripes[stripeOf(id)]
		s.mu.Lock()
		s.gen++
		c.store.Delete(id)
		s.mu.Unlock()
	}
	c.rec.CacheInvalidated(source, len(ids))
}

// InvalidateAll drops every entry and voids every ticket. cause labels the
// metric (see Recorder).
func (c *Cache) InvalidateAll(cause string) {
	if c == nil {
		return
	}
	c.bumpAll()
	c.store.Clear()
	c.rec.CacheFlushed(cause)
}

// bumpAll voids every ticket handed out so far. A fill that got in before
// its stripe's bump is removed by the InvalidateAll that follows.
func (c *Cache) bumpAll() {
	for i := range c.stripes {
		s := &c.stripes[i]
		s.mu.Lock()
		s.gen++
		s.mu.Unlock()
	}
}

// Listening says whether the notifications of other replicas' changes are
// arriving. Going down drops everything and stops serving; coming up voids
// tickets handed out before (their reads may have missed a change nobody
// told this process about), then serves.
func (c *Cache) Listening(on bool) {
	if c == nil {
		return
	}
	if !on {
		if c.listening.Swap(false) {
			c.InvalidateAll("disconnect")
		}
		return
	}
	c.bumpAll()
	c.listening.Store(true)
}

// maxFinished bounds the keys FlushOnce remembers; past it they are
// forgotten, which costs at most one more flush each.
const maxFinished = 10000

// FlushOnce drops every entry (and voids every ticket) the first time it
// is called with key, and does nothing after. The API calls it before it
// answers that a bulk change — a rollout, an import — is done, keyed by
// that change: the change's invalidations may not have reached this
// process yet, and after the flush its reads of the users the change
// touched come from the database. It reports whether it flushed.
func (c *Cache) FlushOnce(key string) bool {
	if c == nil {
		return false
	}
	c.finishedMu.Lock()
	defer c.finishedMu.Unlock()
	if _, done := c.finished[key]; done {
		return false
	}
	if c.finished == nil || len(c.finished) >= maxFinished {
		c.finished = make(map[string]struct{})
	}
	c.InvalidateAll("finished")
	c.finished[key] = struct{}{}
	return true
}

// Serving reports whether the cache answers reads: it exists and listens.
func (c *Cache) Serving() bool { return c != nil && c.listening.Load() }

// Size returns how many users are cached and the bytes their entries take.
func (c *Cache) Size() (entries int, bytes int64) {
	if c == nil {
		return 0, 0
	}
	return c.store.Stats()
}
