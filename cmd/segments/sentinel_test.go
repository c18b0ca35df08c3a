package main

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/tools/localserver"
	"github.com/segments-service/segments/tools/testenv"
)

// sentinelSet is a Redis master, a replica and three sentinels watching
// them, on loopback.
type sentinelSet struct {
	master, replica *localserver.Redis
	sentinels       []string
	name            string
}

func startSentinelSet(t *testing.T) *sentinelSet {
	t.Helper()
	ctx := t.Context()
	master, err := localserver.StartRedis(ctx, localserver.RedisOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = master.Stop() })
	replica, err := localserver.StartRedis(ctx, localserver.RedisOptions{Dir: t.TempDir(), ReplicaOf: master.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = replica.Stop() })
	s := &sentinelSet{master: master, replica: replica, name: "segments"}
	for range 3 {
		sn, err := localserver.StartSentinel(ctx, localserver.SentinelOptions{Dir: t.TempDir(), Master: s.name,
			MasterAddr: master.Addr(), Quorum: 2, DownAfter: time.Second, FailoverTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sn.Stop() })
		s.sentinels = append(s.sentinels, sn.Addr())
	}
	// A failover needs the sentinels to know the replica and each other.
	testenv.Eventually(t, 30*time.Second, "the sentinels did not find the replica and each other", func() bool {
		for _, addr := range s.sentinels {
			sc := redis.NewSentinelClient(&redis.Options{Addr: addr})
			replicas, err1 := sc.Replicas(ctx, s.name).Result()
			others, err2 := sc.Sentinels(ctx, s.name).Result()
			sc.Close()
			if err1 != nil || err2 != nil || len(replicas) != 1 || len(others) != 2 {
				return false
			}
		}
		return true
	})
	return s
}

// masterAddr is the master the first sentinel names now.
func (s *sentinelSet) masterAddr(t *testing.T) string {
	t.Helper()
	sc := redis.NewSentinelClient(&redis.Options{Addr: s.sentinels[0]})
	defer sc.Close()
	addr, err := sc.GetMasterAddrByName(t.Context(), s.name).Result()
	if err != nil {
		return ""
	}
	return addr[0] + ":" + addr[1]
}

// TestRedisFailover runs an API and a worker on Redis Sentinel (three
// sentinels over a master and a replica) and kills the master with
// SIGKILL while users get segments with a TTL, a rollout of 20,000 users
// runs and change events are published. The sentinels promote the
// replica; afterwards every expiry has been applied, the rollout is exact,
// every change is in the stream (at least once, in order), and no request
// was answered 5xx.
func TestRedisFailover(t *testing.T) {
	const users = 20000
	set := startSentinelSet(t)
	url := env.NewDatabase(t)
	pool, err := postgres.Open(t.Context(), url, postgres.PoolConfig{MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := pool.Exec(t.Context(), fmt.Sprintf(`INSERT INTO users (id) SELECT generate_series(1, %d)`, users)); err != nil {
		t.Fatal(err)
	}
	stream := testenv.StreamName(t)
	vars := map[string]string{
		"DATABASE_URL":  url,
		"EVENTS_STREAM": stream,
		// Only its database counts: the sentinels name the server.
		"REDIS_URL":             "redis://sentinel-named/0",
		"REDIS_SENTINEL_ADDRS":  strings.Join(set.sentinels, ","),
		"REDIS_SENTINEL_MASTER": set.name,
		"WORKER_QUEUE":          "failover",
		"SWEEP_INTERVAL":        "1s",
		"ROLLOUT_BATCH":         "500",
		"ROLLOUT_WORKERS":       "1",
		"ROLLOUT_RATE":          "2000",
		"EVENTS_BATCH":          "200",
		"LOG_LEVEL":             "warn",
	}
	api := startReplica(t, "api", vars)
	startWorker(t, vars)
	api.send(t, "POST", "/api/v1/segments", `{"slug":"SHORT"}`)

	// Changes with a TTL, all along.
	var (
		stop      atomic.Bool
		wg        sync.WaitGroup
		mu        sync.Mutex
		failures  []string
		sent      atomic.Int64
		slowest   atomic.Int64
		lastAdded atomic.Int64
	)
	for w := range 4 {
		wg.Go(func() {
			for i := int64(w + 1); !stop.Load(); i += 4 {
				start := time.Now()
				resp, err := http.Post(fmt.Sprintf("%s/api/v1/users/%d/segments", api.base, i), "application/json",
					strings.NewReader(`{"add":["SHORT"],"ttl_seconds":2}`))
				d := time.Since(start)
				if d.Nanoseconds() > slowest.Load() {
					slowest.Store(d.Nanoseconds())
				}
				sent.Add(1)
				if err != nil || resp.StatusCode != http.StatusOK {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("user %d: %v %v", i, err, resp))
					mu.Unlock()
				}
				if resp != nil {
					resp.Body.Close()
				}
				lastAdded.Store(time.Now().UnixNano())
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	api.send(t, "POST", "/api/v1/segments", `{"slug":"HALF","auto_percent":50}`)
	testenv.Eventually(t, 30*time.Second, "the rollout did not start", func() bool { n, _ := rolloutState(t, pool, "HALF"); return n > 0 })

	old := set.masterAddr(t)
	killed := time.Now()
	if err := set.master.Kill(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, "the sentinels did not promote the replica", func() bool {
		return set.masterAddr(t) == set.replica.Addr()
	})
	promoted := time.Since(killed)
	time.Sleep(3 * time.Second) // changes go on against the new master
	stop.Store(true)
	wg.Wait()
	t.Logf("master %s killed; the replica promoted %s later; %d changes sent, the slowest took %s",
		old, promoted.Round(time.Millisecond), sent.Load(), time.Duration(slowest.Load()).Round(time.Millisecond))
	if len(failures) > 0 {
		t.Fatalf("%d of %d changes failed, the first: %s", len(failures), sent.Load(), failures[0])
	}

	// Every expiry applied (by its task, or by the sweep if the task was
	// lost with the old master).
	time.Sleep(time.Until(time.Unix(0, lastAdded.Load()).Add(2 * time.Second)))
	testenv.Eventually(t, 30*time.Second, "memberships outlived their TTL", func() bool {
		return count(t, pool, `SELECT count(*) FROM memberships m JOIN segments s ON s.id = m.segment_id WHERE s.slug = 'SHORT'`) == 0
	})
	// The rollout exact.
	testenv.Eventually(t, 90*time.Second, "the rollout did not finish", func() bool { _, s := rolloutState(t, pool, "HALF"); return s == "done" })
	if n := count(t, pool, `SELECT count(*) FROM memberships m JOIN segments s ON s.id = m.segment_id WHERE s.slug = 'HALF'`); n != users/2 {
		t.Fatalf("HALF has %d members, want %d", n, users/2)
	}
	// Every change in the stream of the new master.
	testenv.Eventually(t, 60*time.Second, "events were left unpublished", func() bool {
		n, err := postgres.UnpublishedEvents(t.Context(), pool)
		return err == nil && n == 0
	})
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: set.name, SentinelAddrs: set.sentinels})
	defer rdb.Close()
	copies := testenv.AssertEventsPublished(t, pool, rdb, stream)
	t.Logf("%d events published twice", copies)
}
