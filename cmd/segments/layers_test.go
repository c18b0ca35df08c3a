package main

import (
	"strconv"
	"testing"
	"time"

	"github.com/segments-service/segments/tools/testenv"
)

// A worker SIGKILLed in the middle of a layered segment's rollout, and a
// second one started: the rollout ends with exactly the users whose layer
// bucket is in the segment's buckets holding it, and no user holds two
// segments of the layer (a manual one of the layer was given to some
// users first: they are skipped).
func TestWorkerKilledMidLayeredRollout(t *testing.T) {
	const users = 100000
	pool, vars, base := rolloutProcesses(t, users, "layer-kill")
	if code := post(t, base+"/api/v1/layers", `{"slug":"L"}`); code != 201 {
		t.Fatalf("create layer: %d", code)
	}
	if code := post(t, base+"/api/v1/segments", `{"slug":"HAND","layer":"L"}`); code != 201 {
		t.Fatalf("create manual: %d", code)
	}
	for u := 1; u <= 2000; u += 7 {
		if code := post(t, base+"/api/v1/users/"+strconv.Itoa(u)+"/segments", `{"add":["HAND"]}`); code != 200 {
			t.Fatalf("give HAND to %d: %d", u, code)
		}
	}
	if code := post(t, base+"/api/v1/segments", `{"slug":"HALF","auto_percent":50,"layer":"L"}`); code != 201 {
		t.Fatalf("create: %d", code)
	}
	rollout := func() (int64, string) { return rolloutState(t, pool, "HALF") }
	w := startWorker(t, vars)
	testenv.Eventually(t, 30*time.Second, "the rollout did not start", func() bool { n, _ := rollout(); return n > 0 })
	if err := w.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = w.Wait()
	n, status := rollout()
	if status != "running" {
		t.Fatalf("after the kill the rollout is %s (%d assigned): kill it sooner", status, n)
	}
	startWorker(t, vars)
	testenv.Eventually(t, 2*time.Minute, "the second worker did not finish the rollout", func() bool { _, s := rollout(); return s == "done" })
	t.Logf("killed with %d assigned", n)
	// HALF owns buckets 0..4999: exactly the users there hold it, but
	// those who hold HAND.
	const mismatches = `
		SELECT count(*) FROM users u
		LEFT JOIN memberships h ON h.user_id = u.id AND h.segment_id = (SELECT id FROM segments WHERE slug = 'HALF')
		LEFT JOIN memberships m ON m.user_id = u.id AND m.segment_id = (SELECT id FROM segments WHERE slug = 'HAND')
		WHERE (layer_bucket('L', u.id) < 5000 AND m.user_id IS NULL) <> (h.user_id IS NOT NULL)`
	if bad := count(t, pool, mismatches); bad != 0 {
		t.Errorf("%d users hold HALF against the bucket rule", bad)
	}
	if two := count(t, pool, `SELECT count(*) FROM (SELECT user_id FROM memberships WHERE layer_id IS NOT NULL GROUP BY user_id, layer_id HAVING count(*) > 1) t`); two != 0 {
		t.Errorf("%d users hold two segments of the layer", two)
	}
	testenv.AssertHistoryReplays(t, pool)
}
