package domain

import (
	"crypto/sha256"
	"encoding/binary"
	"strconv"
)

// Buckets is how many buckets users are spread over for each segment.
const Buckets = 10000

// SegmentHash is the stable hash of a user for a segment: the first four
// bytes of SHA-256 over "<slug>:<user id in decimal>", read as a big-endian
// unsigned 32-bit integer. The database computes the same (segment_hash).
func SegmentHash(slug string, userID int64) uint32 {
	return NewSegmentHasher(slug).Hash(userID)
}

// SegmentHasher computes SegmentHash for the users of one segment, reusing
// one buffer: hashing a million users allocates nothing per user. It is not
// safe for concurrent use.
type SegmentHasher struct {
	buf    []byte
	prefix int
}

// NewSegmentHasher returns a SegmentHasher for the segment slug.
func NewSegmentHasher(slug string) *SegmentHasher {
	buf := make([]byte, 0, len(slug)+21)
	buf = append(buf, slug...)
	buf = append(buf, ':')
	return &SegmentHasher{buf: buf, prefix: len(buf)}
}

// Hash returns SegmentHash of the hasher's segment and userID.
func (h *SegmentHasher) Hash(userID int64) uint32 {
	h.buf = strconv.AppendInt(h.buf[:h.prefix], userID, 10)
	sum := sha256.Sum256(h.buf)
	return binary.BigEndian.Uint32(sum[:4])
}

// SegmentBucket maps SegmentHash onto Buckets buckets in hash order:
// floor(hash · 10000 / 2^32). A user registered after a segment with
// AutoPercent p was created holds it iff SegmentBucket < p (in hundredths
// of a percent).
func SegmentBucket(slug string, userID int64) int {
	return int(uint64(SegmentHash(slug, userID)) * Buckets >> 32)
}

// Admits reports whether a user registered after a percent segment was
// created gets it.
func (p Percent) Admits(slug string, userID int64) bool {
	return SegmentBucket(slug, userID) < int(p)
}
