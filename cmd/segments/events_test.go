package main

import (
	"fmt"
	"maps"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/tools/localserver"
	"github.com/segments-service/segments/tools/testenv"
)

// TestWorkerKilledWhilePublishing lets a rollout of 100,000 users write
// 50,000 events with publishing off, then starts a worker that publishes
// them 1,000 at a time, kills it with SIGKILL in the middle of a batch and
// starts two more: one of them publishes, every event reaches the stream,
// copies only of the batch that was in flight.
func TestWorkerKilledWhilePublishing(t *testing.T) {
	const users, batch = 100000, 1000
	pool, vars, base := rolloutProcesses(t, users, "events-kill")
	// Each worker serves /metrics on a port of its own.
	var metricsURLs []string
	startWorker := func(vars map[string]string) *exec.Cmd {
		port, err := localserver.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		vars = maps.Clone(vars)
		vars["HTTP_ADDR"] = fmt.Sprintf("127.0.0.1:%d", port)
		metricsURLs = append(metricsURLs, fmt.Sprintf("http://%s/metrics", vars["HTTP_ADDR"]))
		return startChild(t, "worker", "worker", vars)
	}
	off := maps.Clone(vars)
	off["EVENTS_ENABLED"] = "false"
	if code := post(t, base+"/api/v1/segments", `{"slug":"HALF","auto_percent":50}`); code != 201 {
		t.Fatalf("create: %d", code)
	}
	w := startWorker(off)
	testenv.Eventually(t, 60*time.Second, "the rollout did not finish", func() bool { _, s := rolloutState(t, pool, "HALF"); return s == "done" })
	_ = w.Process.Kill()
	_ = w.Wait()

	opt, err := redis.ParseURL(env.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	stream := testenv.StreamName(t)
	on := maps.Clone(vars)
	on["EVENTS_STREAM"], on["EVENTS_BATCH"] = stream, fmt.Sprint(batch)
	xlen := func() int64 {
		n, err := rdb.XLen(t.Context(), stream).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	w = startWorker(on)
	// Kill it while Redis has taken part of a batch (the stream's length
	// is not a whole number of batches): that batch's cursor is not moved.
	deadline := time.Now().Add(30 * time.Second)
	for n := xlen(); n < 5*batch || n%batch == 0; n = xlen() {
		if time.Now().After(deadline) {
			t.Fatalf("no batch in flight within 30 s (stream length %d)", n)
		}
	}
	if err := w.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = w.Wait()
	killedAt := xlen()
	if killedAt >= users/2 {
		t.Fatalf("the worker published all %d events before it was killed: kill it sooner", killedAt)
	}
	// Two workers take over: one publishes, the other stands by.
	metricsURLs = nil
	startWorker(on)
	startWorker(on)
	testenv.Eventually(t, 60*time.Second, "the other workers did not publish the rest", func() bool {
		n, err := postgres.UnpublishedEvents(t.Context(), pool)
		if err != nil {
			t.Fatal(err)
		}
		return n == 0
	})
	leading := 0
	for _, u := range metricsURLs {
		waitFor(t, u)
		_, body := get(t, u)
		if strings.Contains(body, "\nsegments_events_relay_leading 1\n") {
			leading++
		}
	}
	if leading != 1 {
		t.Errorf("%d workers say they publish; want 1", leading)
	}
	copies := testenv.AssertEventsPublished(t, pool, rdb, stream)
	if copies == 0 || copies > batch {
		t.Errorf("%d events published twice; want some of the batch in flight, at most all of it (%d)", copies, batch)
	}
	t.Logf("killed with %d of %d events in the stream; %d published twice", killedAt, users/2, copies)
}
