package httpapi_test

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/httpapi"
)

// explain reads GET /users/{id}/segments/{slug}.
func (a *testAPI) explain(user int64, slug string) httpapi.Explanation {
	a.t.Helper()
	var e httpapi.Explanation
	a.mustDo(http.StatusOK, "GET", fmt.Sprintf("/api/v1/users/%d/segments/%s", user, slug), nil, &e)
	return e
}

func events(e httpapi.Explanation) []string {
	out := []string{}
	for _, ev := range e.Events {
		out = append(out, ev.Operation+" "+ev.Reason)
	}
	return out
}

// Explain in each state a user can be in: given by hand, by the percent
// rule, opted out, expired, never; its bucket is the README's.
func TestExplainMembership(t *testing.T) {
	a := newAPI(t)
	a.createSegment("MANUAL")
	a.mustDo(http.StatusCreated, "POST", "/api/v1/segments", map[string]any{"slug": "HALF", "auto_percent": 50}, nil)

	// By hand.
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/1000/segments", map[string]any{"add": []string{"MANUAL"}}, nil)
	e := a.explain(1000, "MANUAL")
	if !e.Member || e.Membership == nil || e.Membership.Source != "manual" || e.Membership.ExpiresAt != nil ||
		e.AutoPercent != nil || e.PercentRule != nil || e.Bucket != domain.SegmentBucket("MANUAL", 1000) ||
		!slices.Equal(events(e), []string{"add manual"}) {
		t.Fatalf("by hand: %+v", e)
	}

	// By the percent rule: users registered after HALF get it iff their
	// bucket is below 5000.
	var in, out int64
	for id := int64(2000); in == 0 || out == 0; id++ {
		if domain.SegmentBucket("HALF", id) < 5000 && in == 0 {
			in = id
		} else if domain.SegmentBucket("HALF", id) >= 5000 && out == 0 {
			out = id
		}
	}
	a.mustDo(http.StatusOK, "POST", "/api/v1/users", map[string]any{"user_ids": []int64{in, out}}, nil)
	e = a.explain(in, "HALF")
	if !e.Member || e.Membership.Source != "auto" || e.AutoPercent == nil || *e.AutoPercent != 50 || e.PercentRule == nil || !*e.PercentRule ||
		!slices.Equal(events(e), []string{"add auto"}) {
		t.Fatalf("by the rule: %+v", e)
	}
	e = a.explain(out, "HALF")
	if e.Member || e.Membership != nil || e.PercentRule == nil || *e.PercentRule || len(e.Events) != 0 {
		t.Fatalf("outside the rule: %+v", e)
	}

	// Opted out: the rule still says yes; history says why not.
	a.mustDo(http.StatusOK, "POST", fmt.Sprintf("/api/v1/users/%d/segments", in), map[string]any{"remove": []string{"HALF"}}, nil)
	e = a.explain(in, "HALF")
	if e.Member || e.Membership != nil || !*e.PercentRule || !slices.Equal(events(e), []string{"add auto", "remove manual"}) {
		t.Fatalf("opted out: %+v", e)
	}

	// Expired (not yet swept): not a member.
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/1001/segments",
		map[string]any{"add": []string{"MANUAL"}, "expires_at": time.Now().Add(300 * time.Millisecond).Format(time.RFC3339Nano)}, nil)
	if e = a.explain(1001, "MANUAL"); !e.Member || e.Membership.ExpiresAt == nil {
		t.Fatalf("before expiry: %+v", e)
	}
	time.Sleep(400 * time.Millisecond)
	if e = a.explain(1001, "MANUAL"); e.Member || e.Membership != nil || !slices.Equal(events(e), []string{"add manual"}) {
		t.Fatalf("expired: %+v", e)
	}

	// Never seen: not a member, no events, and still not registered.
	if e = a.explain(777777, "MANUAL"); e.Member || len(e.Events) != 0 || a.scalar(`SELECT count(*) FROM users WHERE id = 777777`) != 0 {
		t.Fatalf("never seen: %+v (or registered)", e)
	}

	// The README's bucket vectors.
	for _, v := range []struct {
		slug   string
		user   int64
		bucket int
	}{
		{"AVITO_VOICE_MESSAGES", 1000, 3672}, {"AVITO_VOICE_MESSAGES", 1001, 1501},
		{"AVITO_DISCOUNT_30", 1000, 2861}, {"AVITO_DISCOUNT_30", 1, 5769}, {"A", 9223372036854775807, 4483},
	} {
		if a.scalar(`SELECT count(*) FROM segments WHERE slug = $1`, v.slug) == 0 {
			a.createSegment(v.slug)
		}
		if e := a.explain(v.user, v.slug); e.Bucket != v.bucket {
			t.Errorf("%s:%d: bucket %d, README says %d", v.slug, v.user, e.Bucket, v.bucket)
		}
	}

	a.do("GET", "/api/v1/users/1000/segments/NOPE", nil).problem(t, http.StatusNotFound)
	a.do("GET", "/api/v1/users/0/segments/MANUAL", nil).problem(t, http.StatusBadRequest)
}

// Paging a segment's members while others join and leave: every user who
// was a member throughout appears exactly once, pages are in user id
// order, and nobody appears twice.
func TestMembersPagesWhileMembersChange(t *testing.T) {
	a := newAPI(t)
	a.createSegment("CROWD")
	var stable []int64
	for id := int64(1); id <= 1500; id += 3 {
		stable = append(stable, id)
	}
	for chunk := range slices.Chunk(stable, 100) {
		for _, id := range chunk {
			a.mustDo(http.StatusOK, "POST", fmt.Sprintf("/api/v1/users/%d/segments", id), map[string]any{"add": []string{"CROWD"}}, nil)
		}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for {
				select {
				case <-done:
					return
				default:
				}
				// Only ids the stable members do not use (≡ 1 or 2 mod 3).
				id := 3*rng.Int64N(500) + 2 + rng.Int64N(2)
				op := "add"
				if rng.IntN(2) == 0 {
					op = "remove"
				}
				a.do("POST", fmt.Sprintf("/api/v1/users/%d/segments", id), map[string]any{op: []string{"CROWD"}})
			}
		})
	}
	// Let the writers get going, then page slowly enough that they keep
	// changing the segment between pages.
	time.Sleep(200 * time.Millisecond)
	var seen []int64
	after := int64(0)
	pages := 0
	for {
		time.Sleep(10 * time.Millisecond)
		var page httpapi.MemberList
		a.mustDo(http.StatusOK, "GET", fmt.Sprintf("/api/v1/segments/CROWD/members?limit=37&after=%d", after), nil, &page)
		pages++
		for _, m := range page.Members {
			if m.UserID <= after {
				t.Fatalf("page after %d holds user %d", after, m.UserID)
			}
			seen = append(seen, m.UserID)
			after = m.UserID
		}
		if page.NextAfter == nil {
			break
		}
		if *page.NextAfter != after || len(page.Members) != 37 {
			t.Fatalf("next_after %d after a page of %d ending at %d", *page.NextAfter, len(page.Members), after)
		}
	}
	close(done)
	wg.Wait()
	if !slices.IsSorted(seen) || len(slices.Compact(slices.Clone(seen))) != len(seen) {
		t.Fatal("members repeated or out of order")
	}
	var missing []int64
	for _, id := range stable {
		if _, ok := slices.BinarySearch(seen, id); !ok {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d members who were there throughout were skipped: %v", len(missing), missing)
	}
	t.Logf("%d pages, %d members seen (%d there throughout)", pages, len(seen), len(stable))
	if len(seen) == len(stable) {
		t.Fatal("no writer's member was seen: the writers did not overlap the paging")
	}

	// Without writers, the pages are exactly the members table.
	var all []int64
	for after := int64(0); ; {
		var page httpapi.MemberList
		a.mustDo(http.StatusOK, "GET", fmt.Sprintf("/api/v1/segments/CROWD/members?limit=1000&after=%d", after), nil, &page)
		for _, m := range page.Members {
			all = append(all, m.UserID)
		}
		if page.NextAfter == nil {
			break
		}
		after = *page.NextAfter
	}
	stored := a.column(`SELECT m.user_id::text FROM memberships m JOIN segments s ON s.id = m.segment_id WHERE s.slug = 'CROWD' ORDER BY m.user_id`)
	if diff := cmp.Diff(stored, int64s(all)); diff != "" {
		t.Fatalf("pages versus the table (-table +pages):\n%s", diff)
	}
	a.do("GET", "/api/v1/segments/NOPE/members", nil).problem(t, http.StatusNotFound)
	a.do("GET", "/api/v1/segments/CROWD/members?after=-1", nil).problem(t, http.StatusBadRequest)
	a.do("GET", "/api/v1/segments/CROWD/members?limit=0", nil).problem(t, http.StatusBadRequest)
}

func int64s(ids []int64) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = fmt.Sprint(id)
	}
	return out
}

// ?at= refuses bad and future instants, and never registers the user.
func TestSegmentsAtInput(t *testing.T) {
	a := newAPI(t)
	for _, at := range []string{"yesterday", "2026-11-23", time.Now().Add(time.Minute).UTC().Format(time.RFC3339)} {
		p := a.do("GET", "/api/v1/users/1000/segments?at="+at, nil).problem(t, http.StatusUnprocessableEntity)
		if len(p.Errors) != 1 || p.Errors[0].Pointer != "#/at" {
			t.Errorf("at=%s: %+v", at, p)
		}
	}
	r := a.do("GET", "/api/v1/users/424242/segments?at="+time.Now().UTC().Format(time.RFC3339Nano), nil)
	if r.status != http.StatusOK || strings.TrimSpace(string(r.body)) != `{"user_id":424242,"segments":[]}` || r.header.Get("Cache-Status") != `segments; fwd=bypass; detail="at"` {
		t.Fatalf("%d %s %v", r.status, r.body, r.header)
	}
	if a.scalar(`SELECT count(*) FROM users WHERE id = 424242`) != 0 {
		t.Fatal("?at= registered the user")
	}
}
