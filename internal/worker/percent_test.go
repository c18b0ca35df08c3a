package worker_test

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"

	gocmp "github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/tools/testenv"
)

// holders returns the users holding slug by source ("auto" or "manual").
func (s *stack) holders(slug string) map[string][]int64 {
	s.t.Helper()
	rows, err := s.pool.Query(context.Background(), `
		SELECT m.user_id, m.source FROM memberships m JOIN segments s ON s.id = m.segment_id
		WHERE s.slug = $1 ORDER BY m.user_id`, slug)
	if err != nil {
		s.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string][]int64{"auto": {}, "manual": {}}
	for rows.Next() {
		var (
			id     int64
			source string
		)
		if err := rows.Scan(&id, &source); err != nil {
			s.t.Fatal(err)
		}
		out[source] = append(out[source], id)
	}
	return out
}

// patchPercent changes slug's share and waits for its rollout.
func (s *stack) patchPercent(slug string, percent float64) httpapi.Segment {
	s.t.Helper()
	var seg httpapi.Segment
	s.mustDo("PATCH", "/api/v1/segments/"+slug, map[string]any{"auto_percent": percent}, &seg)
	if seg.AutoPercent == nil || *seg.AutoPercent != percent || seg.Rollout == nil || seg.Rollout.Status != "pending" {
		s.t.Fatalf("after PATCH %v: %+v", percent, seg)
	}
	return s.waitRollout(slug)
}

// checkExact checks the definition of "exact" (README, decisions): of the
// population (users registered when the share last changed) minus those
// who removed the segment explicitly, the round(N·q/100) lowest
// (hash, id) hold it; no one else holds it by the rule (source auto);
// memberships given by hand are as they were given.
func checkExact(t *testing.T, s *stack, slug string, percent float64, population, optedOut, manual []int64, seg httpapi.Segment) {
	t.Helper()
	eligible := slices.DeleteFunc(slices.Clone(population), func(id int64) bool { return slices.Contains(optedOut, id) })
	k := int(math.Round(float64(len(eligible)) * percent / 100))
	chosen := lowest(slug, eligible, k)
	h := s.holders(slug)
	wantAuto := slices.DeleteFunc(slices.Clone(chosen), func(id int64) bool { return slices.Contains(manual, id) })
	gotAuto := slices.DeleteFunc(slices.Clone(h["auto"]), func(id int64) bool { return !slices.Contains(population, id) })
	if diff := gocmp.Diff(wantAuto, gotAuto, cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("%v %%: auto members of the population (-want +got):\n%s", percent, diff)
	}
	if diff := gocmp.Diff(manual, h["manual"], cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("%v %%: manual members (-want +got):\n%s", percent, diff)
	}
	for _, id := range optedOut {
		if slices.Contains(h["auto"], id) {
			t.Fatalf("%v %%: user %d removed the segment and got it back", percent, id)
		}
	}
	if seg.Rollout.Total != int64(k) || seg.Rollout.Assigned != int64(k) {
		t.Fatalf("%v %%: rollout %+v, want %d of %d", percent, *seg.Rollout, k, k)
	}
	t.Logf("%v %%: %d of %d eligible chosen (%d opted out, %d by hand)", percent, k, len(eligible), len(optedOut), len(manual))
}

// TestPercentChangesEndExact takes a percent segment on 3,000 users through
// 20 → 50 → 10 → 35 % with explicit removals and hand-given memberships
// among them, and users registering from several goroutines during the
// last change: after each change exactly the lowest hashes of those who did
// not opt out hold it by the rule, opt-outs are never given it back,
// hand-given memberships are never touched, users registered after a
// change follow its bucket rule, and history replays to the stored state.
func TestPercentChangesEndExact(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{rolloutBatch: 250})
	users := ids(1, 3000)
	s.register(users)
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "RAMP", "auto_percent": 20}, nil)
	seg := s.waitRollout("RAMP")
	checkExact(t, s, "RAMP", 20, users, nil, nil, seg)

	// 40 holders remove it; 25 users are given it by hand, some of them
	// holders (their membership stays auto), most not.
	h := s.holders("RAMP")["auto"]
	var optedOut, manual []int64
	for i := 0; i < 40; i++ {
		id := h[i*len(h)/40]
		s.mustDo("POST", fmt.Sprintf("/api/v1/users/%d/segments", id), map[string]any{"remove": []string{"RAMP"}}, nil)
		optedOut = append(optedOut, id)
	}
	for id := int64(2951); id <= 2975; id++ {
		if slices.Contains(optedOut, id) {
			continue
		}
		var res httpapi.ChangeSegmentsResponse
		s.mustDo("POST", fmt.Sprintf("/api/v1/users/%d/segments", id), map[string]any{"add": []string{"RAMP"}}, &res)
		if len(res.Added) == 1 {
			manual = append(manual, id)
		}
	}
	slices.Sort(optedOut)

	for _, percent := range []float64{50, 10} {
		seg = s.patchPercent("RAMP", percent)
		checkExact(t, s, "RAMP", percent, users, optedOut, manual, seg)
	}

	// The last change while users register.
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := int64(0); ; i++ {
				select {
				case <-done:
					return
				default:
				}
				s.do("POST", "/api/v1/users", map[string]any{"user_ids": []int64{100_000 + int64(w)*100_000 + i}}, nil)
			}
		})
	}
	var patched httpapi.Segment
	s.mustDo("PATCH", "/api/v1/segments/RAMP", map[string]any{"auto_percent": 35}, &patched)
	seg = s.waitRollout("RAMP")
	close(done)
	wg.Wait()
	population := s.column(`SELECT id FROM users WHERE seq <= (SELECT population_seq FROM segments WHERE slug = 'RAMP') ORDER BY id`)
	checkExact(t, s, "RAMP", 35, population, optedOut, manual, seg)
	later := s.column(`SELECT id FROM users WHERE seq > (SELECT population_seq FROM segments WHERE slug = 'RAMP') ORDER BY id`)
	auto := s.holders("RAMP")["auto"]
	for _, id := range later {
		if want := domain.SegmentBucket("RAMP", id) < 3500; slices.Contains(auto, id) != want {
			t.Fatalf("user %d, registered after the change, holds RAMP: %v; its bucket says %v", id, !want, want)
		}
	}
	t.Logf("%d users registered during the last change; %d of them before it took the registry lock", len(later)+len(population)-3000, len(population)-3000)
	testenv.AssertHistoryReplays(t, s.pool)
}

// column runs a query returning user ids.
func (s *stack) column(sql string) []int64 {
	s.t.Helper()
	rows, err := s.pool.Query(context.Background(), sql)
	if err != nil {
		s.t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}
