package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segments-service/segments/tools/localserver"
	"github.com/segments-service/segments/tools/testenv"
)

var env *testenv.Env

// TestMain runs the tests, or, with SEGMENTS_TEST_MAIN=1, the program
// itself: tests start the real binary that way, to kill it.
func TestMain(m *testing.M) {
	if os.Getenv("SEGMENTS_TEST_MAIN") == "1" {
		main()
		return
	}
	testenv.Run(m, &env)
}

// syncBuffer is a bytes.Buffer that the program and the test may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func getenv(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestMigrateCommands(t *testing.T) {
	// A migrated database: down takes it back one step, up again.
	url := env.NewDatabase(t)
	vars := map[string]string{"DATABASE_URL": url}
	migrate := func(args ...string) string {
		t.Helper()
		var out syncBuffer
		if err := run(t.Context(), append([]string{"segments", "migrate"}, args...), getenv(vars), &out); err != nil {
			t.Fatalf("migrate %v: %v", args, err)
		}
		return out.String()
	}
	var latest int
	if _, err := fmt.Sscanf(migrate("version"), "schema version %d\n", &latest); err != nil || latest < 1 {
		t.Fatalf("version of a migrated database: %d, %v", latest, err)
	}
	for _, step := range []struct {
		cmd  string
		want int
	}{
		{"down", latest - 1},
		{"version", latest - 1},
		{"up", latest},
		{"up", latest},
		{"version", latest},
	} {
		if got, want := migrate(step.cmd), fmt.Sprintf("schema version %d\n", step.want); got != want {
			t.Errorf("migrate %s printed %q, want %q", step.cmd, got, want)
		}
	}
}

func TestBadCommandLines(t *testing.T) {
	for _, args := range [][]string{{"segments"}, {"segments", "fly"}, {"segments", "migrate"}, {"segments", "migrate", "sideways"}} {
		var out syncBuffer
		if err := run(t.Context(), args, getenv(nil), &out); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
	var out syncBuffer
	err := run(t.Context(), []string{"segments", "serve"}, getenv(map[string]string{"DATABASE_MAX_CONNS": "many"}), &out)
	if err == nil || !strings.Contains(err.Error(), "DATABASE_MAX_CONNS") {
		t.Errorf("bad config: %v", err)
	}
}

// TestAllServesAndShutsDown runs `segments all` against real servers, makes
// requests, then cancels it as a signal would and expects a clean stop.
func TestAllServesAndShutsDown(t *testing.T) {
	port, err := localserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	vars := map[string]string{
		"DATABASE_URL": env.NewDatabase(t),
		"REDIS_URL":    env.RedisURL,
		"HTTP_ADDR":    addr,
		"WORKER_QUEUE": "cmd-test",
		"LOG_REQUESTS": "all", // the successful request below gets its line
	}
	ctx, cancel := context.WithCancel(t.Context())
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"segments", "all"}, getenv(vars), &out) }()

	base := "http://" + addr
	waitFor(t, base+"/readyz")
	resp, err := http.Post(base+"/api/v1/segments", "application/json", strings.NewReader(`{"slug":"CMD"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Errorf("create segment: %d", resp.StatusCode)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no shutdown within 30s")
	}
	logs := out.String()
	for _, want := range []string{`"msg":"listening"`, `"request_id"`, `"route":"/api/v1/segments"`, `"msg":"stopped"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s:\n%s", want, logs)
		}
	}
}

// waitFor polls url until it answers 200.
func waitFor(t *testing.T, url string) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, url+" did not answer 200", func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}
