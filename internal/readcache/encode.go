package readcache

import (
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
)

// Membership is one active membership of a user as the cache keeps it.
type Membership struct {
	SegmentID int64
	// Slug is the segment's; a segment's slug never changes (a slug taken
	// again is a new segment).
	Slug string
	// AddedAt and ExpiresAt are Unix microseconds; ExpiresAt is 0 for a
	// permanent membership.
	AddedAt, ExpiresAt int64
	// Auto is set for a membership given by the percent rule.
	Auto bool
}

// An entry is a user's memberships in as few bytes as they take: the
// earliest expiry (its microseconds as a uvarint, 0 for none), the count,
// then per membership, in the order given (by slug): the segment id
// (uvarint), a flags byte (auto, has an expiry), added_at as a zigzag
// varint from the previous membership's (the first from 0), and the expiry
// as a uvarint after added_at. Memberships added by one change share
// added_at, so most take 3 or 4 bytes; a user with 5 takes 20 to 50.
const (
	flagAuto    = 1
	flagExpires = 2
)

// appendEntry appends the entry of ms to b.
func appendEntry(b []byte, ms []Membership) []byte {
	var until int64
	for _, m := range ms {
		if m.ExpiresAt != 0 && (until == 0 || m.ExpiresAt < until) {
			until = m.ExpiresAt
		}
	}
	b = binary.AppendUvarint(b, uint64(until))
	b = binary.AppendUvarint(b, uint64(len(ms)))
	var prev int64
	for _, m := range ms {
		b = binary.AppendUvarint(b, uint64(m.SegmentID))
		var flags byte
		if m.Auto {
			flags |= flagAuto
		}
		if m.ExpiresAt != 0 {
			flags |= flagExpires
		}
		b = append(b, flags)
		b = binary.AppendVarint(b, m.AddedAt-prev)
		prev = m.AddedAt
		if m.ExpiresAt != 0 {
			b = binary.AppendUvarint(b, uint64(m.ExpiresAt-m.AddedAt))
		}
	}
	return b
}

// entryUntil reads an entry's earliest expiry (0 for none).
func entryUntil(e []byte) int64 {
	u, _ := binary.Uvarint(e)
	return int64(u)
}

var errBadEntry = errors.New("readcache: unreadable entry")

// decodeEntry appends the memberships of e to into, their slugs from cat.
// It fails if e cannot be read or a segment id has no slug in cat; the
// caller then treats the entry as missing.
func decodeEntry(into []Membership, e []byte, cat *catalog) ([]Membership, error) {
	_, n := binary.Uvarint(e)
	count, k := binary.Uvarint(e[n:])
	if n <= 0 || k <= 0 {
		return into, errBadEntry
	}
	e = e[n+k:]
	var prev int64
	for range count {
		id, n := binary.Uvarint(e)
		if n <= 0 || len(e) <= n {
			return into, errBadEntry
		}
		flags := e[n]
		e = e[n+1:]
		delta, n := binary.Varint(e)
		if n <= 0 {
			return into, errBadEntry
		}
		e = e[n:]
		m := Membership{SegmentID: int64(id), AddedAt: prev + delta, Auto: flags&flagAuto != 0}
		prev = m.AddedAt
		if flags&flagExpires != 0 {
			d, n := binary.Uvarint(e)
			if n <= 0 {
				return into, errBadEntry
			}
			e = e[n:]
			m.ExpiresAt = m.AddedAt + int64(d)
		}
		slug, ok := cat.slug(m.SegmentID)
		if !ok {
			return into, errBadEntry
		}
		m.Slug = slug
		into = append(into, m)
	}
	return into, nil
}

// catalog maps segment ids to slugs, for decoding entries. Entries hold
// ids; the slugs come in with the fills. An id's slug never changes, so
// the catalog only grows; it is replaced whole (copy on write), since it
// is read on every hit and written once per new segment.
type catalog struct {
	mu    sync.Mutex
	slugs atomic.Pointer[map[int64]string]
}

func (c *catalog) slug(id int64) (string, bool) {
	m := c.slugs.Load()
	if m == nil {
		return "", false
	}
	s, ok := (*m)[id]
	return s, ok
}

// learn records the slugs of ms that the catalog lacks.
func (c *catalog) learn(ms []Membership) {
	missing := false
	for _, m := range ms {
		if _, ok := c.slug(m.SegmentID); !ok {
			missing = true
			break
		}
	}
	if !missing {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	next := make(map[int64]string)
	if old := c.slugs.Load(); old != nil {
		for k, v := range *old {
			next[k] = v
		}
	}
	for _, m := range ms {
		next[m.SegmentID] = m.Slug
	}
	c.slugs.Store(&next)
}
