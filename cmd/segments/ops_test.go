package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"github.com/jackc/pgx/v5"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/tools/localserver"
	"github.com/segments-service/segments/tools/testenv"
)

// startService runs `segments <cmd>` in this process with vars, waits until
// it answers /healthz, and stops it when the test ends. It returns the base
// URL and the program's output.
func startService(t *testing.T, cmd string, vars map[string]string) (string, *syncBuffer) {
	t.Helper()
	port, err := localserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	vars["HTTP_ADDR"] = fmt.Sprintf("127.0.0.1:%d", port)
	if _, ok := vars["EVENTS_STREAM"]; !ok {
		vars["EVENTS_STREAM"] = testenv.StreamName(t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"segments", cmd}, getenv(vars), out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("segments %s: %v", cmd, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("segments %s did not stop", cmd)
		}
	})
	base := "http://" + vars["HTTP_ADDR"]
	waitFor(t, base+"/healthz")
	return base, out
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func post(t *testing.T, url, body string) int {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestMetricsExposeTheNamedSeries(t *testing.T) {
	vars := map[string]string{
		"DATABASE_URL":   env.NewDatabase(t),
		"REDIS_URL":      env.RedisURL,
		"WORKER_QUEUE":   fmt.Sprintf("metrics-%d", time.Now().UnixNano()),
		"SWEEP_INTERVAL": "1s",
	}
	base, _ := startService(t, "all", vars)
	if code := post(t, base+"/api/v1/segments", `{"slug":"M"}`); code != 201 {
		t.Fatalf("create: %d", code)
	}
	if code := post(t, base+"/api/v1/segments", `{"slug":"AUTO","auto_percent":100}`); code != 201 {
		t.Fatalf("create percent segment: %d", code)
	}
	if code := post(t, base+"/api/v1/users/1/segments", `{"add":["M"],"ttl_seconds":1}`); code != 200 {
		t.Fatalf("change: %d", code)
	}
	get(t, base+"/api/v1/users/2/segments")
	get(t, base+"/api/v1/no-such-route")

	// Wait for the expiry task and the rollout to run, then read metrics.
	var metrics string
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, metrics = get(t, base+"/metrics")
		// The sweep may remove the membership before its task runs, and the
		// periodic resume may run the rollout before its task (which then
		// waits 5 s and finds it done): wait for all of them.
		if strings.Contains(metrics, `segments_membership_changes_total{operation="remove",reason="ttl"} 1`) &&
			strings.Contains(metrics, `segments_tasks_processed_total{outcome="success",type="membership:expire"} 1`) &&
			strings.Contains(metrics, `segments_tasks_processed_total{outcome="success",type="segment:rollout"} 1`) &&
			strings.Contains(metrics, `segments_rollouts{status="done"} 1`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the expiry and the rollout did not show in /metrics:\n%s", metrics)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, want := range []string{
		`segments_http_requests_total{method="POST",route="/api/v1/segments",status="201"} 2`,
		`segments_http_requests_total{method="GET",route="/api/v1/users/{user_id}/segments",status="200"} 1`,
		`segments_http_requests_total{method="GET",route="unmatched",status="404"} 1`,
		`segments_http_request_duration_seconds_bucket{method="POST",route="/api/v1/users/{user_id}/segments",le="+Inf"} 1`,
		`segments_membership_changes_total{operation="add",reason="manual"} 1`,
		// User 1 got AUTO when the change registered it, user 2 when read.
		`segments_membership_changes_total{operation="add",reason="auto"} 2`,
		`segments_membership_changes_total{operation="remove",reason="segment_deleted"} 0`,
		`segments_report_downloads_total{outcome="ok",scope="all"} 0`,
		`segments_segments 2`,
		`segments_rollout_users_left 0`,
		`segments_db_pool_connections{state="idle"}`,
		`segments_db_pool_max_connections 32`,
		`segments_db_pool_acquires_total`,
		`segments_task_queue_tasks{state="pending"}`,
		`segments_tasks_processed_total{outcome="success",type="membership:expire"} 1`,
		`segments_tasks_processed_total{outcome="success",type="segment:rollout"} 1`,
		`segments_tasks_duration_seconds_bucket{type="membership:sweep"`,
		`segments_cache_lookups_total{result="hit"}`,
		`segments_cache_lookups_total{result="not_listening"}`,
		`segments_cache_invalidated_users_total{source="local"} 1`,
		`segments_cache_invalidated_users_total{source="notified"}`,
		`segments_cache_flushes_total{cause="disconnect"} 0`,
		`segments_cache_fills_refused_total`,
		`segments_cache_entries`,
		`segments_cache_listening 1`,
		`segments_cache_notification_lag_seconds_count`,
		`go_goroutines`,
		`process_resident_memory_bytes`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// Every metric the Grafana dashboard queries is one the service exports.
	dash, err := os.ReadFile("../../deploy/grafana/dashboards/segments.json")
	if err != nil {
		t.Fatal(err)
	}
	queried := regexp.MustCompile(`segments_[a-z_]+`).FindAllString(string(dash), -1)
	if len(queried) < 10 {
		t.Fatalf("the dashboard queries only %v", queried)
	}
	for _, name := range queried {
		if !regexp.MustCompile(`(?m)^` + name + `[{ ]`).MatchString(metrics) {
			t.Errorf("the dashboard queries %s, which /metrics lacks", name)
		}
	}
	// No label carries a user id or a slug.
	for _, bad := range []string{`"/api/v1/users/1/segments"`, `"M"`, `"AUTO"`} {
		if strings.Contains(metrics, bad) {
			t.Errorf("/metrics has the unbounded label value %s", bad)
		}
	}
}

// TestReadinessFollowsPostgresAndRedis stops Postgres, then Redis, under a
// running service and starts them again: /readyz answers 503 naming the one
// that is down, and 200 again once it is back, with no restart.
func TestReadinessFollowsPostgresAndRedis(t *testing.T) {
	dir := testenv.ServerDir(t)
	pgDir := filepath.Join(dir, "pg")
	pg, err := localserver.StartPostgres(t.Context(), localserver.PostgresOptions{Dir: pgDir, Throwaway: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	rd, err := localserver.StartRedis(t.Context(), localserver.RedisOptions{Dir: filepath.Join(dir, "redis")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Stop() })
	if _, _, err := postgres.Migrate(pg.URL("postgres"), "up"); err != nil {
		t.Fatal(err)
	}
	base, _ := startService(t, "serve", map[string]string{"DATABASE_URL": pg.URL("postgres"), "REDIS_URL": rd.URL(0)})

	type health struct {
		Status string
		Checks map[string]string
	}
	ready := func() (int, health) {
		code, body := get(t, base+"/readyz")
		var h health
		if err := json.Unmarshal([]byte(body), &h); err != nil {
			t.Fatalf("readyz body %q: %v", body, err)
		}
		return code, h
	}
	waitReady := func(want int, what string) health {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			code, h := ready()
			if code == want {
				return h
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: /readyz still %d %+v", what, code, h)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitReady(200, "at start")

	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	h := waitReady(503, "Postgres stopped")
	if h.Status != "unavailable" || h.Checks["postgres"] == "ok" || h.Checks["redis"] != "ok" {
		t.Errorf("Postgres down: %+v", h)
	}
	// Requests that need the database say it is unavailable and when to
	// retry: a 503, not a 500.
	for _, req := range []struct{ method, path, body string }{
		{"GET", "/api/v1/users/1/segments", ""},
		{"POST", "/api/v1/users/1/segments", `{"add":["A"]}`},
		{"GET", "/api/v1/segments", ""},
	} {
		r, err := http.NewRequest(req.method, base+req.path, strings.NewReader(req.body))
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" ||
			resp.Header.Get("Content-Type") != "application/problem+json" || !strings.Contains(string(body), "urn:segments:problem:unavailable") {
			t.Errorf("%s %s with Postgres down: %d, Retry-After %q: %s", req.method, req.path, resp.StatusCode, resp.Header.Get("Retry-After"), body)
		}
	}
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("healthz with Postgres down: %d", code)
	}
	if pg, err = localserver.StartPostgres(t.Context(), localserver.PostgresOptions{Dir: pgDir, Port: pg.Port(), Throwaway: true}); err != nil {
		t.Fatal(err)
	}
	waitReady(200, "Postgres back")

	if err := rd.Stop(); err != nil {
		t.Fatal(err)
	}
	h = waitReady(503, "Redis stopped")
	if h.Checks["redis"] == "ok" || h.Checks["postgres"] != "ok" {
		t.Errorf("Redis down: %+v", h)
	}
	if rd, err = localserver.StartRedis(t.Context(), localserver.RedisOptions{Dir: filepath.Join(dir, "redis"), Port: rd.Port()}); err != nil {
		t.Fatal(err)
	}
	waitReady(200, "Redis back")
}

// serveWithAdmin starts `segments serve` on a database of the test's own
// and returns its base URL and an admin connection to that database.
func serveWithAdmin(t *testing.T) (string, *pgx.Conn) {
	t.Helper()
	dbURL := env.NewDatabase(t)
	base, _ := startService(t, "serve", map[string]string{"DATABASE_URL": dbURL, "REDIS_URL": env.RedisURL})
	admin, err := pgx.Connect(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close(context.Background()) })
	return base, admin
}

// cutConnections terminates every other connection to admin's database,
// as a restart or failover does, and returns how many it cut.
func cutConnections(t *testing.T, admin *pgx.Conn) int {
	t.Helper()
	const kill = `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`
	var n int
	if err := admin.QueryRow(t.Context(), kill).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestReadinessSaysWhenTheDatabaseIsReadOnly makes the database refuse
// writes, as a standby does after a failover, and expects /readyz to say so.
func TestReadinessSaysWhenTheDatabaseIsReadOnly(t *testing.T) {
	base, admin := serveWithAdmin(t)
	// Set the database read-only (or back) and drop the service's
	// connections, as a failover does, so that new ones see it.
	setReadOnly := func(on bool) {
		t.Helper()
		sql := `DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = ` + fmt.Sprint(on) + `', current_database()); END $$`
		if _, err := admin.Exec(t.Context(), sql); err != nil {
			t.Fatal(err)
		}
		cutConnections(t, admin)
	}
	waitFor := func(want int, says, what string) {
		t.Helper()
		testenv.Eventually(t, 20*time.Second, what, func() bool {
			code, body := get(t, base+"/readyz")
			return code == want && strings.Contains(body, says)
		})
	}
	waitFor(200, `"postgres":"ok"`, "not ready at start")
	setReadOnly(true)
	waitFor(503, "read-only", "/readyz never said the database is read-only")
	setReadOnly(false)
	waitFor(200, `"postgres":"ok"`, "not ready again once the database accepts writes")
}

// TestConnectionsAreLimited holds HTTP_MAX_CONNS keep-alive connections
// open: another client waits until one of them closes.
func TestConnectionsAreLimited(t *testing.T) {
	base, _ := startService(t, "serve", map[string]string{
		"DATABASE_URL": env.NewDatabase(t), "REDIS_URL": env.RedisURL, "HTTP_MAX_CONNS": "2",
	})
	addr := strings.TrimPrefix(base, "http://")
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		if _, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	client := &http.Client{Timeout: 700 * time.Millisecond}
	if resp, err := client.Get(base + "/healthz"); err == nil {
		resp.Body.Close()
		t.Fatalf("a third connection was served (%d) while two were held", resp.StatusCode)
	}
	held[0].Close()
	client.Timeout = 5 * time.Second
	resp, err := client.Get(base + "/healthz")
	if err != nil {
		t.Fatalf("not served once a connection closed: %v", err)
	}
	resp.Body.Close()
}

// TestReadsSurviveDroppedConnections cuts every database connection of a
// busy service (as a restart or failover does) and reads at once: each read
// finds a dead pooled connection at most once and is answered from a fresh
// one.
func TestReadsSurviveDroppedConnections(t *testing.T) {
	base, admin := serveWithAdmin(t)
	readAll := func(what string) {
		t.Helper()
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Go(func() {
				if code, body := get(t, fmt.Sprintf("%s/api/v1/users/%d/segments", base, i+1)); code != 200 {
					t.Errorf("%s: read %d: %d %s", what, i, code, body)
				}
			})
		}
		wg.Wait()
	}
	for round := range 3 {
		readAll("warm-up")
		n := cutConnections(t, admin)
		if n == 0 {
			t.Fatalf("round %d: no connection to cut", round)
		}
		readAll(fmt.Sprintf("round %d, right after %d connections were cut", round, n))
	}
}

// TestSlowClientIsCutOff trickles a request's headers a byte at a time and
// expects the server to hang up at its read-header timeout.
func TestSlowClientIsCutOff(t *testing.T) {
	base, _ := startService(t, "serve", map[string]string{
		"DATABASE_URL":             env.NewDatabase(t),
		"REDIS_URL":                env.RedisURL,
		"HTTP_READ_HEADER_TIMEOUT": "500ms",
	})
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	request := "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 100) + "\r\n\r\n"
	var werr error
	for i := 0; i < len(request) && werr == nil; i++ {
		_, werr = conn.Write([]byte{request[i]})
		time.Sleep(50 * time.Millisecond)
		if time.Since(start) > 10*time.Second {
			t.Fatal("the server still reads after 10 s")
		}
	}
	// Whatever was written, the server has closed the connection without
	// serving the request.
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(conn)
	elapsed := time.Since(start)
	if strings.Contains(string(b), "200 OK") {
		t.Fatalf("the slow request was served after %s: %q", elapsed, b)
	}
	if elapsed > 5*time.Second {
		t.Errorf("cut off only after %s", elapsed)
	}
	t.Logf("cut off after %s (write error %v), answer %q", elapsed.Round(10*time.Millisecond), werr, b)
}

func TestWorkerServesOperationalEndpointsOnly(t *testing.T) {
	base, _ := startService(t, "worker", map[string]string{
		"DATABASE_URL": env.NewDatabase(t),
		"REDIS_URL":    env.RedisURL,
		"WORKER_QUEUE": fmt.Sprintf("ops-%d", time.Now().UnixNano()),
	})
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200, "/api/v1/segments": 404, "/admin/queues": 404} {
		if code, _ := get(t, base+path); code != want {
			t.Errorf("worker %s: %d, want %d", path, code, want)
		}
	}
	if _, m := get(t, base+"/metrics"); !strings.Contains(m, "segments_db_pool_max_connections") {
		t.Error("worker metrics lack the pool")
	}
}

func TestQueuesUIIsOffByDefault(t *testing.T) {
	vars := func(on string) map[string]string {
		return map[string]string{"DATABASE_URL": env.NewDatabase(t), "REDIS_URL": env.RedisURL, "ADMIN_QUEUES_UI": on}
	}
	off, _ := startService(t, "serve", vars(""))
	if code, _ := get(t, off+"/admin/queues"); code != 404 {
		t.Errorf("UI off: /admin/queues %d", code)
	}
	on, _ := startService(t, "serve", vars("true"))
	code, body := get(t, on+"/admin/queues")
	if code != 200 || !regexp.MustCompile(`(?i)<html`).MatchString(body) {
		t.Errorf("UI on: /admin/queues %d %.200q", code, body)
	}
	if code, body := get(t, on+"/admin/queues/api/queues"); code != 200 || !strings.Contains(body, "queues") {
		t.Errorf("UI on: its API answered %d %.200q", code, body)
	}
}

func TestProbe(t *testing.T) {
	vars := map[string]string{"DATABASE_URL": env.NewDatabase(t), "REDIS_URL": env.RedisURL}
	startService(t, "serve", vars)
	var out syncBuffer
	if err := run(t.Context(), []string{"segments", "probe", "/readyz"}, getenv(vars), &out); err != nil || !strings.HasPrefix(out.String(), "200 ") {
		t.Errorf("probe /readyz: %v, %q", err, out.String())
	}
	if err := run(t.Context(), []string{"segments", "probe", "/nope"}, getenv(vars), &out); err == nil {
		t.Error("probe of a missing path succeeded")
	}
}
