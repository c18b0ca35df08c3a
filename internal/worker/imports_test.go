package worker_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/tools/apitest"
	"github.com/segments-service/segments/tools/testenv"
)

// upload posts list (one id per line) as an import into slug with query
// (mode=…), and returns the import the 202 shows.
func (s *stack) upload(slug, query string, list []int64) httpapi.Import {
	s.t.Helper()
	var b strings.Builder
	b.WriteString("user_id\n")
	for _, id := range list {
		fmt.Fprintf(&b, "%d\n", id)
	}
	r := apitest.Do(s.t, s.api, "POST", "/api/v1/segments/"+slug+"/imports?"+query, b.String(), "Content-Type", "text/csv")
	if r.Status != http.StatusAccepted {
		s.t.Fatalf("upload into %s?%s: %d %s", slug, query, r.Status, r.Body)
	}
	var imp httpapi.Import
	if err := json.Unmarshal(r.Body, &imp); err != nil {
		s.t.Fatal(err)
	}
	if r.Header.Get("Location") != fmt.Sprintf("/api/v1/imports/%d", imp.ID) || imp.Status != "pending" {
		s.t.Fatalf("202: Location %q, import %+v", r.Header.Get("Location"), imp)
	}
	return imp
}

// waitImport waits for import id to end and returns it.
func (s *stack) waitImport(id int64) httpapi.Import {
	s.t.Helper()
	var imp httpapi.Import
	testenv.Eventually(s.t, 60*time.Second, fmt.Sprintf("import %d did not end", id), func() bool {
		s.mustDo("GET", fmt.Sprintf("/api/v1/imports/%d", id), nil, &imp)
		return imp.Status == "done" || imp.Status == "failed"
	})
	return imp
}

// manualMembers returns the users holding slug, sorted.
func (s *stack) allMembers(slug string) []int64 {
	s.t.Helper()
	h := s.holders(slug)
	out := append(h["auto"], h["manual"]...)
	slices.Sort(out)
	return out
}

// importCounts is what an ended import counted.
type importCounts struct {
	received, processed, added, removed, unchanged, conflicts int64
}

func countsOf(imp httpapi.Import) importCounts {
	c := importCounts{processed: imp.Processed, added: imp.Added, removed: imp.Removed, unchanged: imp.Unchanged, conflicts: imp.Conflicts}
	if imp.Received != nil {
		c.received = *imp.Received
	}
	return c
}

// Every mode on a few thousand ids, in batches of 50 (IMPORT_BATCH), with
// exact counts and memberships: add registers unknown users, clears
// nothing it need not and gives held memberships the import's expiry;
// remove takes a percent segment explicitly (it sticks); replace leaves
// exactly the listed users. History has one row per change, reason
// import, and replays to the memberships.
func TestImportModes(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{importBatch: 50})
	s.register(ids(1, 2000))
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "LIST"}, nil)
	// 1..100 hold LIST already, by hand.
	for u := int64(1); u <= 100; u++ {
		s.mustDo("POST", fmt.Sprintf("/api/v1/users/%d/segments", u), map[string]any{"add": []string{"LIST"}}, nil)
	}

	// add 51..3050, listed twice, in reverse: 50 held already (unchanged),
	// 2,950 new, 1,050 of them unknown users (2001..3050).
	var list []int64
	for u := int64(3050); u >= 51; u-- {
		list = append(list, u, u)
	}
	imp := s.upload("LIST", "mode=add", list)
	if imp.Listed != 6000 || imp.Received != nil || imp.Mode != "add" || imp.Segment != "LIST" {
		t.Fatalf("add: 202 shows %+v", imp)
	}
	got := countsOf(s.waitImport(imp.ID))
	if want := (importCounts{received: 3000, processed: 3000, added: 2950, unchanged: 50}); got != want || imp.Status == "failed" {
		t.Fatalf("add: counts %+v, want %+v", got, want)
	}
	if m := s.allMembers("LIST"); !slices.Equal(m, ids(1, 3050)) {
		t.Fatalf("add: %d members, want 1..3050", len(m))
	}
	if n := s.scalar(`SELECT count(*) FROM users WHERE id BETWEEN 2001 AND 3050`); n != 1050 {
		t.Fatalf("add registered %d unknown users, want 1050", n)
	}
	if n := s.scalar(`SELECT count(*) FROM membership_history WHERE reason = 'import' AND operation = 'add'`); n != 2950 {
		t.Fatalf("add: %d history rows of reason import, want 2950", n)
	}

	// remove 1..1000 from a percent segment of 50 %: those who held it
	// lose it and stay out (an opt-out), the rest were unchanged.
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "HALF", "auto_percent": 50}, nil)
	s.waitRollout("HALF")
	held := s.allMembers("HALF")
	inRange := 0
	for _, u := range held {
		if u <= 1000 {
			inRange++
		}
	}
	imp = s.upload("HALF", "mode=remove", ids(1, 1000))
	got = countsOf(s.waitImport(imp.ID))
	if want := (importCounts{received: 1000, processed: 1000, removed: int64(inRange), unchanged: int64(1000 - inRange)}); got != want {
		t.Fatalf("remove: counts %+v, want %+v", got, want)
	}
	after := s.allMembers("HALF")
	if len(after) != len(held)-inRange || after[0] <= 1000 {
		t.Fatalf("remove: %d members left of %d (first %d)", len(after), len(held), after[0])
	}
	if n := s.scalar(`SELECT count(*) FROM segment_opt_outs o JOIN segments s ON s.id = o.segment_id WHERE s.slug = 'HALF'`); n != int64(inRange) {
		t.Fatalf("remove: %d opt-outs, want %d", n, inRange)
	}
	s.patchPercent("HALF", 60) // a new share: the removed stay out
	for _, u := range s.allMembers("HALF") {
		if u <= 1000 && slices.Contains(held, u) {
			t.Fatalf("user %d, removed by the import, got HALF back from the rule", u)
		}
	}

	// replace LIST (1..3050) with the odd ids of 1..4000 and 10,001:
	// 1,525 even ids leave, 950 odd ids and 10,001 arrive, 1,525 stay.
	var odd []int64
	for u := int64(1); u <= 4000; u += 2 {
		odd = append(odd, u)
	}
	odd = append(odd, 10001)
	imp = s.upload("LIST", "mode=replace", odd)
	got = countsOf(s.waitImport(imp.ID))
	if want := (importCounts{received: 2001, processed: 2001, added: 476, removed: 1525, unchanged: 1525}); got != want {
		t.Fatalf("replace: counts %+v, want %+v", got, want)
	}
	if m := s.allMembers("LIST"); !slices.Equal(m, odd) {
		t.Fatalf("replace: %d members, want the %d listed", len(m), len(odd))
	}
	if n := s.scalar(`SELECT count(*) FROM membership_history WHERE reason = 'import' AND operation = 'remove'`); n != 1525+int64(inRange) {
		t.Fatalf("%d removals of reason import, want %d", n, 1525+inRange)
	}
	if n := s.scalar(`SELECT count(*) FROM import_uploads`) + s.scalar(`SELECT count(*) FROM import_chunks WHERE import_id NOT IN (SELECT id FROM imports)`); n != 0 {
		t.Fatalf("%d upload rows left", n)
	}
	testenv.AssertHistoryReplays(t, s.pool)
}

// With an expiry, add gives every listed user the segment until then
// (held memberships get it too); the memberships leave at the expiry,
// history reason ttl at that time.
func TestImportWithTTLExpiresOnTime(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{importBatch: 50})
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "PROMO"}, nil)
	s.mustDo("POST", "/api/v1/users/7/segments", map[string]any{"add": []string{"PROMO"}}, nil) // permanent, then 3 s
	imp := s.upload("PROMO", "mode=add&ttl_seconds=3", ids(1, 300))
	if imp.ExpiresAt == nil || time.Until(*imp.ExpiresAt) > 3*time.Second || time.Until(*imp.ExpiresAt) < time.Second {
		t.Fatalf("expires_at %v", imp.ExpiresAt)
	}
	end := s.waitImport(imp.ID)
	if end.Added != 300 || end.Unchanged != 0 {
		t.Fatalf("counts %+v: the held membership's new expiry counts as added", countsOf(end))
	}
	if n := s.scalar(`SELECT count(*) FROM memberships WHERE expires_at = $1`, *imp.ExpiresAt); n != 300 {
		t.Fatalf("%d memberships expire at %v, want 300", n, *imp.ExpiresAt)
	}
	// Reads leave them out from the expiry on; the sweep the import
	// queued removes them within a second or so of it.
	testenv.Eventually(t, 10*time.Second, "the imported memberships did not leave", func() bool {
		return s.scalar(`SELECT count(*) FROM memberships`) == 0
	})
	if late := time.Since(*imp.ExpiresAt); late > 5*time.Second {
		t.Fatalf("the memberships left %s after their expiry", late)
	}
	if n := s.scalar(`SELECT count(*) FROM membership_history WHERE reason = 'ttl' AND at = $1`, *imp.ExpiresAt); n != 300 {
		t.Fatalf("%d ttl removals at the expiry, want 300", n)
	}
	testenv.AssertHistoryReplays(t, s.pool)
}

// Two imports of one segment apply in the order they were created: the
// second waits pending, and its replace wins.
func TestImportsOfASegmentApplyInOrder(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{importBatch: 10, importRate: 400})
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "ORDER"}, nil)
	first := s.upload("ORDER", "mode=add", ids(1, 400))    // a second at least, at 400 ids/s
	second := s.upload("ORDER", "mode=replace", ids(1, 5)) // waits
	// While the first runs, the second waits.
	for {
		var one, two httpapi.Import
		s.mustDo("GET", fmt.Sprintf("/api/v1/imports/%d", first.ID), nil, &one)
		s.mustDo("GET", fmt.Sprintf("/api/v1/imports/%d", second.ID), nil, &two)
		if one.Status == "done" {
			break
		}
		if two.Status != "pending" || two.Processed != 0 {
			t.Fatalf("the second import ran before the first was done: first %+v, second %+v", countsOf(one), countsOf(two))
		}
		time.Sleep(20 * time.Millisecond)
	}
	a, b := s.waitImport(first.ID), s.waitImport(second.ID)
	if a.Added != 400 || b.Removed != 395 || b.Unchanged != 5 || !a.FinishedAt.Before(*b.FinishedAt) {
		t.Fatalf("first %+v, second %+v", countsOf(a), countsOf(b))
	}
	if m := s.allMembers("ORDER"); !slices.Equal(m, ids(1, 5)) {
		t.Fatalf("members %v, want 1..5", m)
	}
}

// A segment deleted while its import runs ends the import failed; each
// user was changed whole or not at all, and history replays.
func TestImportOfADeletedSegmentFails(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{importBatch: 10, importRate: 200})
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "GONE"}, nil)
	imp := s.upload("GONE", "mode=add", ids(1, 1000))
	testenv.Eventually(t, 10*time.Second, "the import did not start", func() bool {
		var now httpapi.Import
		s.mustDo("GET", fmt.Sprintf("/api/v1/imports/%d", imp.ID), nil, &now)
		return now.Processed > 0
	})
	s.mustDo("DELETE", "/api/v1/segments/GONE", nil, nil)
	end := s.waitImport(imp.ID)
	if end.Status != "failed" || end.Error == nil || *end.Error != "the segment was deleted" || end.Processed >= 1000 || end.FinishedAt == nil {
		t.Fatalf("import after the deletion: %+v", end)
	}
	// Every user the import reached has one add and one remove (the
	// deletion's), the others none.
	if n := s.scalar(`SELECT count(*) FROM membership_history WHERE reason = 'import'`); n != end.Added {
		t.Fatalf("%d adds in history, the import counted %d", n, end.Added)
	}
	if n := s.scalar(`SELECT count(*) FROM membership_history WHERE reason = 'segment_deleted'`); n != end.Added {
		t.Fatalf("%d removals by the deletion, %d adds", n, end.Added)
	}
	testenv.AssertHistoryReplays(t, s.pool)
}

// An import into a layered segment skips the users who hold another
// segment of the layer, counts them and lists the first 100.
func TestImportSkipsLayerConflicts(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{importBatch: 50})
	s.mustDo("POST", "/api/v1/layers", map[string]any{"slug": "L"}, nil)
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "A", "layer": "L"}, nil)
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "B", "layer": "L"}, nil)
	for u := int64(10); u <= 1500; u += 10 { // 150 hold A
		s.mustDo("POST", fmt.Sprintf("/api/v1/users/%d/segments", u), map[string]any{"add": []string{"A"}}, nil)
	}
	end := s.waitImport(s.upload("B", "mode=add", ids(1, 2000)).ID)
	var want []int64
	for u := int64(10); u <= 1000; u += 10 {
		want = append(want, u)
	}
	if end.Conflicts != 150 || end.Added != 1850 || !slices.Equal(end.ConflictIDs, want) {
		t.Fatalf("conflicts %d (%v), added %d", end.Conflicts, end.ConflictIDs, end.Added)
	}
	if n := s.scalar(`SELECT count(*) FROM (SELECT user_id FROM memberships GROUP BY user_id HAVING count(*) > 1) t`); n != 0 {
		t.Fatalf("%d users hold two segments of the layer", n)
	}
}
