package domain_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/segments-service/segments/internal/domain"
)

type R = domain.BucketRanges

// The allocation a layer's percent segments go through, step by step:
// 30 %, then 40 % (the lowest free), a raise (the lowest free, after a
// hole), a lowering (from the highest), a deletion, and a share that does
// not fit.
func TestLayerAllocation(t *testing.T) {
	layer := domain.Layer{}
	set := func(slug string, ranges R) {
		layer.Segments = slices.DeleteFunc(layer.Segments, func(s domain.LayerSegment) bool { return s.Slug == slug })
		if ranges != nil {
			layer.Segments = append(layer.Segments, domain.LayerSegment{Slug: slug, Ranges: ranges})
		}
	}
	share := func(slug string, want int) R {
		t.Helper()
		var owned R
		for _, s := range layer.Segments {
			if s.Slug == slug {
				owned = s.Ranges
			}
		}
		free := layer.Free()
		for _, s := range layer.Segments {
			if s.Slug == slug {
				free = free.Minus(s.Ranges)
			}
		}
		got, err := domain.Reshare(owned, free, want)
		if err != nil {
			t.Fatalf("%s to %d: %v", slug, want, err)
		}
		set(slug, got)
		return got
	}
	steps := []struct {
		slug string
		want int
		got  R
		free R
	}{
		{"A", 3000, R{{0, 3000}}, R{{3000, 10000}}},
		{"B", 4000, R{{3000, 7000}}, R{{7000, 10000}}},
		{"A", 1000, R{{0, 1000}}, R{{1000, 3000}, {7000, 10000}}},    // lowered: the highest go back
		{"C", 2500, R{{1000, 3000}, {7000, 7500}}, R{{7500, 10000}}}, // the lowest free, in two ranges
		{"A", 2000, R{{0, 1000}, {7500, 8500}}, R{{8500, 10000}}},    // raised: more from the lowest free
		{"C", 0, nil, R{{1000, 3000}, {7000, 7500}, {8500, 10000}}},  // to 0: every bucket back
		{"B", 7000, R{{1000, 7500}, {8500, 9000}}, R{{9000, 10000}}}, // 3000 more: the lowest free
	}
	for i, s := range steps {
		got := share(s.slug, s.want)
		if diff := cmp.Diff(s.got, got); diff != "" {
			t.Fatalf("step %d (%s to %d): ranges (-want +got):\n%s", i, s.slug, s.want, diff)
		}
		if diff := cmp.Diff(s.free, layer.Free()); diff != "" {
			t.Fatalf("step %d: free (-want +got):\n%s", i, diff)
		}
	}
	// Full: 1000 free, 1500 asked; nothing changes.
	_, err := domain.Reshare(nil, layer.Free(), 1500)
	var full *domain.LayerFullError
	if !errors.As(err, &full) || full.Free != 1000 || full.Need != 1500 || !errors.Is(err, domain.ErrConflict) {
		t.Fatalf("too big a share: %v", err)
	}
	// Deleting a segment frees all it owned.
	set("B", nil)
	if diff := cmp.Diff(R{{1000, 7500}, {8500, 10000}}, layer.Free()); diff != "" {
		t.Fatalf("after B's deletion, free (-want +got):\n%s", diff)
	}
}

func TestBucketRanges(t *testing.T) {
	rs := R{{5, 7}, {0, 2}, {2, 3}, {9, 9}}
	if diff := cmp.Diff(R{{0, 3}, {5, 7}}, rs.Union(nil)); diff != "" {
		t.Errorf("normalized (-want +got):\n%s", diff)
	}
	norm := rs.Union(nil)
	for b, want := range map[int]bool{0: true, 2: true, 3: false, 4: false, 5: true, 6: true, 7: false, 10000: false, -1: false} {
		if norm.Contains(b) != want {
			t.Errorf("Contains(%d) = %v", b, !want)
		}
	}
	if got := norm.Count(); got != 5 {
		t.Errorf("Count = %d", got)
	}
	if diff := cmp.Diff(R{{0, 3}, {5, 6}}, norm.WithoutHighest(1)); diff != "" {
		t.Errorf("WithoutHighest(1) (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(R{{0, 2}}, norm.WithoutHighest(3)); diff != "" {
		t.Errorf("WithoutHighest(3) (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(R{{0, 3}, {5, 6}}, norm.Lowest(4)); diff != "" {
		t.Errorf("Lowest(4) (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(R{{0, 1}, {2, 3}, {6, 7}}, norm.Minus(R{{1, 2}, {4, 6}})); diff != "" {
		t.Errorf("Minus (-want +got):\n%s", diff)
	}
}

// The layer hash's test vector, which the database's layer_hash must give
// too (internal/postgres).
func TestLayerBucketVector(t *testing.T) {
	if got := domain.LayerHash("CHECKOUT", 1000); got != domain.SegmentHash("layer:CHECKOUT", 1000) {
		t.Fatalf("LayerHash = %d", got)
	}
	if b := domain.LayerBucket("CHECKOUT", 1000); b < 0 || b >= domain.Buckets {
		t.Fatalf("bucket %d", b)
	}
}
