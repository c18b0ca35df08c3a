package worker_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/segments-service/segments/internal/httpapi"
)

// Once a replica answers that a rollout is done, its reads of the users
// the rollout touched reflect it at once, even while the rollout's cache
// invalidations have not reached it: here they are relayed every 10 s, so
// any answer from before the rollout would still be cached.
func TestDoneMeansReadsReflectIt(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{rolloutBatch: 100, cacheRelay: 10 * time.Second})
	users := ids(1, 400)
	s.register(users)
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "DONE", "auto_percent": 50}, nil)
	s.waitRollout("DONE")
	for _, percent := range []float64{10, 80, 30} {
		for _, u := range users { // every answer cached
			s.userSegments(u)
		}
		s.patchPercent("DONE", percent) // waits until this replica says done
		holders := s.holders("DONE")["auto"]
		for _, u := range users {
			if got, want := slices.Contains(s.userSegments(u), "DONE"), slices.Contains(holders, u); got != want {
				t.Fatalf("%v %%: right after done, user %d holds DONE: %v through the API, %v in the database", percent, u, got, want)
			}
		}
	}
}

// userSegments reads the user's segments through the API.
func (s *stack) userSegments(user int64) []string {
	s.t.Helper()
	var res httpapi.UserSegments
	s.mustDo("GET", fmt.Sprintf("/api/v1/users/%d/segments", user), nil, &res)
	var slugs []string
	for _, m := range res.Segments {
		slugs = append(slugs, m.Slug)
	}
	return slugs
}
