package httpapi_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/auth"
	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/internal/service"
	"github.com/segments-service/segments/tools/apitest"
)

// keyed sends a request with an Idempotency-Key (and more headers).
func (a *testAPI) keyed(key, method, path string, body any, header ...string) response {
	a.t.Helper()
	return a.do(method, path, body, append([]string{"Idempotency-Key", key}, header...)...)
}

// historyEvents counts the user's history events in the segment.
func (a *testAPI) historyEvents(user int64, slug string) int64 {
	a.t.Helper()
	return a.scalar(`SELECT count(*) FROM membership_history WHERE user_id = $1 AND slug = $2`, user, slug)
}

// scheduledTasks counts the tasks waiting in the test's queue.
func scheduledTasks(t *testing.T) int {
	t.Helper()
	info, err := asynq.NewInspector(asynq.RedisClientOpt{Addr: strings.TrimPrefix(env.RedisURL, "redis://")}).GetQueueInfo("httpapi-test")
	if err != nil {
		return 0 // no queue yet: nothing was ever enqueued
	}
	return info.Scheduled + info.Pending
}

// sameResponse fails unless r repeats first, marked as a replay.
func sameResponse(t *testing.T, what string, first, r response) {
	t.Helper()
	if r.status != first.status || !bytes.Equal(r.body, first.body) || r.header.Get("Content-Type") != first.header.Get("Content-Type") ||
		r.header.Get("Location") != first.header.Get("Location") {
		t.Fatalf("%s: %d %s (Location %q), want the first response again: %d %s (Location %q)",
			what, r.status, r.body, r.header.Get("Location"), first.status, first.body, first.header.Get("Location"))
	}
	if r.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("%s: Idempotent-Replayed %q", what, r.header.Get("Idempotent-Replayed"))
	}
}

// Every kind of write answers a retry with its key by replaying its first
// response and changes nothing: no history, no task, no second segment.
func TestRetryWithTheKeyReplaysEveryWrite(t *testing.T) {
	a := newAPI(t)
	create := a.keyed("create-1", "POST", "/api/v1/segments", map[string]any{"slug": "IDEM_PERCENT", "auto_percent": 50})
	if create.status != http.StatusCreated || create.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("create: %d %s %v", create.status, create.body, create.header)
	}
	tasks := scheduledTasks(t)
	sameResponse(t, "create again", create, a.keyed("create-1", "POST", "/api/v1/segments", map[string]any{"slug": "IDEM_PERCENT", "auto_percent": 50}))
	if n := scheduledTasks(t); n != tasks {
		t.Fatalf("the replayed creation queued %d tasks", n-tasks)
	}

	a.createSegment("IDEM_A")
	change := map[string]any{"add": []string{"IDEM_A"}, "ttl_seconds": 3600}
	first := a.keyed("change-1", "POST", "/api/v1/users/1000/segments", change)
	if first.status != http.StatusOK {
		t.Fatalf("change: %d %s", first.status, first.body)
	}
	tasks = scheduledTasks(t)
	for i := range 3 {
		sameResponse(t, fmt.Sprint("change again #", i), first, a.keyed("change-1", "POST", "/api/v1/users/1000/segments", change))
	}
	if n := a.historyEvents(1000, "IDEM_A"); n != 1 {
		t.Fatalf("history has %d events of user 1000 in IDEM_A, want 1", n)
	}
	if n := scheduledTasks(t); n != tasks {
		t.Fatalf("the replayed changes scheduled %d expiry tasks", n-tasks)
	}

	reg := a.keyed("register-1", "POST", "/api/v1/users", map[string]any{"user_ids": []int64{2000, 2001}})
	sameResponse(t, "register again", reg, a.keyed("register-1", "POST", "/api/v1/users", map[string]any{"user_ids": []int64{2000, 2001}}))

	link := a.keyed("report-1", "POST", "/api/v1/reports/history", map[string]any{"period": "2026-11", "user_id": 1000})
	if link.status != http.StatusCreated {
		t.Fatalf("report link: %d %s", link.status, link.body)
	}
	time.Sleep(1100 * time.Millisecond) // a new link would expire a second later
	sameResponse(t, "report link again", link, a.keyed("report-1", "POST", "/api/v1/reports/history", map[string]any{"period": "2026-11", "user_id": 1000}))

	del := a.keyed("delete-1", "DELETE", "/api/v1/segments/IDEM_A", nil)
	if del.status != http.StatusNoContent {
		t.Fatalf("delete: %d %s", del.status, del.body)
	}
	a.createSegment("IDEM_A") // the slug again, a new segment
	sameResponse(t, "delete again", del, a.keyed("delete-1", "DELETE", "/api/v1/segments/IDEM_A", nil))
	if n := a.scalar(`SELECT count(*) FROM segments WHERE slug = 'IDEM_A'`); n != 1 {
		t.Fatal("the replayed deletion deleted the new segment")
	}
}

// The same key with another request is refused and changes nothing.
func TestKeyReusedForAnotherRequest(t *testing.T) {
	a := newAPI(t)
	a.createSegment("REUSE_A")
	a.createSegment("REUSE_B")
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/1000/segments", map[string]any{"add": []string{"REUSE_A"}}, nil) // no key
	if r := a.keyed("k", "POST", "/api/v1/users/1000/segments", map[string]any{"add": []string{"REUSE_B"}}); r.status != http.StatusOK {
		t.Fatalf("first: %d %s", r.status, r.body)
	}
	for name, req := range map[string]struct {
		method, path string
		body         any
	}{
		"another body": {"POST", "/api/v1/users/1000/segments", map[string]any{"remove": []string{"REUSE_A"}}},
		"another user": {"POST", "/api/v1/users/1001/segments", map[string]any{"add": []string{"REUSE_B"}}},
		"another verb": {"DELETE", "/api/v1/segments/REUSE_A", nil},
	} {
		p := a.keyed("k", req.method, req.path, req.body).problem(t, http.StatusUnprocessableEntity)
		if p.Type != "urn:segments:problem:idempotency-key-reused" || !strings.Contains(p.Detail, "POST /api/v1/users/1000/segments") {
			t.Errorf("%s: %+v", name, p)
		}
	}
	var got httpapi.UserSegments
	a.mustDo(http.StatusOK, "GET", "/api/v1/users/1000/segments", nil, &got)
	if len(got.Segments) != 2 || a.scalar(`SELECT count(*) FROM users WHERE id = 1001`) != 0 ||
		a.scalar(`SELECT count(*) FROM segments WHERE slug = 'REUSE_A'`) != 1 {
		t.Fatalf("a refused reuse changed something: %+v", got)
	}
}

// Thirty-two requests with one key at once: one runs, every other answer
// is a replay of it or a 409, and the change happens once.
func TestConcurrentRequestsWithOneKey(t *testing.T) {
	a := newAPI(t)
	for _, s := range []string{"RACE_A", "RACE_B", "RACE_C"} {
		a.createSegment(s)
	}
	for round := range 5 {
		user := int64(5000 + round)
		key := fmt.Sprint("race-", round)
		body := map[string]any{"add": []string{"RACE_A", "RACE_B", "RACE_C"}, "ttl_seconds": 600}
		out := make([]response, 32)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range out {
			wg.Go(func() {
				<-start
				out[i] = a.keyed(key, "POST", fmt.Sprintf("/api/v1/users/%d/segments", user), body)
			})
		}
		close(start)
		wg.Wait()
		var originals, replays, inUse []response
		for _, r := range out {
			switch {
			case r.status == http.StatusConflict:
				if p := r.problem(t, http.StatusConflict); p.Type != "urn:segments:problem:idempotency-key-in-use" || r.header.Get("Retry-After") == "" {
					t.Fatalf("409: %+v", p)
				}
				inUse = append(inUse, r)
			case r.status == http.StatusOK && r.header.Get("Idempotent-Replayed") == "true":
				replays = append(replays, r)
			case r.status == http.StatusOK:
				originals = append(originals, r)
			default:
				t.Fatalf("round %d: %d %s", round, r.status, r.body)
			}
		}
		if len(originals) != 1 {
			t.Fatalf("round %d: %d requests ran (%d replays, %d in use), want 1", round, len(originals), len(replays), len(inUse))
		}
		for _, r := range replays {
			sameResponse(t, "replay", originals[0], r)
		}
		for _, s := range []string{"RACE_A", "RACE_B", "RACE_C"} {
			if n := a.historyEvents(user, s); n != 1 {
				t.Fatalf("round %d: %d history events of user %d in %s, want 1", round, n, user, s)
			}
		}
		t.Logf("round %d: 1 ran, %d replays, %d in use", round, len(replays), len(inUse))
	}
}

// Only successes are stored: a change refused for an unknown segment
// changed nothing, and its retry with the key runs once the segment exists.
func TestRefusedRequestIsNotStored(t *testing.T) {
	a := newAPI(t)
	body := map[string]any{"add": []string{"LATER"}}
	a.keyed("k", "POST", "/api/v1/users/1000/segments", body).problem(t, http.StatusNotFound)
	a.createSegment("LATER")
	r := a.keyed("k", "POST", "/api/v1/users/1000/segments", body)
	if r.status != http.StatusOK || r.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("retry after the segment exists: %d %s %v", r.status, r.body, r.header)
	}
	sameResponse(t, "retry once more", r, a.keyed("k", "POST", "/api/v1/users/1000/segments", body))
}

// Bad keys are refused before anything runs.
func TestBadIdempotencyKeys(t *testing.T) {
	a := newAPI(t)
	for name, key := range map[string]string{
		"empty": "", "too long": strings.Repeat("k", 256), "not ASCII": "ключ", "control character": "a\tb",
	} {
		p := a.keyed(key, "POST", "/api/v1/segments", map[string]any{"slug": "BAD_KEY"}).problem(t, http.StatusBadRequest)
		if !strings.Contains(p.Detail, "Idempotency-Key") {
			t.Errorf("%s: %+v", name, p)
		}
	}
	if r := a.keyed(strings.Repeat("k", 255), "POST", "/api/v1/segments", map[string]any{"slug": "GOOD_KEY"}); r.status != http.StatusCreated {
		t.Fatalf("a 255-character key: %d %s", r.status, r.body)
	}
	if n := a.scalar(`SELECT count(*) FROM segments WHERE slug = 'BAD_KEY'`); n != 0 {
		t.Fatal("a request with a bad key ran")
	}
}

// Keys belong to the caller: with authentication on, two subjects may use
// one key for different requests.
func TestKeysArePerCaller(t *testing.T) {
	v, err := auth.New(context.Background(), auth.Config{Secret: []byte(testSecret)})
	if err != nil {
		t.Fatal(err)
	}
	a := newAPI(t, func(o *httpapi.Options) { o.Auth = v })
	bearer := func(sub string) string {
		tok, err := auth.Mint([]byte(testSecret), sub, []string{auth.ScopeAdmin}, time.Hour, "", "", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return "Bearer " + tok
	}
	for _, sub := range []string{"checkout", "search"} {
		r := a.keyed("shared-key", "POST", "/api/v1/segments", map[string]any{"slug": "BY_" + strings.ToUpper(sub)}, "Authorization", bearer(sub))
		if r.status != http.StatusCreated || r.header.Get("Idempotent-Replayed") != "" {
			t.Fatalf("%s: %d %s", sub, r.status, r.body)
		}
	}
	if n := a.scalar(`SELECT count(DISTINCT caller) FROM idempotency_keys WHERE key = 'shared-key'`); n != 2 {
		t.Fatalf("%d callers hold the key, want 2", n)
	}
}

// A key is kept for the TTL and then swept: its retry runs as a new
// request.
func TestKeysPastTheirTTLAreSwept(t *testing.T) {
	a := newAPI(t)
	for i := range 25 {
		a.keyed(fmt.Sprint("old-", i), "POST", "/api/v1/users", map[string]any{"user_ids": []int64{int64(3000 + i)}})
	}
	a.keyed("recent", "POST", "/api/v1/users", map[string]any{"user_ids": []int64{4000}})
	if _, err := a.pool.Exec(context.Background(), `UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key LIKE 'old-%'`); err != nil {
		t.Fatal(err)
	}
	keys := service.NewIdempotencyKeys(postgres.NewIdempotencyRepo(a.pool), 24*time.Hour, time.Now)
	n, err := keys.Sweep(context.Background(), 10)
	if err != nil || n != 25 {
		t.Fatalf("swept %d keys (%v), want the 25 past the TTL", n, err)
	}
	left := a.column(`SELECT key FROM idempotency_keys`)
	if len(left) != 1 || left[0] != "recent" {
		t.Fatalf("left %v", left)
	}
	if r := a.keyed("old-0", "POST", "/api/v1/users", map[string]any{"user_ids": []int64{3000}}); r.header.Get("Idempotent-Replayed") != "" {
		t.Fatal("a swept key was replayed")
	}
}

// A new router on the same database (a restarted or another replica)
// replays what the first stored.
func TestReplayFromAnotherProcess(t *testing.T) {
	a := newAPI(t)
	a.createSegment("RESTART")
	first := a.keyed("k", "POST", "/api/v1/users/1000/segments", map[string]any{"add": []string{"RESTART"}})
	b := &testAPI{t: t, pool: a.pool}
	o := apitest.RouterOptions(t, a.pool, env.RedisURL, map[string]string{"WORKER_QUEUE": "httpapi-test"}, time.Now, zap.NewNop())
	b.h = httpapi.NewRouter(o)
	sameResponse(t, "from the other router", first, b.keyed("k", "POST", "/api/v1/users/1000/segments", map[string]any{"add": []string{"RESTART"}}))
}
