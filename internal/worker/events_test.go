package worker_test

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/tools/localserver"
	"github.com/segments-service/segments/tools/testenv"
)

// unpublished counts the events history holds now that the relay has not
// published.
func (s *stack) unpublished() int64 {
	s.t.Helper()
	n, err := postgres.UnpublishedEvents(s.t.Context(), s.pool)
	if err != nil {
		s.t.Fatal(err)
	}
	return n
}

// published reports whether the relay has published every event history
// holds now.
func (s *stack) published() bool { return s.unpublished() == 0 }

// TestEveryChangeIsPublishedOnceInOrder runs a random workload that gives
// every reason history knows — changes by hand with and without TTL from
// four goroutines, expiries removed by their tasks and by the sweep, a
// rollout, two percent changes, percent segments given at registration,
// imports in and out, a segment deletion — then reads the whole stream: every history event is
// in it once, with the same fields, and each user's events come in the
// order of their at.
func TestEveryChangeIsPublishedOnceInOrder(t *testing.T) {
	t.Parallel()
	stream := testenv.StreamName(t)
	s := newStack(t, stackOptions{eventsStream: stream, sweepInterval: time.Second, rolloutBatch: 40})
	for _, slug := range []string{"A", "B", "C", "GONE"} {
		s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": slug}, nil)
	}
	s.register(ids(1, 200))
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "PCT", "auto_percent": 30}, nil)
	s.waitRollout("PCT")
	// Memberships no task will remove: only the sweep does.
	s.scalar(`
		WITH r AS (SELECT set_config('segments.reason', 'manual', true)),
		     u AS (INSERT INTO users (id) SELECT generate_series(1001, 1020)),
		     m AS (INSERT INTO memberships (user_id, segment_id, expires_at)
		           SELECT u, (SELECT id FROM segments WHERE slug = 'C'), clock_timestamp() + interval '1 second'
		           FROM generate_series(1001, 1020) AS u, r)
		SELECT 0`)

	slugs := []string{"A", "B", "C", "GONE", "PCT"}
	pick := func(r *rand.Rand) []string {
		var out []string
		for _, slug := range slugs {
			if r.IntN(3) == 0 {
				out = append(out, slug)
			}
		}
		return out
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 18))
			for range 120 {
				// Users 201 to 300 are new: their first change registers
				// them, and PCT comes with it if their bucket says so.
				user := 1 + r.IntN(300)
				body := map[string]any{"add": pick(r), "remove": pick(r)}
				if r.IntN(3) == 0 {
					body["ttl_seconds"] = 1
				}
				code := s.do("POST", fmt.Sprintf("/api/v1/users/%d/segments", user), body, nil)
				if code != http.StatusOK && code != http.StatusUnprocessableEntity { // 422: one slug both added and removed
					t.Errorf("change of user %d: status %d", user, code)
				}
			}
		})
	}
	// Imports in and out, under the same changes.
	in := s.upload("A", "mode=add", ids(150, 260))
	out := s.upload("B", "mode=remove", ids(1, 150))
	for _, percent := range []float64{60, 20} {
		time.Sleep(200 * time.Millisecond)
		s.patchPercent("PCT", percent)
		s.waitRollout("PCT")
	}
	wg.Wait()
	s.waitImport(in.ID)
	s.waitImport(out.ID)
	s.mustDo("DELETE", "/api/v1/segments/GONE", nil, nil)
	testenv.Eventually(t, 20*time.Second, "memberships with an expiry are left", func() bool {
		return s.scalar(`SELECT count(*) FROM memberships WHERE expires_at IS NOT NULL`) == 0
	})
	testenv.Eventually(t, 20*time.Second, "the relay did not publish every event", s.published)

	if copies := testenv.AssertEventsPublished(t, s.pool, s.rdb, stream); copies != 0 {
		t.Errorf("%d events published twice without a crash", copies)
	}
	var missing []string
	for _, c := range domain.Changes {
		if s.scalar(`SELECT count(*) FROM membership_history WHERE operation = $1 AND reason = $2`, c.Operation, c.Reason) == 0 {
			missing = append(missing, string(c.Operation)+" "+string(c.Reason))
		}
	}
	if len(missing) > 0 {
		t.Errorf("the workload wrote no %v events", missing)
	}
	if n := s.scalar(`SELECT count(*) FROM membership_history WHERE user_id > 1000 AND reason = 'ttl'`); n != 20 {
		t.Errorf("%d ttl removals by the sweep, want 20", n)
	}
	t.Logf("%d events published", s.scalar(`SELECT count(*) FROM membership_history`))
	testenv.AssertHistoryReplays(t, s.pool)
}

// TestEventsWaitForRedis stops Redis for 10 s while changes go on: the
// changes succeed, their events wait in the database, and once Redis is
// back every event is published; copies only of the batch that was in
// flight when Redis went.
func TestEventsWaitForRedis(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rdir := filepath.Join(dir, "redis")
	rd, err := localserver.StartRedis(t.Context(), localserver.RedisOptions{Dir: rdir, Persist: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Stop() })
	const batch = 50
	stream := testenv.StreamName(t)
	s := newStack(t, stackOptions{redisURL: rd.URL(0), eventsStream: stream, eventsBatch: batch})
	for _, slug := range []string{"A", "B"} {
		s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": slug}, nil)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	wg.Go(func() {
		r := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-stop:
				return
			default:
			}
			body := map[string]any{"add": []string{"A"}, "remove": []string{"B"}}
			if r.IntN(2) == 0 {
				body = map[string]any{"add": []string{"B"}, "remove": []string{"A"}}
			}
			if code := s.do("POST", fmt.Sprintf("/api/v1/users/%d/segments", 1+r.IntN(100)), body, nil); code != http.StatusOK {
				mu.Lock()
				failed++
				mu.Unlock()
			}
			time.Sleep(2 * time.Millisecond)
		}
	})
	time.Sleep(time.Second)
	if err := rd.Stop(); err != nil {
		t.Fatal(err)
	}
	down := s.scalar(`SELECT count(*) FROM membership_history`)
	time.Sleep(10 * time.Second)
	during := s.scalar(`SELECT count(*) FROM membership_history`) - down
	waiting := s.unpublished()
	if during == 0 || waiting < during {
		t.Errorf("%d events written while Redis was down, %d waiting to be published; want some, all waiting", during, waiting)
	}
	if rd, err = localserver.StartRedis(t.Context(), localserver.RedisOptions{Dir: rdir, Port: rd.Port(), Persist: true}); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	if failed > 0 {
		t.Errorf("%d changes failed", failed)
	}
	testenv.Eventually(t, 20*time.Second, "the relay did not catch up after Redis came back", s.published)
	t.Logf("%d events written while Redis was down; all published %s after it came back", during, time.Since(back).Round(10*time.Millisecond))
	if copies := testenv.AssertEventsPublished(t, s.pool, s.rdb, stream); copies > batch {
		t.Errorf("%d events published twice; want at most the batch in flight (%d)", copies, batch)
	} else {
		t.Logf("%d events published twice (the batch in flight when Redis stopped)", copies)
	}
	testenv.AssertHistoryReplays(t, s.pool)
}
