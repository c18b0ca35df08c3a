package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/segments-service/segments/tools/testenv"
)

// TestScheduledDeletion runs an API and a worker as processes. A segment
// scheduled for deletion 2 s ahead is deleted within about a second of its
// time, each member losing it with reason segment_deleted, and its slug can
// name a new segment; a cancelled deletion and a moved one do not fire at
// the old time (the moved one fires at the new). Then a deletion whose task
// is lost (removed from Redis) is done by the sweep of a worker that
// sweeps every second.
func TestScheduledDeletion(t *testing.T) {
	vars, pool := cacheVars(t)
	api := startReplica(t, "api", vars)
	// Sweeps an hour apart: what happens on time here is the tasks' doing.
	tasksOnly := startWorker(t, mapWith(vars, "SWEEP_INTERVAL", "1h"))

	at := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339Nano) }
	exists := func(slug string) bool {
		return count(t, pool, fmt.Sprintf(`SELECT count(*) FROM segments WHERE slug = '%s'`, slug)) == 1
	}
	onTime := time.Now().Add(2 * time.Second)
	api.send(t, "POST", "/api/v1/segments", fmt.Sprintf(`{"slug":"DEL_ON_TIME","delete_at":%q}`, onTime.UTC().Format(time.RFC3339Nano)))
	for u := 1; u <= 3; u++ {
		api.send(t, "POST", fmt.Sprintf("/api/v1/users/%d/segments", u), `{"add":["DEL_ON_TIME"]}`)
	}
	api.send(t, "POST", "/api/v1/segments", `{"slug":"DEL_CANCELLED"}`)
	api.send(t, "PATCH", "/api/v1/segments/DEL_CANCELLED", fmt.Sprintf(`{"delete_at":%q}`, at(2*time.Second)))
	api.send(t, "PATCH", "/api/v1/segments/DEL_CANCELLED", `{"delete_at":null}`)
	api.send(t, "POST", "/api/v1/segments", fmt.Sprintf(`{"slug":"DEL_MOVED","delete_at":%q}`, at(2*time.Second)))
	moved := time.Now().Add(5 * time.Second)
	if body := api.send(t, "PATCH", "/api/v1/segments/DEL_MOVED", fmt.Sprintf(`{"delete_at":%q}`, moved.UTC().Format(time.RFC3339Nano))); !strings.Contains(body, `"delete_at":"`+moved.UTC().Format("2006-01-02T15:04:05")) {
		t.Fatalf("moved: %s", body)
	}

	testenv.Eventually(t, 10*time.Second, "DEL_ON_TIME was not deleted", func() bool { return !exists("DEL_ON_TIME") })
	// When it happened is the instant its deletion recorded in history (the
	// worker polls due tasks every 500 ms). The bound leaves room for a
	// loaded machine (the race detector, test packages in parallel).
	var deletedAt time.Time
	if err := pool.QueryRow(t.Context(), `SELECT max(at) FROM membership_history WHERE slug = 'DEL_ON_TIME' AND reason = 'segment_deleted'`).Scan(&deletedAt); err != nil {
		t.Fatal(err)
	}
	if late := deletedAt.Sub(onTime); late < 0 || late > 2*time.Second {
		t.Errorf("DEL_ON_TIME was deleted %s after its time, want about a second at most", late)
	} else {
		t.Logf("DEL_ON_TIME deleted %s after its time", late.Round(time.Millisecond))
	}
	if n := count(t, pool, `SELECT count(*) FROM membership_history WHERE slug = 'DEL_ON_TIME' AND operation = 'remove' AND reason = 'segment_deleted'`); n != 3 {
		t.Errorf("%d members lost DEL_ON_TIME with reason segment_deleted, want 3", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM memberships m WHERE NOT EXISTS (SELECT FROM segments s WHERE s.id = m.segment_id)`); n != 0 {
		t.Errorf("%d memberships outlived their segment", n)
	}
	api.send(t, "POST", "/api/v1/segments", `{"slug":"DEL_ON_TIME"}`) // the slug is free again

	time.Sleep(time.Until(onTime.Add(1500 * time.Millisecond)))
	if !exists("DEL_CANCELLED") || !exists("DEL_MOVED") {
		t.Fatalf("a cancelled or moved deletion fired at the old time (cancelled exists: %v, moved exists: %v)", exists("DEL_CANCELLED"), exists("DEL_MOVED"))
	}
	testenv.Eventually(t, 10*time.Second, "DEL_MOVED was not deleted at its new time", func() bool { return !exists("DEL_MOVED") })
	if early := time.Until(moved); early > 0 {
		t.Errorf("DEL_MOVED was deleted %s before its new time", early)
	}
	time.Sleep(time.Second)
	if !exists("DEL_CANCELLED") {
		t.Fatal("the cancelled deletion happened")
	}

	// A lost task: the deletion's task is removed from Redis before it is
	// due; a worker sweeping every second deletes the segment anyway.
	lost := time.Now().Add(time.Second)
	api.send(t, "POST", "/api/v1/segments", fmt.Sprintf(`{"slug":"DEL_LOST","delete_at":%q}`, lost.UTC().Format(time.RFC3339Nano)))
	opt, err := redis.ParseURL(vars["REDIS_URL"])
	if err != nil {
		t.Fatal(err)
	}
	inspector := asynq.NewInspector(asynq.RedisClientOpt{Addr: opt.Addr, DB: opt.DB})
	defer inspector.Close()
	tasks, err := inspector.ListScheduledTasks(vars["WORKER_QUEUE"])
	if err != nil {
		t.Fatal(err)
	}
	removed := 0
	for _, task := range tasks {
		if strings.Contains(string(task.Payload), `"slug":"DEL_LOST"`) {
			if err := inspector.DeleteTask(vars["WORKER_QUEUE"], task.ID); err != nil {
				t.Fatal(err)
			}
			removed++
		}
	}
	if removed != 1 {
		t.Fatalf("found %d scheduled tasks for DEL_LOST, want 1", removed)
	}
	_ = tasksOnly.Process.Kill()
	_, _ = tasksOnly.Process.Wait()
	startWorker(t, mapWith(vars, "SWEEP_INTERVAL", "1s"))
	testenv.Eventually(t, 10*time.Second, "the sweep did not delete DEL_LOST", func() bool { return !exists("DEL_LOST") })
	if !exists("DEL_CANCELLED") || !exists("DEL_ON_TIME") {
		t.Fatal("the sweep deleted a segment that was not due")
	}
}
