package worker_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	"github.com/hibiken/asynq"
	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/internal/service"
	"github.com/segments-service/segments/internal/worker"
	"github.com/segments-service/segments/tools/apitest"
	"github.com/segments-service/segments/tools/testenv"
)

// lowest returns the k users with the lowest (SegmentHash, id): the users a
// rollout must choose.
func lowest(slug string, users []int64, k int) []int64 {
	sorted := slices.Clone(users)
	slices.SortFunc(sorted, func(a, b int64) int {
		return cmp.Or(cmp.Compare(domain.SegmentHash(slug, a), domain.SegmentHash(slug, b)), cmp.Compare(a, b))
	})
	out := sorted[:k]
	slices.Sort(out)
	return out
}

func ids(from, to int64) []int64 {
	var out []int64
	for id := from; id <= to; id++ {
		out = append(out, id)
	}
	return out
}

func (s *stack) register(users []int64) {
	s.t.Helper()
	for chunk := range slices.Chunk(users, 10000) {
		s.mustDo("POST", "/api/v1/users", map[string]any{"user_ids": chunk}, nil)
	}
}

// members returns the users holding slug, sorted, and fails the test if any
// holds it other than by the rollout or the rule (source auto).
func (s *stack) members(slug string) []int64 {
	s.t.Helper()
	h := s.holders(slug)
	if len(h["manual"]) > 0 {
		s.t.Errorf("users %v hold %s by hand", h["manual"], slug)
	}
	return h["auto"]
}

func (s *stack) waitRollout(slug string) httpapi.Segment {
	s.t.Helper()
	var seg httpapi.Segment
	testenv.Eventually(s.t, 60*time.Second, "the rollout of "+slug+" did not finish", func() bool {
		s.mustDo("GET", "/api/v1/segments/"+slug, nil, &seg)
		return seg.Rollout != nil && seg.Rollout.Status == "done"
	})
	return seg
}

func (s *stack) rollouts() *service.Rollouts {
	return service.NewRollouts(postgres.NewRolloutRepo(s.pool, postgres.NopRecorder{}), apitest.NopScheduler{},
		service.RolloutSettings{Workers: 2, Batch: 7}, zap.NewNop())
}

func (s *stack) segmentID(slug string) int64 {
	return s.scalar(`SELECT id FROM segments WHERE slug = $1`, slug)
}

// TestRolloutAtItsRate: with ROLLOUT_RATE, a real worker's rollout goes
// through its users no faster than the rate and ends as an unbounded one
// does. 200 users in batches of 50 at 100 a second: each batch after the
// first waits half a second, so the first batch's memberships and the
// last's are at least 1.5 s apart, less the first batch's own time (an
// unbounded rollout of 200 users takes milliseconds).
func TestRolloutAtItsRate(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{rolloutRate: 100})
	users := ids(1, 200)
	s.register(users)

	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "PACED", "auto_percent": 50}, nil)
	checkExact(t, s, "PACED", 50, users, nil, nil, s.waitRollout("PACED"))
	const span = `SELECT (extract(epoch FROM max(at) - min(at)) * 1000)::bigint FROM membership_history WHERE slug = 'PACED'`
	if ms := s.scalar(span); ms < 1000 {
		t.Errorf("the rollout's memberships span %d ms; at the rate they cannot span less than 1,500 ms less the first batch's time", ms)
	}
}

func TestRolloutChoosesExactlyTheLowestHashes(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{})
	users := ids(1, 200)
	s.register(users)

	var created httpapi.Segment
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "HALF", "auto_percent": 50}, &created)
	if created.AutoPercent == nil || *created.AutoPercent != 50 || created.Rollout == nil || created.Rollout.Status != "pending" {
		t.Fatalf("created: %+v rollout %+v", created, created.Rollout)
	}

	seg := s.waitRollout("HALF")
	if *seg.Rollout != (httpapi.Rollout{Status: "done", Assigned: 100, Total: 100}) || seg.MemberCount != 100 {
		t.Errorf("after the rollout: %+v, member_count %d", *seg.Rollout, seg.MemberCount)
	}
	want := lowest("HALF", users, 100)
	if diff := gocmp.Diff(want, s.members("HALF")); diff != "" {
		t.Fatalf("members (-want +got):\n%s", diff)
	}
	// Every read agrees, again and again.
	for range 2 {
		for _, id := range users {
			held := slices.Contains(s.held(id), "HALF")
			if held != slices.Contains(want, id) {
				t.Fatalf("user %d holds HALF: %v", id, held)
			}
		}
	}
	// Running the rollout again (a retried task) changes nothing.
	if err := s.rollouts().Run(t.Context(), s.segmentID("HALF")); err != nil {
		t.Fatal(err)
	}
	if diff := gocmp.Diff(want, s.members("HALF")); diff != "" {
		t.Errorf("members after a second run (-want +got):\n%s", diff)
	}
	if n := s.scalar(`SELECT count(*) FROM membership_history WHERE slug = 'HALF' AND operation = 'add' AND reason = 'auto'`); n != 100 {
		t.Errorf("%d auto adds in history, want 100", n)
	}
	testenv.AssertHistoryReplays(t, s.pool)
}

func TestUsersRegisteredLaterFollowTheBucketRule(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{})
	var seg httpapi.Segment
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "THIRTY", "auto_percent": 30.25}, &seg)
	if seg.AutoPercent == nil || *seg.AutoPercent != 30.25 {
		t.Fatalf("auto_percent = %v", seg.AutoPercent)
	}
	seg = s.waitRollout("THIRTY")
	if *seg.Rollout != (httpapi.Rollout{Status: "done"}) {
		t.Errorf("rollout over no users: %+v", *seg.Rollout)
	}

	// 10,000 never-seen ids, registered in bulk.
	users := ids(5_000_001, 5_010_000)
	s.register(users)
	// Three more, first seen by a read, by a change, by a change with an
	// unknown slug (which registers nobody).
	s.held(77)
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "MANUAL"}, nil)
	s.mustDo("POST", "/api/v1/users/78/segments", map[string]any{"add": []string{"MANUAL"}}, nil)
	if code := s.do("POST", "/api/v1/users/79/segments", map[string]any{"add": []string{"NOPE"}}, nil); code != http.StatusNotFound {
		t.Fatalf("unknown slug: %d", code)
	}
	users = append(users, 77, 78)
	slices.Sort(users)

	p := domain.Percent(3025)
	want := []int64{}
	for _, id := range users {
		if p.Admits("THIRTY", id) {
			want = append(want, id)
		}
	}
	if diff := gocmp.Diff(want, s.members("THIRTY")); diff != "" {
		t.Fatalf("members (-rule +got):\n%s", diff)
	}
	share := float64(len(want)) / float64(len(users))
	t.Logf("%d of %d new users (%.2f %%) got a 30.25 %% segment", len(want), len(users), 100*share)
	if share < 0.2825 || share > 0.3225 {
		t.Errorf("share %.4f is not within 2 points of 30.25 %%", share)
	}
	testenv.AssertHistoryReplays(t, s.pool)
}

func TestExplicitRemovalOfAnAutoSegmentSticks(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{})
	s.register(ids(1, 20))
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "ALL", "auto_percent": 100}, nil)
	s.waitRollout("ALL")
	if got := s.members("ALL"); len(got) != 20 {
		t.Fatalf("members of a 100 %% segment: %v", got)
	}
	var res httpapi.ChangeSegmentsResponse
	s.mustDo("POST", "/api/v1/users/3/segments", map[string]any{"remove": []string{"ALL"}}, &res)
	if len(res.Removed) != 1 {
		t.Fatalf("removal: %+v", res)
	}
	// Nothing brings it back: reads, registering again, another rollout run.
	s.held(3)
	s.register([]int64{3})
	if err := s.rollouts().Run(t.Context(), s.segmentID("ALL")); err != nil {
		t.Fatal(err)
	}
	if held := s.held(3); slices.Contains(held, "ALL") {
		t.Errorf("user 3 holds ALL again: %v", held)
	}
	if got := s.members("ALL"); len(got) != 19 {
		t.Errorf("%d members, want 19", len(got))
	}
}

func TestZeroAndHundredPercent(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{})
	s.register(ids(1, 50))
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "NOBODY", "auto_percent": 0}, nil)
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "EVERYONE", "auto_percent": 100}, nil)
	if seg := s.waitRollout("NOBODY"); *seg.Rollout != (httpapi.Rollout{Status: "done"}) {
		t.Errorf("0 %% rollout: %+v", *seg.Rollout)
	}
	if seg := s.waitRollout("EVERYONE"); *seg.Rollout != (httpapi.Rollout{Status: "done", Assigned: 50, Total: 50}) {
		t.Errorf("100 %% rollout: %+v", *seg.Rollout)
	}
	s.register(ids(51, 150))
	if got := s.members("NOBODY"); len(got) != 0 {
		t.Errorf("0 %% segment has members %v", got)
	}
	if diff := gocmp.Diff(ids(1, 150), s.members("EVERYONE")); diff != "" {
		t.Errorf("100 %% segment (-want +got):\n%s", diff)
	}
}

// TestRolloutCutShortAndRunAgainEndsExact runs part of a rollout, cuts a
// batch off mid-transaction, then runs the rollout twice at once (a retried
// task meeting a recovered one): the result is the exact set, each user
// added once.
func TestRolloutCutShortAndRunAgainEndsExact(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{})
	users := ids(1, 1000)
	s.register(users)
	// Created through the store, so that no worker runs its rollout.
	seg, err := postgres.NewSegmentRepo(s.pool, postgres.NopRecorder{}).CreateSegment(t.Context(), domain.NewSegment{Slug: "PART", AutoPercent: ptr(domain.Percent(4000))})
	if err != nil {
		t.Fatal(err)
	}
	store := postgres.NewRolloutRepo(s.pool, postgres.NopRecorder{})
	if ro, err := store.PrepareRollout(t.Context(), seg.ID, 100); err != nil || ro.Status != domain.RolloutRunning || ro.Total != 400 {
		t.Fatalf("prepare: %+v, %v", ro, err)
	}
	for range 3 {
		if ok, _, err := store.RolloutBatch(t.Context(), seg.ID); !ok || err != nil {
			t.Fatalf("batch: %v %v", ok, err)
		}
	}
	// A batch whose transaction dies part-way.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, _, err := store.RolloutBatch(ctx, seg.ID); err == nil {
		t.Fatal("a cancelled batch succeeded")
	}
	partial := len(s.members("PART"))
	t.Logf("%d of 400 assigned before the second run", partial)

	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			err := s.rollouts().Run(t.Context(), seg.ID)
			if err != nil && !errors.Is(err, service.ErrRolloutIncomplete) {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if err := s.rollouts().Run(t.Context(), seg.ID); err != nil {
		t.Fatal(err)
	}
	if diff := gocmp.Diff(lowest("PART", users, 400), s.members("PART")); diff != "" {
		t.Errorf("members (-want +got):\n%s", diff)
	}
	var got httpapi.Segment
	s.mustDo("GET", "/api/v1/segments/PART", nil, &got)
	if *got.Rollout != (httpapi.Rollout{Status: "done", Assigned: 400, Total: 400}) {
		t.Errorf("rollout: %+v", *got.Rollout)
	}
	testenv.AssertHistoryReplays(t, s.pool)
}

// TestRegistrationsDuringARollout registers users, creates a percent
// segment and keeps registering (in bulk, by reads, by changes) while its
// rollout runs in small batches. Users registered before the segment get
// the exact rollout set; users registered after get the bucket rule; nobody
// gets it twice.
func TestRegistrationsDuringARollout(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{rolloutBatch: 20})
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "OTHER"}, nil)
	before := ids(1, 3000)
	s.register(before)

	done := make(chan struct{})
	var (
		wg   sync.WaitGroup
		once sync.Once
	)
	// Stop the registrations on every way out, before the pool closes.
	stop := func() { once.Do(func() { close(done); wg.Wait() }) }
	defer stop()
	for w := range 4 {
		wg.Go(func() {
			for i := int64(0); ; i++ {
				select {
				case <-done:
					return
				default:
				}
				// Disjoint ids per goroutine (up to a million requests each).
				id := 10_000_000 + int64(w)*10_000_000 + 2*i
				var code int
				switch i % 3 {
				case 0:
					code = s.do("POST", "/api/v1/users", map[string]any{"user_ids": []int64{id, id + 1}}, nil)
				case 1:
					code = s.do("GET", fmt.Sprintf("/api/v1/users/%d/segments", id), nil, nil)
				default:
					code = s.do("POST", fmt.Sprintf("/api/v1/users/%d/segments", id), map[string]any{"add": []string{"OTHER"}}, nil)
				}
				if code != http.StatusOK {
					t.Errorf("request for user %d: status %d", id, code)
					return
				}
			}
		})
	}
	time.Sleep(50 * time.Millisecond)
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "RACE", "auto_percent": 50}, nil)
	seg := s.waitRollout("RACE")
	stop()

	// Split the users into the rollout's population and those after it.
	population := s.scalar(`SELECT population_seq FROM segments WHERE slug = 'RACE'`)
	var pop, later []int64
	rows, err := s.pool.Query(t.Context(), `SELECT id, seq <= $1 FROM users ORDER BY id`, population)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var (
			id int64
			in bool
		)
		if err := rows.Scan(&id, &in); err != nil {
			t.Fatal(err)
		}
		if in {
			pop = append(pop, id)
		} else {
			later = append(later, id)
		}
	}
	t.Logf("population %d users (%d registered before the test's creation), %d registered during the rollout", len(pop), len(before), len(later))
	if len(later) == 0 {
		t.Fatal("no user registered during the rollout; the test proves nothing")
	}
	k := (len(pop) + 1) / 2
	want := lowest("RACE", pop, k)
	for _, id := range later {
		if domain.Percent(5000).Admits("RACE", id) {
			want = append(want, id)
		}
	}
	slices.Sort(want)
	if diff := gocmp.Diff(want, s.members("RACE")); diff != "" {
		t.Errorf("members (-want +got):\n%s", diff)
	}
	if seg.Rollout.Total != int64(k) || seg.Rollout.Assigned != int64(k) {
		t.Errorf("rollout %+v, want %d of %d", *seg.Rollout, k, k)
	}
	testenv.AssertHistoryReplays(t, s.pool)
}

func ptr[T any](v T) *T { return &v }

func TestRolloutThatExhaustsItsRetriesFailsAndIsTakenUpAgain(t *testing.T) {
	t.Parallel()
	// The worker's statements give up after 300 ms, its rollout tasks
	// after one retry, and resume runs every second.
	s := newStack(t, stackOptions{sweepInterval: time.Second, rolloutMaxRetry: 1, workerStatementTimeout: 300 * time.Millisecond})
	users := ids(1, 300)
	s.register(users)

	// While this transaction holds the users table, no rollout can count
	// its population.
	tx, err := s.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if _, err := tx.Exec(t.Context(), `LOCK TABLE users IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "STUCK", "auto_percent": 40}, nil)

	var seg httpapi.Segment
	testenv.Eventually(t, 30*time.Second, "the rollout never showed failed", func() bool {
		s.mustDo("GET", "/api/v1/segments/STUCK", nil, &seg)
		return seg.Rollout != nil && seg.Rollout.Status == "failed"
	})
	stats, err := s.svc.Stats(t.Context())
	if err != nil || stats.Rollouts[domain.RolloutFailed] != 1 {
		t.Errorf("stats for monitoring: %+v, %v; want one failed rollout", stats, err)
	}
	// The task itself runs out of retries (a run that found the rollout
	// held by the resume does not count).
	inspector := asynq.NewInspectorFromRedisClient(s.rdb)
	testenv.Eventually(t, 30*time.Second, "the rollout task was never archived", func() bool {
		info, err := inspector.GetTaskInfo(s.queue, worker.RolloutTaskID(s.segmentID("STUCK")))
		return err == nil && info.State == asynq.TaskStateArchived
	})
	s.mustDo("GET", "/api/v1/segments/STUCK", nil, &seg)
	if seg.Rollout.Status != "failed" {
		t.Fatalf("rollout %+v while the fault lasts, want failed", seg.Rollout)
	}

	// The fault ends: the periodic resume runs the rollout itself, its
	// task being in the archive.
	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	seg = s.waitRollout("STUCK")
	want := lowest("STUCK", users, 120)
	if diff := gocmp.Diff(want, s.members("STUCK")); diff != "" || seg.Rollout.Assigned != 120 || seg.Rollout.Total != 120 {
		t.Errorf("rollout %+v; members (-want +got):\n%s", seg.Rollout, diff)
	}
	testenv.AssertHistoryReplays(t, s.pool)
}
