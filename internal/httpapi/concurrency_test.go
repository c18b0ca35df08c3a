package httpapi_test

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/tools/testenv"
)

// randomChange picks a random, valid change over slugs: up to three adds
// and three removes, disjoint, not both empty.
func randomChange(rng *rand.Rand, slugs []string) map[string]any {
	perm := rng.Perm(len(slugs))
	nAdd, nRemove := rng.IntN(4), rng.IntN(4)
	if nAdd+nRemove == 0 {
		nAdd = 1
	}
	body := map[string]any{"add": []string{}, "remove": []string{}}
	for i, p := range perm[:nAdd+nRemove] {
		if i < nAdd {
			body["add"] = append(body["add"].([]string), slugs[p])
		} else {
			body["remove"] = append(body["remove"].([]string), slugs[p])
		}
	}
	return body
}

// statusCounts counts responses by status, safely across goroutines.
type statusCounts struct {
	mu sync.Mutex
	m  map[int]int
}

func (s *statusCounts) add(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[int]int{}
	}
	s.m[status]++
}

func TestConcurrentChangesOfOneUser(t *testing.T) {
	a := newAPI(t)
	slugs := []string{"S0", "S1", "S2", "S3", "S4", "S5", "S6", "S7"}
	for _, s := range slugs {
		a.createSegment(s)
	}

	const workers, perWorker = 32, 50
	var (
		wg     sync.WaitGroup
		counts statusCounts
	)
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for range perWorker {
				r := a.do("POST", "/api/v1/users/42/segments", randomChange(rng, slugs))
				counts.add(r.status)
				if r.status != http.StatusOK {
					t.Errorf("status %d: %s", r.status, r.body)
				}
			}
		})
	}
	wg.Wait()
	if counts.m[http.StatusOK] != workers*perWorker {
		t.Errorf("statuses %v, want %d × 200", counts.m, workers*perWorker)
	}
	testenv.AssertHistoryReplays(t, a.pool)

	// What GET shows is what the table holds.
	var us httpapi.UserSegments
	a.mustDo(http.StatusOK, "GET", "/api/v1/users/42/segments", nil, &us)
	if n := a.scalar(`SELECT count(*) FROM memberships WHERE user_id = 42`); int(n) != len(us.Segments) {
		t.Errorf("GET shows %d segments, table holds %d", len(us.Segments), n)
	}
}

// TestConcurrentChangesOfManyUsers runs random changes (some expiring at
// once) over 200 users from 32 goroutines while another goroutine deletes
// and re-creates a segment they use, and reads and bulk registrations go on.
// No request may fail on the server, and history must replay to the state.
func TestConcurrentChangesOfManyUsers(t *testing.T) {
	a := newAPI(t)
	slugs := []string{"S0", "S1", "S2", "S3", "S4", "S5", "CHURN"}
	for _, s := range slugs {
		a.createSegment(s)
	}

	const workers, perWorker, users = 32, 50, 200
	var (
		wg     sync.WaitGroup
		counts statusCounts
		done   atomic.Bool
	)
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 2))
			for range perWorker {
				body := randomChange(rng, slugs)
				if rng.IntN(4) == 0 {
					body["ttl_seconds"] = 1
				}
				r := a.do("POST", fmt.Sprintf("/api/v1/users/%d/segments", 1+rng.IntN(users)), body)
				counts.add(r.status)
				churned := slices.Contains(body["add"].([]string), "CHURN") || slices.Contains(body["remove"].([]string), "CHURN")
				if r.status != http.StatusOK && !(r.status == http.StatusNotFound && churned) {
					t.Errorf("status %d: %s", r.status, r.body)
				}
			}
		})
	}
	var side sync.WaitGroup
	side.Go(func() {
		for i := 0; !done.Load(); i++ {
			if r := a.do("DELETE", "/api/v1/segments/CHURN", nil); r.status != http.StatusNoContent {
				t.Errorf("delete CHURN: %d %s", r.status, r.body)
			}
			if r := a.do("POST", "/api/v1/segments", map[string]any{"slug": "CHURN"}); r.status != http.StatusCreated {
				t.Errorf("create CHURN: %d %s", r.status, r.body)
			}
		}
	})
	side.Go(func() {
		rng := rand.New(rand.NewPCG(7, 7))
		for !done.Load() {
			if r := a.do("GET", fmt.Sprintf("/api/v1/users/%d/segments", 1+rng.IntN(users+50)), nil); r.status != http.StatusOK {
				t.Errorf("read: %d %s", r.status, r.body)
			}
			ids := []int64{int64(1 + rng.IntN(users+50)), int64(1 + rng.IntN(users+50))}
			if r := a.do("POST", "/api/v1/users", map[string]any{"user_ids": ids}); r.status != http.StatusOK {
				t.Errorf("register: %d %s", r.status, r.body)
			}
		}
	})
	wg.Wait()
	done.Store(true)
	side.Wait()

	t.Logf("statuses: %v", counts.m)
	if counts.m[http.StatusOK] < workers*perWorker/2 {
		t.Errorf("only %d of %d changes succeeded", counts.m[http.StatusOK], workers*perWorker)
	}
	testenv.AssertHistoryReplays(t, a.pool)

	// Every user's GET equals the user's unexpired rows. Compare once every
	// expiry has passed, so that none falls between a GET and its check.
	var lastExpiry *time.Time
	if err := a.pool.QueryRow(t.Context(), `SELECT max(expires_at) FROM memberships`).Scan(&lastExpiry); err != nil {
		t.Fatal(err)
	}
	if lastExpiry != nil {
		time.Sleep(time.Until(*lastExpiry) + 10*time.Millisecond)
	}
	for id := 1; id <= users; id++ {
		var us httpapi.UserSegments
		a.mustDo(http.StatusOK, "GET", fmt.Sprintf("/api/v1/users/%d/segments", id), nil, &us)
		want := a.column(`
			SELECT s.slug FROM memberships m JOIN segments s ON s.id = m.segment_id
			WHERE m.user_id = $1 AND (m.expires_at IS NULL OR m.expires_at > now())
			ORDER BY s.slug`, id)
		if diff := cmp.Diff(want, slugsOf(us.Segments)); diff != "" {
			t.Errorf("user %d (-table +GET):\n%s", id, diff)
		}
	}
}
