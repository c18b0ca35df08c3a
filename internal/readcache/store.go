package readcache

import (
	"sync"
)

// The store keeps encoded entries (see encode.go) within a byte budget, at
// about 90 bytes a user with 5 memberships: no cache library came close
// (otter spends about 150 bytes a key on its own bookkeeping, before the
// value; docs/decisions.md, "How is the read cache sized?").
//
// It is sharded by key; each shard holds two generations. A generation is
// an index (user id → where its entry is) over append-only chunks of
// bytes: an entry is written once and never overwritten, so a slice of a
// chunk handed to a reader stays valid whatever happens after. New entries
// go to the young generation; when it outgrows its half of the shard's
// budget, the old generation is dropped whole and the young one becomes
// old. An entry read from the old generation is copied into the young one,
// so what is read stays and what is not ages out: close to least recently
// used, at the cost of a map and a few chunks. Neither the index (int64 →
// uint64) nor the chunks hold pointers, so the garbage collector does not
// scan them.
//
// What a generation costs is counted exactly for its chunks and by
// indexEntryBytes for each index entry; together the two generations of
// every shard stay within the budget.

const (
	storeShards = 32
	// chunkSize is the unit in which a generation takes memory for its
	// entries. An entry larger than maxEntry is not stored.
	chunkSize = 8 << 10
	maxEntry  = chunkSize / 2
	// indexEntryBytes is what one index entry costs: a Go map of int64 to
	// uint64 takes 17 bytes a slot and keeps between 7/16 and 7/8 of its
	// slots used (it doubles when full): 19 to 39 bytes an entry.
	indexEntryBytes = 40
)

// store is the cache's memory. Its methods are safe for concurrent use.
type store struct {
	shards [storeShards]shard
	// genBudget is what one generation of one shard may take, in bytes.
	genBudget int64
}

type shard struct {
	mu         sync.Mutex
	young, old generation
	_          [40]byte // shards on separate cache lines
}

// generation is an index over append-only chunks. A position packs the
// chunk's number, the offset and the length: 24, 20 and 20 bits.
type generation struct {
	index  map[int64]uint64
	chunks [][]byte
}

func newStore(maxBytes int64) *store {
	return &store{genBudget: max(maxBytes/storeShards/2, 2*chunkSize)}
}

func (s *store) shard(key int64) *shard {
	return &s.shards[(uint64(key)*0x9E3779B97F4A7C15)>>(64-5)]
}

// bytes is what g takes.
func (g *generation) bytes() int64 {
	return int64(len(g.chunks))*chunkSize + int64(len(g.index))*indexEntryBytes
}

// bytesWith is what g would take with one more entry of n bytes.
func (g *generation) bytesWith(n int) int64 {
	chunks := len(g.chunks)
	if chunks == 0 || len(g.chunks[chunks-1])+n > chunkSize {
		chunks++
	}
	return int64(chunks)*chunkSize + int64(len(g.index)+1)*indexEntryBytes
}

func (g *generation) get(key int64) ([]byte, bool) {
	pos, ok := g.index[key]
	if !ok {
		return nil, false
	}
	chunk, off, n := pos>>40, (pos>>20)&(1<<20-1), pos&(1<<20-1)
	return g.chunks[chunk][off : off+n : off+n], true
}

// put appends e to g and indexes it under key.
func (g *generation) put(key int64, e []byte) {
	last := len(g.chunks) - 1
	if last < 0 || len(g.chunks[last])+len(e) > chunkSize {
		g.chunks = append(g.chunks, make([]byte, 0, chunkSize))
		last++
	}
	off := len(g.chunks[last])
	g.chunks[last] = append(g.chunks[last], e...)
	if g.index == nil {
		g.index = make(map[int64]uint64)
	}
	g.index[key] = uint64(last)<<40 | uint64(off)<<20 | uint64(len(e))
}

// Get returns the entry stored under key. The slice is the store's and
// must not be changed; it stays valid.
func (s *store) Get(key int64) ([]byte, bool) {
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e, ok := sh.young.get(key); ok {
		return e, true
	}
	e, ok := sh.old.get(key)
	if ok {
		// Read again: it moves to the young generation.
		delete(sh.old.index, key)
		s.putLocked(sh, key, e)
	}
	return e, ok
}

// Set stores e under key, replacing what was there. An entry over maxEntry
// is not stored (and what was there is dropped).
func (s *store) Set(key int64, e []byte) {
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	delete(sh.old.index, key)
	if len(e) > maxEntry {
		delete(sh.young.index, key)
		return
	}
	s.putLocked(sh, key, e)
}

func (s *store) putLocked(sh *shard, key int64, e []byte) {
	if sh.young.bytesWith(len(e)) > s.genBudget {
		sh.old, sh.young = sh.young, generation{}
		delete(sh.old.index, key)
	}
	sh.young.put(key, e)
}

// Delete drops key's entry.
func (s *store) Delete(key int64) {
	sh := s.shard(key)
	sh.mu.Lock()
	delete(sh.young.index, key)
	delete(sh.old.index, key)
	sh.mu.Unlock()
}

// Clear drops every entry.
func (s *store) Clear() {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		sh.young, sh.old = generation{}, generation{}
		sh.mu.Unlock()
	}
}

// Stats returns how many entries are stored and the bytes the store takes.
func (s *store) Stats() (entries int, bytes int64) {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		entries += len(sh.young.index) + len(sh.old.index)
		bytes += sh.young.bytes() + sh.old.bytes()
		sh.mu.Unlock()
	}
	return entries, bytes
}
