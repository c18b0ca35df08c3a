package worker_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/tools/testenv"
)

// layerHolders returns the users holding slug, by source.
func (s *stack) layerHolders(slug string) (auto, manual []int64) {
	h := s.holders(slug)
	return h["auto"], h["manual"]
}

// checkLayer checks a layer's invariants: no user holds two of its
// segments; the auto members of each percent segment are exactly the
// registered users whose layer bucket is in its buckets, less those who
// opted out and those who hold another segment of the layer.
func checkLayer(t *testing.T, s *stack, layer string) {
	t.Helper()
	if two := s.scalar(`SELECT count(*) FROM (SELECT user_id FROM memberships WHERE layer_id IS NOT NULL GROUP BY user_id, layer_id HAVING count(*) > 1) t`); two != 0 {
		t.Fatalf("%d users hold two segments of a layer", two)
	}
	const wrong = `
		SELECT count(*) FROM users u
		CROSS JOIN segments s
		JOIN layers l ON l.id = s.layer_id AND l.slug = $1
		LEFT JOIN memberships m ON m.user_id = u.id AND m.segment_id = s.id
		WHERE s.auto_percent IS NOT NULL
		  AND coalesce(m.source = 'auto', false) IS DISTINCT FROM (
		      s.layer_buckets @> layer_bucket(l.slug, u.id)
		      AND NOT EXISTS (SELECT FROM segment_opt_outs o WHERE o.segment_id = s.id AND o.user_id = u.id)
		      AND NOT EXISTS (SELECT FROM memberships x WHERE x.user_id = u.id AND x.layer_id = l.id AND x.segment_id <> s.id)
		      AND (m.user_id IS NULL OR m.source = 'auto'))`
	if bad := s.scalar(wrong, layer); bad != 0 {
		t.Fatalf("%d (user, segment) pairs of layer %s break the bucket rule", bad, layer)
	}
}

// On 100,000 registered users, a layer with two percent segments and a
// manual one: every holder of a percent segment has its layer bucket in
// the segment's buckets, and everyone there holds it but those who opted
// out or hold another segment of the layer; a raise only adds, a lowering
// only removes; opt-outs stick; users registered later follow the
// buckets; history replays.
func TestLayeredRolloutsFollowTheBuckets(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{rolloutBatch: 5000})
	s.register(ids(1, 100000))
	s.mustDo("POST", "/api/v1/layers", map[string]any{"slug": "L"}, nil)
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "HAND", "layer": "L"}, nil)
	for u := int64(1); u <= 3000; u += 10 { // 300 hold HAND before any rollout
		s.mustDo("POST", fmt.Sprintf("/api/v1/users/%d/segments", u), map[string]any{"add": []string{"HAND"}}, nil)
	}
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "P1", "auto_percent": 30, "layer": "L"}, nil)
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "P2", "auto_percent": 40, "layer": "L"}, nil)
	s.waitRollout("P1")
	s.waitRollout("P2")
	checkLayer(t, s, "L")

	// 50 holders of P1 remove it: they stay out through every change.
	p1, _ := s.layerHolders("P1")
	var optedOut []int64
	for i := range 50 {
		u := p1[i*len(p1)/50]
		s.mustDo("POST", fmt.Sprintf("/api/v1/users/%d/segments", u), map[string]any{"remove": []string{"P1"}}, nil)
		optedOut = append(optedOut, u)
	}
	before1, _ := s.layerHolders("P1")
	before2, _ := s.layerHolders("P2")
	s.patchPercent("P1", 45) // raise: takes 1,500 more buckets
	s.patchPercent("P2", 25) // lowering: gives 1,500 back
	checkLayer(t, s, "L")
	after1, _ := s.layerHolders("P1")
	after2, _ := s.layerHolders("P2")
	for _, u := range before1 {
		if !slices.Contains(after1, u) {
			t.Fatalf("the raise took P1 from user %d", u)
		}
	}
	for _, u := range after2 {
		if !slices.Contains(before2, u) {
			t.Fatalf("the lowering gave P2 to user %d", u)
		}
	}
	for _, u := range optedOut {
		if slices.Contains(after1, u) {
			t.Fatalf("user %d removed P1 and got it back", u)
		}
	}
	if len(after1) <= len(before1) || len(after2) >= len(before2) {
		t.Fatalf("P1 %d → %d, P2 %d → %d holders", len(before1), len(after1), len(before2), len(after2))
	}
	t.Logf("P1: %d → %d holders, P2: %d → %d", len(before1), len(after1), len(before2), len(after2))

	// Users registered later follow the buckets.
	s.register(ids(100001, 105000))
	checkLayer(t, s, "L")
	var l httpapi.Layer
	s.mustDo("GET", "/api/v1/layers/L", nil, &l)
	// P1 took 7000..8499 (the lowest free), P2 gave back 5500..6999 (its
	// highest).
	if want := []httpapi.BucketRange{{5500, 7000}, {8500, 10000}}; !slices.Equal(l.Free, want) {
		t.Fatalf("free buckets %v, want %v", l.Free, want)
	}
	testenv.AssertHistoryReplays(t, s.pool)
}

// 16 goroutines give users two hand-given segments of one layer (each
// change adds one, sometimes removing the other) while a rollout of a third
// runs over the same users: no user ever holds two, every change is
// answered 200 or 409 layer-conflict, and history replays.
func TestLayerExclusionUnderConcurrency(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{rolloutBatch: 50})
	s.register(ids(1, 20000))
	s.mustDo("POST", "/api/v1/layers", map[string]any{"slug": "L"}, nil)
	for _, slug := range []string{"M1", "M2"} {
		s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": slug, "layer": "L"}, nil)
	}
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "P", "auto_percent": 60, "layer": "L"}, nil)

	ctx, stop := context.WithCancel(context.Background())
	var (
		wg                sync.WaitGroup
		ok, conflicts     atomic.Int64
		other             atomic.Int64
		watcherViolations atomic.Int64
	)
	for g := range 16 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for ctx.Err() == nil {
				u := 1 + r.Int64N(400)*50 // users across every batch of the rollout
				add := []string{"M1", "M2"}[r.IntN(2)]
				body := map[string]any{"add": []string{add}}
				if r.IntN(3) == 0 {
					body["remove"] = []string{map[string]string{"M1": "M2", "M2": "M1"}[add]}
				}
				if r.IntN(5) == 0 {
					body["remove"] = []string{"P"}
				}
				code := s.do("POST", fmt.Sprintf("/api/v1/users/%d/segments", u), body, nil)
				switch code {
				case http.StatusOK:
					ok.Add(1)
				case http.StatusConflict:
					conflicts.Add(1)
				default:
					other.Add(1)
				}
			}
		})
	}
	wg.Go(func() { // a watcher: never two at any moment
		for ctx.Err() == nil {
			if s.scalar(`SELECT count(*) FROM (SELECT user_id FROM memberships WHERE layer_id IS NOT NULL GROUP BY user_id, layer_id HAVING count(*) > 1) t`) != 0 {
				watcherViolations.Add(1)
			}
		}
	})
	s.waitRollout("P")
	stop()
	wg.Wait()
	t.Logf("%d changes answered 200, %d 409", ok.Load(), conflicts.Load())
	if other.Load() != 0 || watcherViolations.Load() != 0 {
		t.Fatalf("%d changes answered neither 200 nor 409; %d moments with two segments of the layer", other.Load(), watcherViolations.Load())
	}
	if ok.Load() == 0 || conflicts.Load() == 0 {
		t.Fatalf("the changes did not meet: %d 200, %d 409", ok.Load(), conflicts.Load())
	}
	// The rollout skipped those who held M1 or M2, and everyone else in its
	// buckets holds P (the changes may have removed P from some: opted out).
	checkLayer(t, s, "L")
	testenv.AssertHistoryReplays(t, s.pool)
}
