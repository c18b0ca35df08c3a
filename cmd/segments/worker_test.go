package main

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/tools/testenv"
)

// startWorker runs `segments worker` as a child process.
func startWorker(t *testing.T, vars map[string]string) *exec.Cmd {
	t.Helper()
	return startChild(t, "worker", "worker", vars)
}

// startChild runs `segments <command>` (this test binary as the program)
// with vars, logging to a file shown if the test fails, and kills it when
// the test ends.
func startChild(t *testing.T, name, command string, vars map[string]string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], command)
	cmd.Env = append(os.Environ(), "SEGMENTS_TEST_MAIN=1", "EVENTS_STREAM="+testenv.StreamName(t))
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	log, err := os.Create(t.TempDir() + "/" + name + ".log")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("%s log:\n%s", name, tail(string(b), 4000))
		}
	})
	return cmd
}

func count(t *testing.T, pool *pgxpool.Pool, sql string) int64 {
	t.Helper()
	var n int64
	if err := pool.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// TestWorkerKilledMidSweepLosesAndDuplicatesNothing lets 100,000
// memberships expire with no task to remove them, starts a worker whose
// sweep removes them in small batches, kills it with SIGKILL part-way, and
// checks that each membership is either still stored or removed exactly
// once; then a second worker finishes the job.
func TestWorkerKilledMidSweepLosesAndDuplicatesNothing(t *testing.T) {
	const users = 50000 // × 2 segments
	url := env.NewDatabase(t)
	pool, err := postgres.Open(t.Context(), url, postgres.PoolConfig{MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	seed := fmt.Sprintf(`
		BEGIN;
		SELECT set_config('segments.reason', 'manual', true), set_config('segments.audit', '{"actor": "test"}', true);
		INSERT INTO segments (slug) VALUES ('A'), ('B');
		INSERT INTO users (id) SELECT generate_series(1, %d);
		INSERT INTO memberships (user_id, segment_id, expires_at)
		SELECT u.id, s.id, clock_timestamp() + interval '1 second' FROM users u, segments s;
		COMMIT;`, users)
	if _, err := pool.Exec(t.Context(), seed); err != nil {
		t.Fatal(err)
	}
	const total = 2 * users
	var lastExpiry time.Time
	if err := pool.QueryRow(t.Context(), `SELECT max(expires_at) FROM memberships`).Scan(&lastExpiry); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(lastExpiry))

	vars := map[string]string{
		"DATABASE_URL":   url,
		"REDIS_URL":      env.RedisURL,
		"WORKER_QUEUE":   fmt.Sprintf("kill-test-%d", time.Now().UnixNano()),
		"SWEEP_INTERVAL": "1s",
		"SWEEP_BATCH":    "200",
	}
	removed := func() int64 {
		return count(t, pool, `SELECT count(*) FROM membership_history WHERE operation = 'remove'`)
	}
	w := startWorker(t, vars)
	testenv.Eventually(t, 30*time.Second, "the sweep did not start", func() bool { return removed() >= 2000 })
	if err := w.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = w.Wait()

	// One snapshot: the killed worker's last batch may still commit on the
	// server meanwhile.
	var gone, left int64
	if err := pool.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM membership_history WHERE operation = 'remove'),
	                                              (SELECT count(*) FROM memberships)`).Scan(&gone, &left); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed mid-sweep: %d removed, %d left", gone, left)
	if left == 0 || gone+left != total {
		t.Fatalf("after the kill: %d removed + %d left, want %d with some left", gone, left, total)
	}
	testenv.AssertHistoryReplays(t, pool)

	w = startWorker(t, vars)
	testenv.Eventually(t, 60*time.Second, "the second worker did not finish the sweep", func() bool {
		return count(t, pool, `SELECT count(*) FROM memberships`) == 0
	})
	if err := w.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := w.Wait(); err != nil {
		t.Errorf("worker after SIGTERM: %v", err)
	}
	// Each removal is a TTL removal stamped at its expiry: after the add,
	// no later than the last expiry (long before the sweep ran).
	var removals, distinct, stampedAtExpiry int64
	err = pool.QueryRow(t.Context(), `
		SELECT count(*), count(DISTINCT (h.user_id, h.segment_id)),
		       count(*) FILTER (WHERE h.reason = 'ttl' AND h.at > a.at AND h.at <= $1)
		FROM membership_history h
		JOIN membership_history a ON a.user_id = h.user_id AND a.segment_id = h.segment_id AND a.operation = 'add'
		WHERE h.operation = 'remove'`, lastExpiry).Scan(&removals, &distinct, &stampedAtExpiry)
	if err != nil {
		t.Fatal(err)
	}
	if removals != total || distinct != total || stampedAtExpiry != total {
		t.Errorf("removals %d, distinct memberships %d, ttl stamped at expiry %d; want %d of each", removals, distinct, stampedAtExpiry, total)
	}
	testenv.AssertHistoryReplays(t, pool)
}

// TestWorkerKilledMidRolloutIsTakenOverAtOnce kills a worker with SIGKILL in
// the middle of a rollout and starts another: the new worker takes the
// rollout over as soon as it starts (asynq itself would hand the killed
// task out again only after its lease lapsed and its recoverer looked:
// 60 to 120 s), and the rollout ends exact.
func TestWorkerKilledMidRolloutIsTakenOverAtOnce(t *testing.T) {
	const users = 200000
	pool, vars, base := rolloutProcesses(t, users, "rollout-kill")
	if code := post(t, base+"/api/v1/segments", `{"slug":"HALF","auto_percent":50}`); code != 201 {
		t.Fatalf("create: %d", code)
	}
	assigned := func() (int64, string) { return rolloutState(t, pool, "HALF") }
	w := startWorker(t, vars)
	testenv.Eventually(t, 30*time.Second, "the rollout did not start", func() bool { n, _ := assigned(); return n > 0 })
	if err := w.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = w.Wait()
	n, status := assigned()
	if status != "running" {
		t.Fatalf("after the kill the rollout is %s (%d assigned): kill it sooner", status, n)
	}
	killed := time.Now()
	startWorker(t, vars)
	// Taken over: the rollout moves on within seconds (asynq would hand
	// the task out again after a minute or two); then it runs to the end.
	testenv.Eventually(t, 20*time.Second, "the second worker did not take the rollout over", func() bool {
		m, _ := assigned()
		return m > n
	})
	tookOver := time.Since(killed)
	testenv.Eventually(t, 2*time.Minute, "the second worker did not finish the rollout", func() bool {
		_, status := assigned()
		return status == "done"
	})
	t.Logf("killed with %d of %d assigned; the second worker went on %s after it started, done after %s",
		n, users/2, tookOver.Round(100*time.Millisecond), time.Since(killed).Round(100*time.Millisecond))
	if n, _ := assigned(); n != users/2 || count(t, pool, `SELECT count(*) FROM memberships`) != users/2 {
		t.Errorf("assigned %d, %d memberships; want %d", n, count(t, pool, `SELECT count(*) FROM memberships`), users/2)
	}
	testenv.AssertHistoryReplays(t, pool)
}

// TestWorkerKilledMidPercentChange raises a percent segment from 10 to
// 40 % on 100,000 users, kills the worker with SIGKILL while the change's
// rollout runs, and starts another: the rollout ends exact (the 40,000
// lowest (hash, id) hold the segment, no one else), and history replays.
func TestWorkerKilledMidPercentChange(t *testing.T) {
	const users = 100000
	pool, vars, base := rolloutProcesses(t, users, "percent-kill")
	if code := post(t, base+"/api/v1/segments", `{"slug":"RAMP","auto_percent":10}`); code != 201 {
		t.Fatalf("create: %d", code)
	}
	rollout := func() (int64, string) { return rolloutState(t, pool, "RAMP") }
	w := startWorker(t, vars)
	testenv.Eventually(t, 60*time.Second, "the first rollout did not finish", func() bool { _, s := rollout(); return s == "done" })

	req, err := http.NewRequest(http.MethodPatch, base+"/api/v1/segments/RAMP", strings.NewReader(`{"auto_percent":40}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/merge-patch+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PATCH: %d", resp.StatusCode)
	}
	testenv.Eventually(t, 30*time.Second, "the change's rollout did not start", func() bool { n, s := rollout(); return s == "running" && n > 0 })
	if err := w.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = w.Wait()
	n, status := rollout()
	if status != "running" {
		t.Fatalf("after the kill the rollout is %s (%d assigned): kill it sooner", status, n)
	}
	startWorker(t, vars)
	testenv.Eventually(t, 30*time.Second, "the second worker did not finish the change", func() bool { _, s := rollout(); return s == "done" })
	t.Logf("killed with %d of %d assigned", n, users*40/100)
	const mismatches = `
		WITH ranked AS (
			SELECT u.id, row_number() OVER (ORDER BY segment_hash('RAMP', u.id), u.id) AS rank FROM users u
		)
		SELECT count(*) FROM ranked r
		LEFT JOIN memberships m ON m.user_id = r.id AND m.segment_id = (SELECT id FROM segments WHERE slug = 'RAMP')
		WHERE (r.rank <= 40000) <> (m.user_id IS NOT NULL)`
	if bad := count(t, pool, mismatches); bad != 0 {
		t.Errorf("%d users hold RAMP against the rule (the 40,000 lowest hashes)", bad)
	}
	if n, _ := rollout(); n != 40000 {
		t.Errorf("assigned %d, want 40000", n)
	}
	testenv.AssertHistoryReplays(t, pool)
}

// rolloutProcesses registers users 1..users in a database of the test's
// own and starts an API process on it; it returns the pool, the settings
// (rollouts in batches of 500 on one connection, for a worker to share)
// and the API's base URL.
func rolloutProcesses(t *testing.T, users int, queue string) (*pgxpool.Pool, map[string]string, string) {
	t.Helper()
	url := env.NewDatabase(t)
	pool, err := postgres.Open(t.Context(), url, postgres.PoolConfig{MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := pool.Exec(t.Context(), fmt.Sprintf(`INSERT INTO users (id) SELECT generate_series(1, %d)`, users)); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{
		"DATABASE_URL":    url,
		"REDIS_URL":       env.RedisURL,
		"WORKER_QUEUE":    fmt.Sprintf("%s-%d", queue, time.Now().UnixNano()),
		"ROLLOUT_BATCH":   "500",
		"ROLLOUT_WORKERS": "1",
	}
	base, _ := startService(t, "serve", maps.Clone(vars))
	return pool, vars, base
}

// rolloutState reads slug's rollout: assigned so far, and status.
func rolloutState(t *testing.T, pool *pgxpool.Pool, slug string) (int64, string) {
	t.Helper()
	var n int64
	var status string
	if err := pool.QueryRow(t.Context(), `SELECT rollout_assigned, rollout_status FROM segments WHERE slug = $1`, slug).Scan(&n, &status); err != nil {
		t.Fatal(err)
	}
	return n, status
}
