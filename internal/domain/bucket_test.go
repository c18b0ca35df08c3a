package domain_test

import (
	"testing"

	"github.com/segments-service/segments/internal/domain"
)

// bucketVectors are published in README.md; any client must reproduce them.
var bucketVectors = []struct {
	slug   string
	userID int64
	hash   uint32
	bucket int
}{
	{"AVITO_VOICE_MESSAGES", 1000, 1577238094, 3672},
	{"AVITO_VOICE_MESSAGES", 1001, 644765189, 1501},
	{"AVITO_DISCOUNT_30", 1000, 1228859994, 2861},
	{"AVITO_DISCOUNT_30", 1, 2478045787, 5769},
	{"A", 9223372036854775807, 1925712490, 4483},
}

func TestBucketVectors(t *testing.T) {
	for _, v := range bucketVectors {
		if h, b := domain.SegmentHash(v.slug, v.userID), domain.SegmentBucket(v.slug, v.userID); h != v.hash || b != v.bucket {
			t.Errorf("%s:%d: hash %d bucket %d, want %d %d", v.slug, v.userID, h, b, v.hash, v.bucket)
		}
	}
}

// TestSegmentHasherReused checks that one hasher gives every user of its
// segment the hash a fresh one gives, ids of any length in any order.
func TestSegmentHasherReused(t *testing.T) {
	h := domain.NewSegmentHasher("AVITO_VOICE_MESSAGES")
	for _, id := range []int64{1000, 9223372036854775807, 1, 1001, 1000, 42} {
		fresh := domain.NewSegmentHasher("AVITO_VOICE_MESSAGES").Hash(id)
		if got := h.Hash(id); got != fresh {
			t.Errorf("user %d: reused hasher %d, fresh %d", id, got, fresh)
		}
	}
	if got := h.Hash(1000); got != 1577238094 {
		t.Errorf("user 1000: %d, want README's 1577238094", got)
	}
}

func TestBucketsSpreadEvenly(t *testing.T) {
	const users = 100000
	var counts [10]int
	for id := int64(1); id <= users; id++ {
		counts[domain.SegmentBucket("SPREAD", id)/1000]++
	}
	for i, c := range counts {
		if c < users/10*95/100 || c > users/10*105/100 {
			t.Errorf("bucket decile %d holds %d of %d users", i, c, users)
		}
	}
}

func TestPercentAdmits(t *testing.T) {
	if domain.Percent(0).Admits("X", 1) {
		t.Error("0 % admits a user")
	}
	for id := int64(1); id < 1000; id++ {
		if !domain.MaxPercent.Admits("X", id) {
			t.Fatalf("100 %% refuses user %d", id)
		}
		b := domain.SegmentBucket("X", id)
		if domain.Percent(b).Admits("X", id) || !domain.Percent(b+1).Admits("X", id) {
			t.Fatalf("user %d in bucket %d: the rule is not bucket < p", id, b)
		}
	}
}

func BenchmarkSegmentBucket(b *testing.B) {
	for i := range b.N {
		domain.SegmentBucket("AVITO_VOICE_MESSAGES", int64(i))
	}
}

// BenchmarkSegmentHasher hashes with one hasher per segment, as a
// rollout's planning and batches do.
func BenchmarkSegmentHasher(b *testing.B) {
	h := domain.NewSegmentHasher("AVITO_VOICE_MESSAGES")
	for i := range b.N {
		h.Hash(int64(i))
	}
}
