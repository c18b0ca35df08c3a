package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/tools/localserver"
	"github.com/segments-service/segments/tools/testenv"
)

// replica is one `segments serve` process.
type replica struct {
	base string
	cmd  *exec.Cmd
}

// startReplica runs `segments serve` as a child process with vars and
// waits until its read cache serves.
func startReplica(t *testing.T, name string, vars map[string]string) replica {
	t.Helper()
	port, err := localserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	vars = maps.Clone(vars)
	vars["HTTP_ADDR"] = fmt.Sprintf("127.0.0.1:%d", port)
	cmd := startChild(t, name, "serve", vars)
	r := replica{base: "http://" + vars["HTTP_ADDR"], cmd: cmd}
	waitFor(t, r.base+"/healthz")
	testenv.Eventually(t, 10*time.Second, name+"'s cache did not start listening", func() bool {
		_, status := r.read(t, 1)
		return !strings.Contains(status, "not listening")
	})
	return r
}

// read returns the user's segment slugs as r answers them, and the
// Cache-Status.
func (r replica) read(t *testing.T, user int64) ([]string, string) {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("%s/api/v1/users/%d/segments", r.base, user))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Segments []struct{ Slug string } `json:"segments"`
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET segments of %d: %d %s", user, resp.StatusCode, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	slugs := []string{}
	for _, s := range body.Segments {
		slugs = append(slugs, s.Slug)
	}
	return slugs, resp.Header.Get("Cache-Status")
}

// prime reads the user from r until r answers from its cache.
func (r replica) prime(t *testing.T, user int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, status := r.read(t, user); status == "segments; hit" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no cache hit for user %d in 5s", user)
		}
		time.Sleep(time.Millisecond)
	}
}

func (r replica) send(t *testing.T, method, path, body string) string {
	t.Helper()
	req, err := http.NewRequest(method, r.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return string(b)
}

// stored reads the user's active segments from the database.
func stored(t *testing.T, pool *pgxpool.Pool, user int64) []string {
	t.Helper()
	rows, err := pool.Query(t.Context(), `
		SELECT s.slug FROM memberships m JOIN segments s ON s.id = m.segment_id
		WHERE m.user_id = $1 AND (m.expires_at IS NULL OR m.expires_at > now()) ORDER BY s.slug`, user)
	if err != nil {
		t.Fatal(err)
	}
	slugs := []string{}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		slugs = append(slugs, s)
	}
	return slugs
}

// converges waits up to a second for r to answer what the database holds
// for every user.
func converges(t *testing.T, what string, r replica, pool *pgxpool.Pool, users ...int64) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for _, u := range users {
		for {
			want := stored(t, pool, u)
			got, status := r.read(t, u)
			if slices.Equal(got, want) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: user %d is %v (%s) a second later, the database says %v", what, u, got, status, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func cacheVars(t *testing.T) (map[string]string, *pgxpool.Pool) {
	url := env.NewDatabase(t)
	pool, err := postgres.Open(t.Context(), url, postgres.PoolConfig{MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return map[string]string{
		"DATABASE_URL": url,
		"REDIS_URL":    env.RedisURL,
		"WORKER_QUEUE": "cache-" + strings.ReplaceAll(t.Name(), "/", "-"),
		"LOG_LEVEL":    "warn",
	}, pool
}

// Two API processes and a worker on one database: every kind of change,
// made through A, by the worker or by plain SQL, reaches B's cache within
// a second, and A reads its own writes at once.
func TestReplicasStayCoherent(t *testing.T) {
	vars, pool := cacheVars(t)
	a := startReplica(t, "A", vars)
	b := startReplica(t, "B", vars)
	startWorker(t, mapWith(vars, "SWEEP_INTERVAL", "1s"))
	a.send(t, "POST", "/api/v1/segments", `{"slug":"X"}`)
	a.send(t, "POST", "/api/v1/segments", `{"slug":"Y"}`)

	t.Run("change through A", func(t *testing.T) {
		var delays []time.Duration
		for u := int64(100); u < 140; u++ {
			a.prime(t, u)
			b.prime(t, u)
			a.send(t, "POST", fmt.Sprintf("/api/v1/users/%d/segments", u), `{"add":["X"]}`)
			answered := time.Now()
			if got, status := a.read(t, u); !slices.Equal(got, []string{"X"}) {
				t.Fatalf("A reads %v (%s) right after its own change", got, status)
			}
			for {
				got, _ := b.read(t, u)
				if slices.Equal(got, []string{"X"}) {
					delays = append(delays, time.Since(answered))
					break
				}
				if time.Since(answered) > time.Second {
					t.Fatalf("B still reads %v for user %d a second after the change", got, u)
				}
			}
		}
		t.Logf("a change through A showed on B after p50 %s, p99 %s, max %s (%d changes)",
			percentile(delays, 0.5), percentile(delays, 0.99), slices.Max(delays), len(delays))
	})

	t.Run("expiry", func(t *testing.T) {
		const u = 200
		var res struct {
			Segments []struct {
				ExpiresAt time.Time `json:"expires_at"`
			} `json:"segments"`
		}
		if err := json.Unmarshal([]byte(a.send(t, "POST", fmt.Sprintf("/api/v1/users/%d/segments", u),
			`{"add":["Y"],"ttl_seconds":2}`)), &res); err != nil {
			t.Fatal(err)
		}
		expiry := res.Segments[0].ExpiresAt
		b.prime(t, u)
		reads := 0
		for time.Now().Before(expiry.Add(500 * time.Millisecond)) {
			asked := time.Now()
			got, status := b.read(t, u)
			if !asked.Before(expiry) && len(got) > 0 {
				t.Fatalf("B answered %v (%s) for a read sent %s after the expiry", got, status, asked.Sub(expiry))
			}
			reads++
			time.Sleep(2 * time.Millisecond)
		}
		t.Logf("%d reads of B around the expiry", reads)
		// The worker removes it and writes the history.
		testenv.Eventually(t, 5*time.Second, "TTL removal", func() bool {
			return count(t, pool, `SELECT count(*) FROM membership_history WHERE user_id = 200 AND reason = 'ttl'`) == 1
		})
		converges(t, "after the TTL removal", b, pool, u)
	})

	users := make([]int64, 300)
	ids := make([]string, len(users))
	for i := range users {
		users[i] = int64(1000 + i)
		ids[i] = fmt.Sprint(users[i])
	}
	a.send(t, "POST", "/api/v1/users", `{"user_ids":[`+strings.Join(ids, ",")+`]}`)
	for _, u := range users {
		b.prime(t, u)
	}

	t.Run("rollout", func(t *testing.T) {
		a.send(t, "POST", "/api/v1/segments", `{"slug":"HALF","auto_percent":50}`)
		testenv.Eventually(t, 20*time.Second, "rollout done", func() bool {
			return strings.Contains(a.send(t, "GET", "/api/v1/segments/HALF", ""), `"status":"done"`)
		})
		n := count(t, pool, `SELECT count(*) FROM memberships m JOIN segments s ON s.id = m.segment_id WHERE s.slug = 'HALF'`)
		if want := count(t, pool, `SELECT round(count(*) * 0.5) FROM users`); n != want || n < 150 {
			t.Fatalf("the rollout gave HALF to %d users, want %d", n, want)
		}
		converges(t, "after the rollout", b, pool, users...)
	})

	t.Run("segment deletion", func(t *testing.T) {
		for _, u := range users {
			a.prime(t, u)
			b.prime(t, u)
		}
		a.send(t, "DELETE", "/api/v1/segments/HALF", "")
		for _, u := range users {
			if got, status := a.read(t, u); slices.Contains(got, "HALF") {
				t.Fatalf("A reads %v (%s) after deleting HALF", got, status)
			}
		}
		converges(t, "after the deletion", b, pool, users...)
	})

	t.Run("registration grants", func(t *testing.T) {
		a.send(t, "POST", "/api/v1/segments", `{"slug":"EVERYONE","auto_percent":100}`)
		a.send(t, "POST", "/api/v1/users", `{"user_ids":[5000]}`)
		if got, _ := b.read(t, 5000); !slices.Equal(got, []string{"EVERYONE"}) {
			t.Fatalf("B reads %v for a user registered with a 100 %% segment", got)
		}
	})

	t.Run("plain SQL", func(t *testing.T) {
		b.prime(t, 100)
		if _, err := pool.Exec(t.Context(), `
			BEGIN;
			SELECT set_config('segments.reason', 'manual', true);
			DELETE FROM memberships WHERE user_id = 100;
			COMMIT;`); err != nil {
			t.Fatal(err)
		}
		converges(t, "after a delete in SQL", b, pool, 100)
	})
}

func mapWith(m map[string]string, kv ...string) map[string]string {
	m = maps.Clone(m)
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// B's notification session is terminated while A changes users B has
// cached, and A changes every user again before B can listen again: B must
// drop its cache, so that after a second every answer of B is the
// database's. Three rounds.
func TestLostNotificationsNeverLeaveAStaleCache(t *testing.T) {
	vars, pool := cacheVars(t)
	a := startReplica(t, "A", vars)
	b := startReplica(t, "B", vars)
	a.send(t, "POST", "/api/v1/segments", `{"slug":"Z"}`)
	users := make([]int64, 40)
	for i := range users {
		users[i] = int64(i + 1)
	}
	host, _ := os.Hostname()
	listener := fmt.Sprintf("segments cache listener %s:%d", host, b.cmd.Process.Pid)
	toggle := func(u int64) {
		op := "add"
		if slices.Contains(stored(t, pool, u), "Z") {
			op = "remove"
		}
		a.send(t, "POST", fmt.Sprintf("/api/v1/users/%d/segments", u), `{"`+op+`":["Z"]}`)
	}

	for round := range 3 {
		testenv.Eventually(t, 5*time.Second, "B's listener session", func() bool {
			return count(t, pool, `SELECT count(*) FROM pg_stat_activity WHERE application_name = '`+listener+`'`) == 1
		})
		for _, u := range users {
			b.prime(t, u)
		}
		ctx, stop := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				toggle(users[i%len(users)])
			}
		})
		time.Sleep(30 * time.Millisecond)
		if n := count(t, pool, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '`+listener+`'`); n != 1 {
			t.Fatalf("round %d: terminated %d sessions named %q", round, n, listener)
		}
		stop()
		wg.Wait()
		// Within the second B takes to reconnect, every user changes.
		for _, u := range users {
			toggle(u)
		}
		converges(t, fmt.Sprintf("round %d", round), b, pool, users...)
	}
	_, metrics := get(t, b.base+"/metrics")
	if !strings.Contains(metrics, `segments_cache_flushes_total{cause="disconnect"} 3`) {
		t.Errorf("B's metrics do not count 3 disconnects:\n%s", grepLines(metrics, "segments_cache_"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for line := range strings.SplitSeq(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
