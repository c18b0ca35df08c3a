package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/segments-service/segments/tools/testenv"
)

// A worker SIGKILLed in the middle of an import of 50,000 ids, and a
// second one started: the import ends with every listed user holding the
// segment, each added exactly once (one history row), the counts exact.
func TestWorkerKilledMidImport(t *testing.T) {
	pool, vars, base := rolloutProcesses(t, 20000, "import-kill")
	vars["IMPORT_BATCH"], vars["IMPORT_RATE"] = "200", "10000"
	if code := post(t, base+"/api/v1/segments", `{"slug":"LIST"}`); code != 201 {
		t.Fatalf("create: %d", code)
	}
	for u := 1; u <= 500; u += 5 { // 100 listed users hold it already
		if code := post(t, fmt.Sprintf("%s/api/v1/users/%d/segments", base, u), `{"add":["LIST"]}`); code != 200 {
			t.Fatalf("give LIST to %d: %d", u, code)
		}
	}
	var list strings.Builder
	for u := 50000; u >= 1; u-- { // 30,000 unknown users
		fmt.Fprintf(&list, "%d\n", u)
	}
	resp, err := http.Post(base+"/api/v1/segments/LIST/imports?mode=add", "text/csv", strings.NewReader(list.String()))
	if err != nil {
		t.Fatal(err)
	}
	var imp struct{ ID int64 }
	if err := json.NewDecoder(resp.Body).Decode(&imp); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("upload: %d %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	state := func() (processed int64, status string) {
		if err := pool.QueryRow(t.Context(), `SELECT processed, status FROM imports WHERE id = $1`, imp.ID).Scan(&processed, &status); err != nil {
			t.Fatal(err)
		}
		return processed, status
	}
	w := startWorker(t, vars)
	testenv.Eventually(t, 30*time.Second, "the import did not get far", func() bool { n, _ := state(); return n >= 10000 })
	if err := w.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = w.Wait()
	n, status := state()
	if status != "running" {
		t.Fatalf("after the kill the import is %s (%d processed): kill it sooner", status, n)
	}
	t.Logf("killed with %d of 50000 processed", n)
	startWorker(t, vars)
	testenv.Eventually(t, 2*time.Minute, "the second worker did not finish the import", func() bool { _, s := state(); return s == "done" })

	var added, unchanged, processed int64
	if err := pool.QueryRow(t.Context(), `SELECT added, unchanged, processed FROM imports WHERE id = $1`, imp.ID).Scan(&added, &unchanged, &processed); err != nil {
		t.Fatal(err)
	}
	if added != 49900 || unchanged != 100 || processed != 50000 {
		t.Fatalf("added %d, unchanged %d, processed %d", added, unchanged, processed)
	}
	if n := count(t, pool, `SELECT count(*) FROM memberships m JOIN segments s ON s.id = m.segment_id WHERE s.slug = 'LIST' AND m.user_id BETWEEN 1 AND 50000`); n != 50000 {
		t.Fatalf("%d of the 50,000 listed users hold LIST", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM users`); n != 50000 {
		t.Fatalf("%d users registered, want 50,000", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM (SELECT user_id FROM membership_history WHERE slug = 'LIST' GROUP BY user_id HAVING count(*) <> 1) t`); n != 0 {
		t.Fatalf("%d users have other than one history row for LIST", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM membership_history WHERE reason = 'import'`); n != 49900 {
		t.Fatalf("%d history rows of reason import, want 49,900", n)
	}
	testenv.AssertHistoryReplays(t, pool)
}
