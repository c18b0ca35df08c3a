package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/segments-service/segments/tools/localserver"
	"github.com/segments-service/segments/tools/testenv"
)

// TestThroughPgBouncer runs two APIs and a worker with DATABASE_URL
// through PgBouncer in transaction mode (with each exec mode that
// prepares no named statement) and DATABASE_DIRECT_URL on the server for
// the sessions: a percent segment's rollout (a claim), user changes read
// back through the other API's cache (its LISTEN), an import (a claim),
// a keyed retry, the audit log. Every answer is what the server alone
// gives.
func TestThroughPgBouncer(t *testing.T) {
	for _, mode := range []string{"exec", "cache_describe", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) { throughPgBouncer(t, mode) })
	}
}

func throughPgBouncer(t *testing.T, mode string) {
	direct := env.NewDatabase(t)
	bouncer, err := localserver.StartPgBouncer(t.Context(), localserver.PgBouncerOptions{Dir: testenv.ServerDir(t), Server: direct, PoolSize: 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bouncer.Stop() })
	u, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	pooled := bouncer.URL(strings.TrimPrefix(u.Path, "/"))
	vars := map[string]string{
		"DATABASE_URL":        pooled,
		"DATABASE_DIRECT_URL": direct,
		"DATABASE_EXEC_MODE":  mode,
		"REDIS_URL":           env.RedisURL,
		"WORKER_QUEUE":        "pgbouncer-" + mode + fmt.Sprint(time.Now().UnixNano()),
		"SWEEP_INTERVAL":      "1s",
		"ROLLOUT_BATCH":       "300",
		"LOG_LEVEL":           "warn",
	}
	a := startReplica(t, "A", vars)
	b := startReplica(t, "B", vars)
	startWorker(t, vars)
	users := make([]string, 2000)
	for i := range users {
		users[i] = fmt.Sprint(i + 1)
	}
	a.send(t, "POST", "/api/v1/users", `{"user_ids":[`+strings.Join(users, ",")+`]}`)
	a.send(t, "POST", "/api/v1/segments", `{"slug":"HALF","auto_percent":50}`)
	a.send(t, "POST", "/api/v1/segments", `{"slug":"HAND"}`)
	testenv.Eventually(t, 60*time.Second, "the rollout did not finish", func() bool {
		return strings.Contains(a.send(t, "GET", "/api/v1/segments/HALF", ""), `"status":"done","assigned":1000,"total":1000`)
	})

	// B caches a user, A changes it: B's next read is A's answer.
	for user := int64(1); user <= 20; user++ {
		b.prime(t, user)
		a.send(t, "POST", fmt.Sprintf("/api/v1/users/%d/segments", user), `{"add":["HAND"]}`)
		testenv.Eventually(t, 15*time.Second, fmt.Sprintf("B still shows user %d without HAND", user), func() bool {
			slugs, _ := b.read(t, user)
			return slices.Contains(slugs, "HAND")
		})
	}

	// An import, claimed on a direct session.
	status, body := postText(t, a.base+"/api/v1/segments/HAND/imports?mode=add", "user_id\n1500\n1501\n1502\n")
	if status != http.StatusAccepted {
		t.Fatalf("import: %d %s", status, body)
	}
	var imp struct{ ID int64 }
	if err := json.Unmarshal([]byte(body), &imp); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the import did not finish", func() bool {
		return strings.Contains(a.send(t, "GET", fmt.Sprintf("/api/v1/imports/%d", imp.ID), ""), `"status":"done"`)
	})

	// A keyed change and its retry: one change.
	for range 2 {
		if status, answer, _ := keyedPost(t, a.base+"/api/v1/users/1999/segments", "pgbouncer-key", `{"add":["HAND"]}`); status != http.StatusOK {
			t.Fatalf("keyed change: %d %s", status, answer)
		}
	}
	members := a.send(t, "GET", "/api/v1/segments/HAND/members?limit=1000", "")
	if n := strings.Count(members, `"user_id"`); n != 24 {
		t.Fatalf("HAND has %d members, want 24 (20 by hand, 3 imported, 1 keyed): %s", n, members)
	}
	if audit := a.send(t, "GET", "/api/v1/segments/HAND/audit", ""); strings.Count(audit, `"action"`) != 3 {
		t.Fatalf("HAND's audit log: %s", audit)
	}
}

// postText posts a text/csv body and returns the status and the body.
func postText(t *testing.T, url, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "text/csv", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
