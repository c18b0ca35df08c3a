// Package apitest holds what the service's tests share: requests through a
// real handler, problem decoding, one-value SQL reads, a scheduler that
// schedules nothing, a test configuration, a coherent read cache and the
// router's options as the service sets them up.
package apitest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/app"
	"github.com/segments-service/segments/internal/config"
	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/tools/testenv"
)

// Response is a recorded response with its body.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Do sends a request through h. A string or []byte body is sent as is; any
// other non-nil body is encoded as JSON. A request with a body gets the
// JSON content type unless header (name, value pairs) sets another; the
// name "Host" sets the request's host.
func Do(tb testing.TB, h http.Handler, method, path string, body any, header ...string) Response {
	tb.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			tb.Fatal(err)
		}
		rd = bytes.NewReader(enc)
	}
	req := httptest.NewRequest(method, path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		if header[i] == "Host" {
			req.Host = header[i+1]
			continue
		}
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return Response{Status: rec.Code, Header: rec.Header(), Body: rec.Body.Bytes()}
}

// MustDo is Do that fails tb unless the status is want, and decodes the
// body into out (if not nil).
func MustDo(tb testing.TB, h http.Handler, want int, method, path string, body, out any) Response {
	tb.Helper()
	r := Do(tb, h, method, path, body)
	if r.Status != want {
		tb.Fatalf("%s %s: status %d, want %d; body: %s", method, path, r.Status, want, r.Body)
	}
	if out != nil {
		if err := json.Unmarshal(r.Body, out); err != nil {
			tb.Fatalf("%s %s: decode %s: %v", method, path, r.Body, err)
		}
	}
	return r
}

// Scalar runs a SQL query that returns one integer.
func Scalar(tb testing.TB, pool *pgxpool.Pool, sql string, args ...any) int64 {
	tb.Helper()
	var n int64
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
	return n
}

// Column runs a SQL query and returns its single text column.
func Column(tb testing.TB, pool *pgxpool.Pool, sql string, args ...any) []string {
	tb.Helper()
	rows, _ := pool.Query(context.Background(), sql, args...)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
	return out
}

// NopScheduler schedules nothing: expiries are left to reads and sweeps,
// rollouts to direct calls.
type NopScheduler struct{}

// ScheduleExpiry does nothing.
func (NopScheduler) ScheduleExpiry(context.Context, domain.Expiry) error { return nil }

// ScheduleRollout does nothing.
func (NopScheduler) ScheduleRollout(context.Context, int64) error { return nil }

// RolloutQueued reports no rollout queued.
func (NopScheduler) RolloutQueued(context.Context, int64) (bool, error) { return false, nil }

// Config returns the service's default configuration with the given
// overrides (environment variable names to values).
func Config(tb testing.TB, env map[string]string) config.Config {
	tb.Helper()
	cfg, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		tb.Fatal(err)
	}
	return cfg
}

// RouterOptions returns the router's options as the service sets them up
// (app.New, as an API process), on pool and the Redis at redisURL, with
// the configuration env (see Config; the cache relays every 5 ms unless env
// says otherwise), its background work started (stopped when tb ends) and
// its read cache serving. now is the services' and the cache's clock.
func RouterOptions(tb testing.TB, pool *pgxpool.Pool, redisURL string, env map[string]string, now func() time.Time, log *zap.Logger) httpapi.Options {
	tb.Helper()
	return App(tb, pool, redisURL, env, now, log).RouterOptions()
}

// App builds an API process of the service with app.New on pool and the
// Redis at redisURL (see RouterOptions) and starts it.
func App(tb testing.TB, pool *pgxpool.Pool, redisURL string, env map[string]string, now func() time.Time, log *zap.Logger) *app.App {
	tb.Helper()
	return Process(tb, pool, redisURL, env, now, log, app.Roles{API: true})
}

// Process is App with the given roles: with Worker, the asynq worker runs
// the tasks of env's WORKER_QUEUE (a queue of the test's own) on pool.
func Process(tb testing.TB, pool *pgxpool.Pool, redisURL string, env map[string]string, now func() time.Time, log *zap.Logger, roles app.Roles) *app.App {
	tb.Helper()
	opt, err := redis.ParseURL(redisURL)
	if err != nil {
		tb.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	tb.Cleanup(func() { rdb.Close() })
	vars := map[string]string{"CACHE_RELAY_INTERVAL": "5ms"}
	maps.Copy(vars, env)
	a, err := app.New(context.Background(), Config(tb, vars), app.Deps{Pool: pool, Direct: testenv.Direct(pool), Redis: rdb, Log: log, Now: now}, roles)
	if err != nil {
		tb.Fatal(err)
	}
	if err := a.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(a.Stop)
	deadline := time.Now().Add(10 * time.Second)
	for a.Cache != nil && !a.Cache.Serving() {
		if time.Now().After(deadline) {
			tb.Fatal("the read cache did not start listening")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return a
}

// Fence is a fenced block of a Markdown file: the lines its fences stand
// on, its language and its text.
type Fence struct {
	Line, End  int
	Lang, Text string
}

// Fences reads the fenced blocks of the Markdown file at path, in order.
func Fences(tb testing.TB, path string) []Fence {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	var (
		all []Fence
		cur *Fence
	)
	for n, line := range strings.Split(string(b), "\n") {
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			cur = &Fence{Line: n + 1, Lang: strings.TrimPrefix(line, "```")}
		case cur != nil && line == "```":
			cur.End = n + 1
			all = append(all, *cur)
			cur = nil
		case cur != nil:
			cur.Text += line + "\n"
		}
	}
	return all
}
