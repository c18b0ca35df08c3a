package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/segments-service/segments/internal/app"
	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/internal/worker"
	"github.com/segments-service/segments/tools/apitest"
	"github.com/segments-service/segments/tools/localserver"
	"github.com/segments-service/segments/tools/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Run(m, &env) }

// stack is the API and a running worker on a database of the test's own
// and a queue of the test's own.
type stack struct {
	t     *testing.T
	pool  *pgxpool.Pool
	api   http.Handler
	svc   *app.Services
	queue string
	rdb   *redis.Client
	logs  *observer.ObservedLogs
	// startWorker starts the worker, with stackOptions.workerLater.
	startWorker func()
}

type stackOptions struct {
	redisURL      string
	sweepInterval time.Duration
	rolloutBatch  int
	// rolloutMaxRetry is ROLLOUT_MAX_RETRY; zero keeps the default.
	rolloutMaxRetry int
	// rolloutRate is ROLLOUT_RATE; zero keeps the default (no bound).
	rolloutRate int
	// workerStatementTimeout, if set, bounds the worker's statements (it
	// gets a pool of its own).
	workerStatementTimeout time.Duration
	// eventsStream, if set, runs the change event relay into that stream,
	// eventsBatch events at a time (default 50).
	eventsStream string
	eventsBatch  int
	// cacheRelay, if set, turns the API's read cache on, its invalidations
	// relayed this often.
	cacheRelay time.Duration
	// importBatch and importRate are IMPORT_BATCH and IMPORT_RATE; zero
	// keeps the default.
	importBatch, importRate int
	// workerLater leaves the worker to the test's stack.startWorker.
	workerLater bool
}

func newStack(t *testing.T, o stackOptions) *stack {
	t.Helper()
	if o.redisURL == "" {
		o.redisURL = env.RedisURL
	}
	if o.sweepInterval == 0 {
		// Long enough that only expiry tasks remove memberships.
		o.sweepInterval = time.Hour
	}
	if o.rolloutBatch == 0 {
		o.rolloutBatch = 50
	}
	opt, err := redis.ParseURL(o.redisURL)
	if err != nil {
		t.Fatal(err)
	}
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = time.Second, time.Second, time.Second
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { rdb.Close() })

	core, logs := observer.New(zap.InfoLevel)
	log := zap.New(core)
	dbURL := env.NewDatabase(t)
	pool := openPool(t, dbURL, 0)
	queue := fmt.Sprintf("test-%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), rand.Uint32())
	vars := map[string]string{
		"WORKER_QUEUE":       queue,
		"WORKER_CONCURRENCY": "10",
		"SHUTDOWN_TIMEOUT":   "5s",
		"SWEEP_INTERVAL":     o.sweepInterval.String(),
		"SWEEP_BATCH":        "100",
		"ROLLOUT_WORKERS":    "2",
		"ROLLOUT_BATCH":      fmt.Sprint(o.rolloutBatch),
		"REPORT_SECRET":      "a test secret of at least 32 bytes, not a real one",
	}
	if o.rolloutMaxRetry != 0 {
		vars["ROLLOUT_MAX_RETRY"] = fmt.Sprint(o.rolloutMaxRetry)
	}
	if o.rolloutRate != 0 {
		vars["ROLLOUT_RATE"] = fmt.Sprint(o.rolloutRate)
	}
	if o.importBatch != 0 {
		vars["IMPORT_BATCH"] = fmt.Sprint(o.importBatch)
	}
	if o.importRate != 0 {
		vars["IMPORT_RATE"] = fmt.Sprint(o.importRate)
	}
	vars["EVENTS_ENABLED"] = "false"
	if o.eventsStream != "" {
		if o.eventsBatch == 0 {
			o.eventsBatch = 50
		}
		vars["EVENTS_ENABLED"], vars["EVENTS_STREAM"] = "true", o.eventsStream
		vars["EVENTS_BATCH"], vars["EVENTS_INTERVAL"] = fmt.Sprint(o.eventsBatch), "20ms"
	}
	// The API and the worker are built as the service builds them (app.New),
	// the API without its read cache unless asked.
	vars["CACHE_MAX_BYTES"] = "0"
	if o.cacheRelay > 0 {
		vars["CACHE_MAX_BYTES"], vars["CACHE_RELAY_INTERVAL"] = "64MiB", o.cacheRelay.String()
	}
	cfg := apitest.Config(t, vars)
	start := func(pool *pgxpool.Pool, roles app.Roles) *app.App {
		a, err := app.New(t.Context(), cfg, app.Deps{Pool: pool, Redis: rdb, Log: log}, roles)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(a.Stop)
		return a
	}
	api := start(pool, app.Roles{API: true})
	if o.cacheRelay > 0 {
		testenv.Eventually(t, 10*time.Second, "the read cache did not start listening", api.Cache.Serving)
	}
	wpool := pool
	if o.workerStatementTimeout > 0 {
		wpool = openPool(t, dbURL, o.workerStatementTimeout)
	}
	startWorker := func() { start(wpool, app.Roles{Worker: true}) }
	if !o.workerLater {
		startWorker()
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, e := range logs.FilterLevelExact(zap.ErrorLevel).All() {
				t.Logf("error log: %s %v", e.Message, e.ContextMap())
			}
		}
	})
	return &stack{t: t, pool: pool, api: api.Handler(), svc: api.Services, queue: queue, rdb: rdb, logs: logs, startWorker: startWorker}
}

// openPool opens a pool on dbURL, closed when t ends.
func openPool(t *testing.T, dbURL string, statementTimeout time.Duration) *pgxpool.Pool {
	t.Helper()
	pool, err := postgres.Open(t.Context(), dbURL, postgres.PoolConfig{MaxConns: 20, StatementTimeout: statementTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// do sends a request to the API and decodes a 2xx body into out.
func (s *stack) do(method, path string, body any, out any) int {
	s.t.Helper()
	r := apitest.Do(s.t, s.api, method, path, body)
	if out != nil && r.Status < 300 {
		if err := json.Unmarshal(r.Body, out); err != nil {
			s.t.Fatal(err)
		}
	}
	return r.Status
}

func (s *stack) mustDo(method, path string, body any, out any) {
	s.t.Helper()
	if code := s.do(method, path, body, out); code >= 300 {
		s.t.Fatalf("%s %s: status %d", method, path, code)
	}
}

func (s *stack) scalar(sql string, args ...any) int64 {
	s.t.Helper()
	return apitest.Scalar(s.t, s.pool, sql, args...)
}

func (s *stack) held(user int64) []string {
	s.t.Helper()
	var us httpapi.UserSegments
	s.mustDo("GET", fmt.Sprintf("/api/v1/users/%d/segments", user), nil, &us)
	out := []string{}
	for _, m := range us.Segments {
		out = append(out, m.Slug)
	}
	return out
}

// taskGone reports whether the expiry task for e has been processed (asynq
// forgets a task once it succeeds).
func (s *stack) taskGone(e domain.Expiry) bool {
	s.t.Helper()
	_, opts, err := worker.NewExpireTask(e)
	if err != nil {
		s.t.Fatal(err)
	}
	id := ""
	for _, o := range opts {
		if o.Type() == asynq.TaskIDOpt {
			id = o.Value().(string)
		}
	}
	_, err = asynq.NewInspectorFromRedisClient(s.rdb).GetTaskInfo(s.queue, id)
	return err != nil
}

type ttlRemoval struct {
	at    time.Time
	count int64
}

// ttlRemovals returns how many ttl removals history has for the user and
// slug, and the time of the last.
func (s *stack) ttlRemovals(user int64, slug string) ttlRemoval {
	s.t.Helper()
	var r ttlRemoval
	var at *time.Time
	err := s.pool.QueryRow(context.Background(), `
		SELECT count(*), max(at) FROM membership_history
		WHERE user_id = $1 AND slug = $2 AND operation = 'remove' AND reason = 'ttl'`, user, slug).Scan(&r.count, &at)
	if err != nil {
		s.t.Fatal(err)
	}
	if at != nil {
		r.at = *at
	}
	return r
}

func TestMembershipExpiresOnTime(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{})
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "DISCOUNT"}, nil)

	var res httpapi.ChangeSegmentsResponse
	s.mustDo("POST", "/api/v1/users/1/segments", map[string]any{"add": []string{"DISCOUNT"}, "ttl_seconds": 2}, &res)
	expiresAt := *res.Segments[0].ExpiresAt
	if held := s.held(1); len(held) != 1 || !time.Now().Before(expiresAt) {
		t.Fatalf("right after the add: %v", held)
	}

	// Reads stop showing it the moment it expires, whatever the worker does.
	time.Sleep(time.Until(expiresAt))
	if held := s.held(1); len(held) != 0 {
		t.Errorf("at its expiry the membership is still read: %v", held)
	}
	// The task removes the row soon after.
	testenv.Eventually(t, 5*time.Second, "the expired row is still in the table", func() bool {
		return s.scalar(`SELECT count(*) FROM memberships`) == 0
	})
	r := s.ttlRemovals(1, "DISCOUNT")
	if r.count != 1 || !r.at.Equal(expiresAt) {
		t.Errorf("ttl removals: %d at %v, want 1 at the expiry %v", r.count, r.at, expiresAt)
	}
	testenv.AssertHistoryReplays(t, s.pool)
}

func TestOldExpiryTaskSparesARenewedMembership(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{})
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "EXTENDED"}, nil)
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "PERMANENT"}, nil)

	var first, renewed httpapi.ChangeSegmentsResponse
	s.mustDo("POST", "/api/v1/users/1/segments", map[string]any{"add": []string{"EXTENDED", "PERMANENT"}, "ttl_seconds": 1}, &first)
	// Before the first expiry: extend one, make the other permanent.
	s.mustDo("POST", "/api/v1/users/1/segments", map[string]any{"add": []string{"EXTENDED"}, "ttl_seconds": 3}, &renewed)
	s.mustDo("POST", "/api/v1/users/1/segments", map[string]any{"add": []string{"PERMANENT"}}, nil)

	old := *first.Segments[0].ExpiresAt
	for _, slug := range []string{"EXTENDED", "PERMANENT"} {
		e := domain.Expiry{UserID: 1, Slug: slug, ExpiresAt: old}
		testenv.Eventually(t, 5*time.Second, "the old expiry task of "+slug+" did not run", func() bool { return s.taskGone(e) })
	}
	if held := s.held(1); len(held) != 2 {
		t.Fatalf("after the old tasks ran, user holds %v, want both", held)
	}
	if n := s.scalar(`SELECT count(*) FROM membership_history WHERE operation = 'remove'`); n != 0 {
		t.Fatalf("%d removals recorded", n)
	}

	// The extended one goes at its new expiry; the permanent one stays.
	newExpiry := *renewed.Segments[0].ExpiresAt
	testenv.Eventually(t, 6*time.Second, "the extended membership was not removed", func() bool {
		return s.scalar(`SELECT count(*) FROM memberships`) == 1
	})
	if r := s.ttlRemovals(1, "EXTENDED"); r.count != 1 || !r.at.Equal(newExpiry) {
		t.Errorf("EXTENDED ttl removals: %d at %v, want 1 at %v", r.count, r.at, newExpiry)
	}
	if held := s.held(1); len(held) != 1 || held[0] != "PERMANENT" {
		t.Errorf("user holds %v, want [PERMANENT]", held)
	}
	testenv.AssertHistoryReplays(t, s.pool)
}

func TestThousandMembershipsExpiringInTheSameSecond(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{})
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "FLASH_SALE"}, nil)
	// Far enough ahead for 1,000 adds even under the race detector on a
	// busy machine (CI runs every package's tests at once).
	expiresAt := time.Now().Add(15 * time.Second).Truncate(time.Second)
	const users = 1000
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for u := 1 + w; u <= users; u += 8 {
				if code := s.do("POST", fmt.Sprintf("/api/v1/users/%d/segments", u),
					map[string]any{"add": []string{"FLASH_SALE"}, "expires_at": expiresAt.Format(time.RFC3339)}, nil); code != http.StatusOK {
					t.Errorf("add for user %d: status %d", u, code)
				}
			}
		})
	}
	wg.Wait()
	if n := s.scalar(`SELECT count(*) FROM memberships WHERE expires_at = $1`, expiresAt); n != users {
		t.Fatalf("%d memberships expire at %v, want %d", n, expiresAt, users)
	}
	testenv.Eventually(t, 40*time.Second, "not every membership was removed", func() bool {
		return s.scalar(`SELECT count(*) FROM memberships`) == 0
	})
	var removals, distinct, atExpiry int64
	err := s.pool.QueryRow(t.Context(), `
		SELECT count(*), count(DISTINCT user_id), count(*) FILTER (WHERE at = $1)
		FROM membership_history WHERE operation = 'remove' AND reason = 'ttl'`, expiresAt).Scan(&removals, &distinct, &atExpiry)
	if err != nil {
		t.Fatal(err)
	}
	if removals != users || distinct != users || atExpiry != users {
		t.Errorf("ttl removals %d for %d users, %d at the expiry; want %d of each", removals, distinct, atExpiry, users)
	}
	testenv.AssertHistoryReplays(t, s.pool)
}

// TestExpiryWithRedisDown stops Redis, adds memberships with a TTL, and
// checks that the adds succeed, reads stay exact, and once Redis is back
// the sweep removes what expired within one interval.
func TestExpiryWithRedisDown(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rd, err := localserver.StartRedis(t.Context(), localserver.RedisOptions{Dir: filepath.Join(dir, "redis")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Stop() })

	const sweep = 2 * time.Second
	s := newStack(t, stackOptions{redisURL: rd.URL(0), sweepInterval: sweep})
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "TRIAL"}, nil)

	if err := rd.Stop(); err != nil {
		t.Fatal(err)
	}
	var res httpapi.ChangeSegmentsResponse
	if code := s.do("POST", "/api/v1/users/1/segments", map[string]any{"add": []string{"TRIAL"}, "ttl_seconds": 1}, &res); code != http.StatusOK {
		t.Fatalf("add with Redis down: status %d", code)
	}
	if len(s.logs.FilterMessage("could not schedule expiry; the sweep will remove it").All()) != 1 {
		t.Errorf("the failed schedule was not logged once: %v", s.logs.All())
	}
	expiresAt := *res.Segments[0].ExpiresAt
	if held := s.held(1); len(held) != 1 {
		t.Fatalf("before expiry, with Redis down: %v", held)
	}
	time.Sleep(time.Until(expiresAt) + 10*time.Millisecond)
	if held := s.held(1); len(held) != 0 {
		t.Fatalf("after expiry, with Redis down, reads show %v", held)
	}
	if n := s.scalar(`SELECT count(*) FROM memberships`); n != 1 {
		t.Fatalf("%d rows with Redis down, want the expired one still there", n)
	}

	rd, err = localserver.StartRedis(t.Context(), localserver.RedisOptions{Dir: filepath.Join(dir, "redis"), Port: rd.Port()})
	if err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	// One sweep interval, plus the worker's reconnection and the sweep itself.
	testenv.Eventually(t, sweep+3*time.Second, "the sweep did not remove the expired membership within an interval of Redis coming back", func() bool {
		return s.scalar(`SELECT count(*) FROM memberships`) == 0
	})
	t.Logf("removed %s after Redis came back (sweep interval %s)", time.Since(back).Round(10*time.Millisecond), sweep)
	if r := s.ttlRemovals(1, "TRIAL"); r.count != 1 || !r.at.Equal(expiresAt) {
		t.Errorf("ttl removals: %d at %v, want 1 at %v", r.count, r.at, expiresAt)
	}
	testenv.AssertHistoryReplays(t, s.pool)
}

// TestChangesRaceExpiry has 16 goroutines add and remove segments with
// sub-second and second TTLs on 100 users while expiry tasks and a sweep
// every second remove them. Whoever removes a membership, it is removed
// once, and history replays to the stored state.
func TestChangesRaceExpiry(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{sweepInterval: time.Second})
	slugs := []string{"A", "B", "C", "D"}
	for _, slug := range slugs {
		s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": slug}, nil)
	}
	deadline := time.Now().Add(4 * time.Second)
	errs := make(chan error, 16)
	for w := range 16 {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(w), 3))
			for time.Now().Before(deadline) {
				i, j := rng.IntN(len(slugs)), rng.IntN(len(slugs))
				body := map[string]any{"add": []string{slugs[i]}}
				if i != j {
					body["remove"] = []string{slugs[j]}
				}
				expiresAt := time.Now().Add(time.Second)
				if rng.IntN(2) == 0 {
					expiresAt = time.Now().Add(time.Duration(100+rng.IntN(900)) * time.Millisecond)
					body["expires_at"] = expiresAt.Format(time.RFC3339Nano)
				} else {
					body["ttl_seconds"] = 1
				}
				code := s.do("POST", fmt.Sprintf("/api/v1/users/%d/segments", 1+rng.IntN(100)), body, nil)
				// A short expiry may pass while the request waits its turn:
				// then, and only then, it is refused.
				if code != http.StatusOK && !(code == http.StatusUnprocessableEntity && time.Now().After(expiresAt)) {
					errs <- fmt.Errorf("status %d", code)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 16 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 10*time.Second, "expired memberships remain", func() bool {
		return s.scalar(`SELECT count(*) FROM memberships`) == 0
	})
	t.Logf("%d history rows", s.scalar(`SELECT count(*) FROM membership_history`))
	testenv.AssertHistoryReplays(t, s.pool)
}
