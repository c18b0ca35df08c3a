package worker_test

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"

	"github.com/segments-service/segments/internal/httpapi"
)

// reading is one answer of GET /users/{id}/segments and when it was asked
// and answered.
type reading struct {
	user       int64
	start, end time.Time
	segments   []httpapi.Membership
	// next is when the next write began (the state of the user could not
	// change between end and next, but for expiries).
	next time.Time
}

// TestSegmentsAtRepeatTheAnswersGiven runs a random workload on 4 users
// with a real worker sweeping every second: adds, removes, re-adds that
// change, drop or set an expiry, TTLs of 300 ms to 1 s that run out, a
// percent segment given by its rule, a segment deleted; it records every
// read with the time around it. Then GET ?at= at an instant between each
// read and the next write must return exactly the recorded answer
// (added_at, expires_at, source included). Instants at which a membership
// of the answer expires are left out: there the answer depends on where in
// the read's interval the database read.
func TestSegmentsAtRepeatTheAnswersGiven(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{sweepInterval: time.Second})
	slugs := []string{"TT_A", "TT_B", "TT_C"}
	for _, slug := range slugs {
		s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": slug}, nil)
	}
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "TT_PCT", "auto_percent": 50}, nil)
	s.waitRollout("TT_PCT")

	rng := rand.New(rand.NewPCG(11, 17))
	users := []int64{101, 102, 103, 104}
	var readings []reading
	lastRead := map[int64]int{}
	deadline := time.Now().Add(6 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		user := users[rng.IntN(len(users))]
		start := time.Now()
		if j, ok := lastRead[user]; ok && readings[j].next.IsZero() {
			readings[j].next = start
		}
		slug := slugs[rng.IntN(len(slugs))]
		body := map[string]any{}
		switch op := rng.IntN(10); {
		case i == 200 && slices.Contains(slugs, "TT_C"):
			// A segment deleted mid-way (members lose it: segment_deleted).
			for _, u := range users {
				if j, ok := lastRead[u]; ok && readings[j].next.IsZero() {
					readings[j].next = start
				}
			}
			s.mustDo("DELETE", "/api/v1/segments/TT_C", nil, nil)
			slugs = slices.DeleteFunc(slugs, func(s string) bool { return s == "TT_C" })
			continue
		case op < 3:
			body["add"] = []string{slug}
		case op < 5:
			body["add"] = []string{slug}
			body["ttl_seconds"] = 1
		case op < 7:
			body["add"] = []string{slug}
			body["expires_at"] = time.Now().Add(time.Duration(300+rng.IntN(700)) * time.Millisecond).Format(time.RFC3339Nano)
		case op < 8:
			body["remove"] = []string{slug}
		case op < 9:
			body["remove"] = []string{"TT_PCT"}
		default:
			body["add"] = []string{"TT_PCT"}
		}
		code := s.do("POST", fmt.Sprintf("/api/v1/users/%d/segments", user), body, nil)
		if code != http.StatusOK && code != http.StatusUnprocessableEntity {
			t.Fatalf("change %v: %d", body, code)
		}
		// Every write is followed by a read of that user.
		r := reading{user: user, start: time.Now()}
		var us httpapi.UserSegments
		s.mustDo("GET", fmt.Sprintf("/api/v1/users/%d/segments", user), nil, &us)
		r.end, r.segments = time.Now(), us.Segments
		readings = append(readings, r)
		lastRead[user] = len(readings) - 1
		time.Sleep(time.Duration(rng.IntN(15)) * time.Millisecond)
	}
	now := time.Now()
	checked, skipped := 0, 0
	for _, r := range readings {
		next := r.next
		if next.IsZero() {
			next = now
		}
		at := r.end.Add(next.Sub(r.end) / 2)
		ambiguous := false
		for _, m := range r.segments {
			if m.ExpiresAt != nil && !m.ExpiresAt.Before(r.start) && !m.ExpiresAt.After(at) {
				ambiguous = true
			}
		}
		if ambiguous {
			skipped++
			continue
		}
		var past httpapi.UserSegments
		s.mustDo("GET", fmt.Sprintf("/api/v1/users/%d/segments?at=%s", r.user, at.UTC().Format(time.RFC3339Nano)), nil, &past)
		if diff := gocmp.Diff(r.segments, past.Segments); diff != "" {
			t.Fatalf("user %d at %s (read between %s and %s): ?at= differs from the answer given (-given +at):\n%s",
				r.user, at.Format(time.RFC3339Nano), r.start.Format(time.RFC3339Nano), r.end.Format(time.RFC3339Nano), diff)
		}
		checked++
	}
	t.Logf("%d reads: %d checked against ?at=, %d left out (a membership expired within the read's time)", len(readings), checked, skipped)
	if checked < len(readings)/2 {
		t.Fatalf("only %d of %d reads could be checked", checked, len(readings))
	}
}
