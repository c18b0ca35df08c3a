package domain

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// A Layer holds segments that exclude each other: no user holds two
// segments of one layer at any moment. A layer has Buckets buckets; a
// percent segment of the layer owns auto_percent × 100 of them, and a
// registered user holds it by the rule iff the user's LayerBucket is one
// of them.
type Layer struct {
	ID          int64
	Slug        string
	Description string
	CreatedAt   time.Time
	// Segments are the layer's segments, sorted by slug.
	Segments []LayerSegment
}

// LayerSegment is a segment of a layer and the buckets it owns (none for
// a manual segment).
type LayerSegment struct {
	Slug        string
	AutoPercent *Percent
	Ranges      BucketRanges
}

// Free returns the layer's buckets no segment owns.
func (l Layer) Free() BucketRanges {
	var owned BucketRanges
	for _, s := range l.Segments {
		owned = owned.Union(s.Ranges)
	}
	return AllBuckets().Minus(owned)
}

// NewLayer is what an analyst supplies to create a layer.
type NewLayer struct {
	Slug        string
	Description string
}

// LayerHash is the stable hash of a user for a layer: the first four
// bytes of SHA-256 over "layer:<layer slug>:<user id in decimal>", as a
// big-endian unsigned 32-bit integer. The database computes the same
// (layer_hash).
func LayerHash(layer string, userID int64) uint32 {
	return NewLayerHasher(layer).Hash(userID)
}

// NewLayerHasher returns a hasher of users for the layer: its Hash is
// LayerHash, reusing one buffer.
func NewLayerHasher(layer string) *SegmentHasher { return NewSegmentHasher("layer:" + layer) }

// LayerBucket maps LayerHash onto Buckets buckets: floor(hash · 10000 /
// 2^32).
func LayerBucket(layer string, userID int64) int { return BucketOf(LayerHash(layer, userID)) }

// BucketOf maps a 32-bit hash onto Buckets buckets, in hash order.
func BucketOf(hash uint32) int { return int(uint64(hash) * Buckets >> 32) }

// BucketRange is the buckets From (included) to To (excluded).
type BucketRange struct{ From, To int }

// BucketRanges is a set of buckets as sorted, disjoint, non-adjacent
// ranges (adjacent ones are merged).
type BucketRanges []BucketRange

// AllBuckets is every bucket of a layer.
func AllBuckets() BucketRanges { return BucketRanges{{0, Buckets}} }

// Count is how many buckets rs holds.
func (rs BucketRanges) Count() int {
	n := 0
	for _, r := range rs {
		n += r.To - r.From
	}
	return n
}

// Contains reports whether bucket b is in rs.
func (rs BucketRanges) Contains(b int) bool {
	i, found := slices.BinarySearchFunc(rs, b, func(r BucketRange, b int) int {
		switch {
		case r.To <= b:
			return -1
		case r.From > b:
			return 1
		}
		return 0
	})
	return found && i < len(rs)
}

// normalize sorts rs, drops empty ranges and merges overlapping or
// adjacent ones.
func (rs BucketRanges) normalize() BucketRanges {
	in := slices.DeleteFunc(slices.Clone(rs), func(r BucketRange) bool { return r.To <= r.From })
	slices.SortFunc(in, func(a, b BucketRange) int { return a.From - b.From })
	var out BucketRanges
	for _, r := range in {
		if n := len(out); n > 0 && r.From <= out[n-1].To {
			out[n-1].To = max(out[n-1].To, r.To)
			continue
		}
		out = append(out, r)
	}
	return out
}

// Union returns the buckets in rs or in other.
func (rs BucketRanges) Union(other BucketRanges) BucketRanges {
	return slices.Concat(rs, other).normalize()
}

// Minus returns the buckets of rs not in other.
func (rs BucketRanges) Minus(other BucketRanges) BucketRanges {
	var out BucketRanges
	other = other.normalize()
	for _, r := range rs.normalize() {
		from := r.From
		for _, o := range other {
			if o.To <= from || o.From >= r.To {
				continue
			}
			if o.From > from {
				out = append(out, BucketRange{from, o.From})
			}
			from = max(from, o.To)
		}
		if from < r.To {
			out = append(out, BucketRange{from, r.To})
		}
	}
	return out.normalize()
}

// Lowest returns the n lowest buckets of rs; all of rs if it has fewer.
func (rs BucketRanges) Lowest(n int) BucketRanges {
	var out BucketRanges
	for _, r := range rs {
		if n <= 0 {
			break
		}
		take := min(n, r.To-r.From)
		out = append(out, BucketRange{r.From, r.From + take})
		n -= take
	}
	return out
}

// WithoutHighest returns rs without its n highest buckets.
func (rs BucketRanges) WithoutHighest(n int) BucketRanges {
	out := slices.Clone(rs)
	for len(out) > 0 && n > 0 {
		last := &out[len(out)-1]
		take := min(n, last.To-last.From)
		last.To -= take
		n -= take
		if last.To == last.From {
			out = out[:len(out)-1]
		}
	}
	return out
}

// Reshare returns the buckets a percent segment of a layer owns after its
// share moves from owned.Count() buckets to want (auto_percent × 100),
// given the layer's free buckets: more are taken from the lowest free,
// fewer are given back from its highest. It returns ErrConflict, as a
// *LayerFullError, if the layer has too few free buckets.
func Reshare(owned, free BucketRanges, want int) (BucketRanges, error) {
	have := owned.Count()
	switch {
	case want == have:
		return owned, nil
	case want < have:
		if want == 0 {
			return nil, nil
		}
		return owned.WithoutHighest(have - want), nil
	}
	need := want - have
	if free.Count() < need {
		return nil, &LayerFullError{Need: need, Free: free.Count()}
	}
	return owned.Union(free.Lowest(need)), nil
}

// ProblemLayerFull is the problem type of a LayerFullError, as the API
// and the audit log name it.
const ProblemLayerFull = "urn:segments:problem:layer-full"

// LayerFullError says a layer has too few free buckets for a share.
type LayerFullError struct {
	// Need is how many more buckets the share needs; Free how many the
	// layer has.
	Need, Free int
}

func (e *LayerFullError) Error() string {
	return fmt.Sprintf("the layer has %d free buckets and the share needs %d more (a percent segment of a layer owns auto_percent × 100 of its %d buckets); lower the share, or free buckets in the layer", e.Free, e.Need, Buckets)
}

// Unwrap makes a LayerFullError an ErrConflict.
func (e *LayerFullError) Unwrap() error { return ErrConflict }

// LayerConflict is a segment asked for that shares a layer with one the
// user holds (or with another asked for in the same change).
type LayerConflict struct {
	Slug, Held string
}

// LayerConflictError refuses a change that would give a user two segments
// of one layer.
type LayerConflictError struct {
	Conflicts []LayerConflict
}

func (e *LayerConflictError) Error() string {
	c := e.Conflicts[0]
	msg := fmt.Sprintf("%s and %s are segments of one layer, and a user holds at most one segment of a layer; remove %s first (the same change may remove it)", c.Slug, c.Held, c.Held)
	if len(e.Conflicts) > 1 {
		msg += fmt.Sprintf(" (%d conflicts, listed in conflicts)", len(e.Conflicts))
	}
	return msg + "; nothing was changed"
}

// Unwrap makes a LayerConflictError an ErrConflict.
func (e *LayerConflictError) Unwrap() error { return ErrConflict }

// LayerNotEmptyError refuses the deletion of a layer that has segments.
type LayerNotEmptyError struct {
	Layer    string
	Segments []string
}

func (e *LayerNotEmptyError) Error() string {
	return fmt.Sprintf("layer %q has %d segments (%s); delete them first", e.Layer, len(e.Segments), strings.Join(e.Segments, ", "))
}

// Unwrap makes a LayerNotEmptyError an ErrConflict.
func (e *LayerNotEmptyError) Unwrap() error { return ErrConflict }
