package events_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/segments-service/segments/internal/events"
	"github.com/segments-service/segments/internal/metrics"
	"github.com/segments-service/segments/internal/supervise"
	"github.com/segments-service/segments/tools/apitest"
	"github.com/segments-service/segments/tools/localserver"
	"github.com/segments-service/segments/tools/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Run(m, &env) }

// consume is docs/events.md's consumer, as written there
// (TestREADMEConsumer checks that it is).
func consume(ctx context.Context, rdb *redis.Client, stream, group, consumer string, apply func(map[string]any) error) error {
	err := rdb.XGroupCreateMkStream(ctx, stream, group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") { // BUSYGROUP: it exists
		return err
	}
	seen := map[string]bool{} // keep it where your copy is, to survive restarts
	for ctx.Err() == nil {
		streams, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: group, Consumer: consumer, Streams: []string{stream, ">"}, Count: 500, Block: time.Second,
		}).Result()
		if errors.Is(err, redis.Nil) || ctx.Err() != nil {
			continue // nothing new within a second, or stopping
		}
		if err != nil {
			return err
		}
		for _, m := range streams[0].Messages {
			if id := m.Values["id"].(string); !seen[id] {
				if err := apply(m.Values); err != nil {
					return err // not acknowledged: XAUTOCLAIM gives it to another consumer
				}
				seen[id] = true
			}
			if err := rdb.XAck(ctx, stream, group, m.ID).Err(); err != nil {
				return err
			}
		}
	}
	return nil
}

var rfc3339Micro = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z`)

// TestREADMEConsumer publishes docs/events.md's example change through a
// real relay into segments:changes on a Redis of the test's own, then runs
// docs/events.md's redis-cli examples as written (only pointed at that
// Redis) and checks what they print, and runs its Go consumer, which must
// be the one in this file, word for word.
func TestREADMEConsumer(t *testing.T) {
	t.Parallel()
	rd, err := localserver.StartRedis(t.Context(), localserver.RedisOptions{Dir: filepath.Join(testenv.ServerDir(t), "redis")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Stop() })
	opt, err := redis.ParseURL(rd.URL(0))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()

	pool := env.NewPool(t)
	change := func(op, slug string) {
		t.Helper()
		sql := `WITH r AS (SELECT set_config('segments.reason', 'manual', true))
		        INSERT INTO memberships (user_id, segment_id) SELECT 1000, id FROM segments, r WHERE slug = $1`
		if op == "remove" {
			sql = `WITH r AS (SELECT set_config('segments.reason', 'manual', true))
			       DELETE FROM memberships USING r WHERE user_id = 1000 AND segment_id = (SELECT id FROM segments WHERE slug = $1)`
		}
		if _, err := pool.Exec(t.Context(), sql, slug); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pool.Exec(t.Context(), `SELECT set_config('segments.audit', '{"actor": "test"}', true);
	                                     INSERT INTO segments (slug) VALUES ('AVITO_VOICE_MESSAGES'), ('AVITO_DISCOUNT_30');
	                                     INSERT INTO users (id) VALUES (1000)`); err != nil {
		t.Fatal(err)
	}
	change("add", "AVITO_VOICE_MESSAGES")

	const stream = "segments:changes"
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	m := metrics.New()
	relay := events.NewRelay(events.Config{Stream: stream, MaxLen: 1000, Batch: 10, Interval: 10 * time.Millisecond},
		pool.Config().ConnConfig, rdb, m, zaptest.NewLogger(t))
	wg.Go(func() { supervise.Run(ctx, relay.Loop(), nil, zap.NewNop()) })
	testenv.Eventually(t, 10*time.Second, "the event was not published", func() bool { return rdb.XLen(ctx, stream).Val() == 1 })

	blocks := apitest.Fences(t, "../../docs/events.md")
	ran, sawConsumer := 0, false
	for i, b := range blocks {
		if b.Lang == "go" && strings.HasPrefix(b.Text, "func consume(") {
			sawConsumer = true
			src, err := os.ReadFile("readme_test.go")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(src), b.Text) {
				t.Errorf("docs/events.md:%d: consume differs from the one this test runs:\n%s", b.Line, b.Text)
			}
		}
		if b.Lang != "sh" || !strings.HasPrefix(b.Text, "redis-cli ") {
			continue
		}
		ran++
		cmd := strings.ReplaceAll(strings.TrimSpace(b.Text), "redis-cli ", fmt.Sprintf("redis-cli -p %d ", rd.Port()))
		out, err := exec.Command("bash", "-c", cmd).CombinedOutput()
		if err != nil {
			t.Fatalf("docs/events.md:%d: %s: %v\n%s", b.Line, b.Text, err, out)
		}
		want := ""
		if i+1 < len(blocks) && blocks[i+1].Lang == "text" {
			want = blocks[i+1].Text
		}
		got := rfc3339Micro.ReplaceAllString(strings.TrimSpace(string(out)), "<at>")
		if want = rfc3339Micro.ReplaceAllString(strings.TrimSpace(want), "<at>"); got != want {
			t.Errorf("docs/events.md:%d: %s printed\n%s\ndocs/events.md shows\n%s", b.Line, b.Text, got, want)
		}
	}
	if ran < 2 || !sawConsumer {
		t.Fatalf("found %d redis-cli examples and consumer %t in docs/events.md; want the group's creation, a read and the consumer", ran, sawConsumer)
	}

	// The Go consumer, in a group of its own, sees every event once, in order.
	change("add", "AVITO_DISCOUNT_30")
	change("remove", "AVITO_VOICE_MESSAGES")
	var (
		mu  sync.Mutex
		got []string
	)
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- consume(cctx, rdb, stream, "analytics", "worker-1", func(f map[string]any) error {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, fmt.Sprintf("%s %s %s %s %s", f["id"], f["user_id"], f["operation"], f["segment"], f["reason"]))
			return nil
		})
	}()
	testenv.Eventually(t, 10*time.Second, "the consumer did not get three events", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= 3
	})
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := []string{"1 1000 add AVITO_VOICE_MESSAGES manual", "2 1000 add AVITO_DISCOUNT_30 manual", "3 1000 remove AVITO_VOICE_MESSAGES manual"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("the consumer got %q, want %q", got, want)
	}
	if pending := rdb.XPending(ctx, stream, "analytics").Val(); pending.Count != 0 {
		t.Errorf("%d entries left unacknowledged", pending.Count)
	}

	// The relay's metrics: three published, each with its lag, this
	// process leading, nothing left (the backlog is counted every second).
	for _, line := range []string{
		"segments_events_published_total 3", "segments_events_lag_seconds_count 3",
		"segments_events_relay_leading 1", "segments_events_backlog 0",
	} {
		testenv.Eventually(t, 3*time.Second, "metrics lack "+line, func() bool {
			return strings.Contains(scrape(t, m), "\n"+line+"\n")
		})
	}
}

func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return rec.Body.String()
}
