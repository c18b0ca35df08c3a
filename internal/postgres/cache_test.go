package postgres_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/internal/supervise"
)

// heard is a postgres.Invalidator that keeps what it is told.
type heard struct {
	mu        sync.Mutex
	listening []bool
	ids       []int64
	all       int
	lags      []time.Duration
}

func (h *heard) Listening(on bool) { h.mu.Lock(); h.listening = append(h.listening, on); h.mu.Unlock() }
func (h *heard) Invalidate(source string, ids ...int64) {
	h.mu.Lock()
	h.ids = append(h.ids, ids...)
	h.mu.Unlock()
}
func (h *heard) InvalidateAll(string) { h.mu.Lock(); h.all++; h.mu.Unlock() }
func (h *heard) CacheNotificationLag(d time.Duration) {
	h.mu.Lock()
	h.lags = append(h.lags, d)
	h.mu.Unlock()
}

// take returns the ids and flushes heard so far and forgets them.
func (h *heard) take() (ids []int64, all int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ids, all = h.ids, h.all
	h.ids, h.all = nil, 0
	slices.Sort(ids)
	return slices.Compact(ids), all
}

func (h *heard) on() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.listening) > 0 && h.listening[len(h.listening)-1]
}

// listenAndRelay runs the listener and the relay on pool's database until
// the test ends, and waits until the listener listens.
func listenAndRelay(t *testing.T, pool *pgxpool.Pool) *heard {
	t.Helper()
	h := &heard{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		supervise.Run(ctx, postgres.InvalidationRelay(pool.Config().ConnConfig, 5*time.Millisecond, zap.NewNop()), nil, zap.NewNop())
	})
	wg.Go(func() {
		supervise.Run(ctx, postgres.InvalidationListener(pool.Config().ConnConfig, h, h, nil, time.Now, zap.NewNop()), nil, zap.NewNop())
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	waitUntil(t, "listening", h.on)
	return h
}

func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// expectIDs waits until h has heard exactly want (and no flush).
func expectIDs(t *testing.T, h *heard, want ...int64) {
	t.Helper()
	var got []int64
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		ids, all := h.take()
		if all != 0 {
			t.Fatalf("heard %d flushes, want users %v", all, want)
		}
		got = append(got, ids...)
		slices.Sort(got)
		got = slices.Compact(got)
		if slices.Equal(got, want) {
			time.Sleep(50 * time.Millisecond) // nothing more may come
			if extra, all := h.take(); len(extra) > 0 || all > 0 {
				t.Fatalf("heard %v and %d flushes after %v", extra, all, want)
			}
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("heard users %v, want %v", got, want)
}

// Every way memberships change reaches the listeners: the service's
// change and registration, and plain SQL inserts, expiry updates and
// deletes, as another program would write them.
func TestEveryMembershipWriteIsNotified(t *testing.T) {
	pool := env.NewPool(t)
	segs := postgres.NewSegmentRepo(pool, postgres.NopRecorder{})
	users := postgres.NewUserRepo(pool, postgres.NopRecorder{})
	mustCreate(t, segs, "A", "B")
	h := listenAndRelay(t, pool)

	if _, err := users.ChangeUserSegments(t.Context(), domain.SegmentChange{UserID: 1, Add: []string{"A"}}); err != nil {
		t.Fatal(err)
	}
	expectIDs(t, h, 1)

	mustExec(t, pool, `INSERT INTO users (id) SELECT generate_series(2, 4)`)
	mustExec(t, pool, `
		BEGIN;
		SELECT set_config('segments.reason', 'manual', true);
		INSERT INTO memberships (user_id, segment_id) SELECT u, s.id FROM generate_series(2, 4) u, segments s WHERE s.slug = 'A';
		COMMIT;`)
	expectIDs(t, h, 2, 3, 4)

	mustExec(t, pool, `UPDATE memberships SET expires_at = now() + interval '1 hour' WHERE user_id = 3`)
	expectIDs(t, h, 3)

	mustExec(t, pool, `
		BEGIN;
		SELECT set_config('segments.reason', 'manual', true);
		DELETE FROM memberships WHERE user_id IN (2, 4);
		COMMIT;`)
	expectIDs(t, h, 2, 4)

	// A rolled-back write tells nobody.
	mustExec(t, pool, `
		BEGIN;
		SELECT set_config('segments.reason', 'manual', true);
		DELETE FROM memberships WHERE user_id = 1;
		ROLLBACK;`)
	expectIDs(t, h)

	// A registration that grants a percent segment is a change.
	percent := domain.MaxPercent
	if _, err := segs.CreateSegment(t.Context(), domain.NewSegment{Slug: "ALL", AutoPercent: &percent}); err != nil {
		t.Fatal(err)
	}
	if _, err := users.RegisterUsers(t.Context(), []int64{10, 11}); err != nil {
		t.Fatal(err)
	}
	expectIDs(t, h, 10, 11)
}

// Many users in one statement arrive as lists of at most 390 ids each
// (a payload stays under PostgreSQL's 8,000 bytes even with 19-digit ids);
// more than 20,000 arrive as one flush.
func TestLargeStatementsAreSplitOrFlushed(t *testing.T) {
	pool := env.NewPool(t)
	mustCreate(t, postgres.NewSegmentRepo(pool, postgres.NopRecorder{}), "A")
	h := listenAndRelay(t, pool)

	const big = 1000000000000000000 // 19 digits
	mustExec(t, pool, `INSERT INTO users (id) SELECT $1::bigint + g FROM generate_series(1, 1000) g`, int64(big))
	mustExec(t, pool, `
		BEGIN;
		SELECT set_config('segments.reason', 'manual', true);
		INSERT INTO memberships (user_id, segment_id) SELECT u.id, s.id FROM users u, segments s;
		COMMIT;`)
	want := make([]int64, 1000)
	for i := range want {
		want[i] = big + int64(i) + 1
	}
	expectIDs(t, h, want...)

	mustExec(t, pool, `INSERT INTO users (id) SELECT generate_series(1, 20001)`)
	mustExec(t, pool, `
		BEGIN;
		SELECT set_config('segments.reason', 'manual', true);
		INSERT INTO memberships (user_id, segment_id) SELECT u.id, s.id FROM users u, segments s WHERE u.id <= 20001;
		COMMIT;`)
	waitUntil(t, "a flush", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.all == 1
	})
	if ids, _ := h.take(); len(ids) != 0 {
		t.Fatalf("heard %d ids besides the flush", len(ids))
	}
}

// A listener whose session is terminated says so, reconnects, and says
// it listens again; a notification it cannot read flushes.
func TestListenerRecoversItsConnection(t *testing.T) {
	pool := env.NewPool(t)
	h := listenAndRelay(t, pool)

	var n int64
	if err := pool.QueryRow(t.Context(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`,
		postgres.ListenerName()).Scan(&n); err != nil || n != 1 {
		t.Fatalf("terminated %d listeners: %v", n, err)
	}
	waitUntil(t, "the listener to come back", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return slices.Equal(h.listening, []bool{true, false, true})
	})

	mustExec(t, pool, `NOTIFY segments_cache, 'garbage'`)
	mustExec(t, pool, `NOTIFY segments_cache, '0 *'`)
	waitUntil(t, "two flushes", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.all == 2
	})
}

// Of several relays one relays; when it stops, another takes over within
// a couple of seconds and nothing queued meanwhile is lost.
func TestOneRelayAtATimeAndATakeover(t *testing.T) {
	pool := env.NewPool(t)
	mustCreate(t, postgres.NewSegmentRepo(pool, postgres.NopRecorder{}), "A")
	users := postgres.NewUserRepo(pool, postgres.NopRecorder{})
	h := listenAndRelay(t, pool) // the first relay
	ctx, stopSecond := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		supervise.Run(ctx, postgres.InvalidationRelay(pool.Config().ConnConfig, 5*time.Millisecond, zap.NewNop()), nil, zap.NewNop())
	})
	t.Cleanup(func() { stopSecond(); wg.Wait() })

	relays := func() int64 {
		var n int64
		if err := pool.QueryRow(t.Context(), `
			SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name LIKE 'segments cache relay %'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	holders := func() int64 {
		var n int64
		if err := pool.QueryRow(t.Context(), `
			SELECT count(*) FROM pg_locks
			WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
			  AND (classid::bigint << 32 | objid::bigint) = 7346012917432108716`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitUntil(t, "two relay sessions", func() bool { return relays() == 2 })
	if n := holders(); n != 1 {
		t.Fatalf("%d relays hold the relay lock", n)
	}

	// Stop whichever relays: terminate the lock holder's session.
	mustExec(t, pool, `
		SELECT pg_terminate_backend(pid) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND (classid::bigint << 32 | objid::bigint) = 7346012917432108716`)
	if _, err := users.ChangeUserSegments(t.Context(), domain.SegmentChange{UserID: 42, Add: []string{"A"}}); err != nil {
		t.Fatal(err)
	}
	expectIDs(t, h, 42)
	waitUntil(t, "a relay holding the lock again", func() bool { return holders() == 1 })
}
