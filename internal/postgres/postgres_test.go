package postgres_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/tools/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Run(m, &env) }

// counts is a postgres.Recorder that keeps what it is told.
type counts struct {
	mu sync.Mutex
	n  map[string]int64
}

func (c *counts) MembershipsChanged(op domain.Operation, reason domain.Reason, n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int64{}
	}
	c.n[string(op)+" "+string(reason)] += n
}

// take returns the counts so far (only the non-zero ones) and forgets them.
func (c *counts) take() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int64{}
	for k, v := range c.n {
		if v != 0 {
			out[k] = v
		}
	}
	c.n = nil
	return out
}

func mustExec(tb testing.TB, pool *pgxpool.Pool, sql string, args ...any) {
	tb.Helper()
	if _, err := pool.Exec(context.Background(), sql, args...); err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
}

func mustCreate(tb testing.TB, repo *postgres.SegmentRepo, slugs ...string) {
	tb.Helper()
	for _, s := range slugs {
		if _, err := repo.CreateSegment(context.Background(), domain.NewSegment{Slug: s}); err != nil {
			tb.Fatal(err)
		}
	}
}

type historyRow struct {
	Slug      string
	Operation string
	Reason    string
	At        time.Time
}

func history(tb testing.TB, pool *pgxpool.Pool, userID int64) []historyRow {
	tb.Helper()
	rows, _ := pool.Query(context.Background(),
		`SELECT slug, operation, reason, at FROM membership_history WHERE user_id = $1 ORDER BY at, id`, userID)
	h, err := pgx.CollectRows(rows, pgx.RowToStructByPos[historyRow])
	if err != nil {
		tb.Fatal(err)
	}
	return h
}

func TestMembershipChangesNeedAReason(t *testing.T) {
	pool := env.NewPool(t)
	mustCreate(t, postgres.NewSegmentRepo(pool, postgres.NopRecorder{}), "A")
	mustExec(t, pool, `INSERT INTO users (id) VALUES (1)`)

	_, err := pool.Exec(t.Context(), `INSERT INTO memberships (user_id, segment_id) SELECT 1, id FROM segments`)
	if err == nil || !strings.Contains(err.Error(), "segments.reason is not set") {
		t.Fatalf("insert without a reason: %v", err)
	}
	// With a reason, the trigger records it.
	err = pgx.BeginFunc(t.Context(), pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(t.Context(), `SELECT set_config('segments.reason', 'auto', true)`); err != nil {
			return err
		}
		_, err := tx.Exec(t.Context(), `INSERT INTO memberships (user_id, segment_id, source) SELECT 1, id, 'auto' FROM segments`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if h := history(t, pool, 1); len(h) != 1 || h[0].Reason != "auto" || h[0].Operation != "add" || h[0].Slug != "A" {
		t.Errorf("history = %+v", h)
	}
	// The reason does not outlive its transaction.
	if _, err := pool.Exec(t.Context(), `DELETE FROM memberships`); err == nil {
		t.Error("delete without a reason succeeded")
	}
	if _, err := pool.Exec(t.Context(), `TRUNCATE memberships`); err == nil || !strings.Contains(err.Error(), "cannot be truncated") {
		t.Errorf("truncate: %v", err)
	}
	if _, err := pool.Exec(t.Context(), `UPDATE memberships SET user_id = 2`); err == nil || !strings.Contains(err.Error(), "cannot change") {
		t.Errorf("re-key: %v", err)
	}
	// An update that keeps the keys (a new expiry) is allowed and is not
	// a membership change.
	mustExec(t, pool, `UPDATE memberships SET expires_at = now() + interval '1 day'`)
	if h := history(t, pool, 1); len(h) != 1 {
		t.Errorf("expiry update wrote history: %+v", h)
	}
}

func TestExpiredMembershipIsRecordedAsTTLAtItsExpiry(t *testing.T) {
	pool := env.NewPool(t)
	rec := &counts{}
	segs := postgres.NewSegmentRepo(pool, rec)
	users := postgres.NewUserRepo(pool, rec)
	mustCreate(t, segs, "A", "B")

	expiredAt := time.Now().Add(300 * time.Millisecond).Truncate(time.Microsecond)
	if _, err := users.ChangeUserSegments(t.Context(), domain.SegmentChange{UserID: 1, Add: []string{"A", "B"}, ExpiresAt: &expiredAt}); err != nil {
		t.Fatal(err)
	}
	// Let both expire; nobody removes them yet.
	time.Sleep(time.Until(expiredAt) + 50*time.Millisecond)
	rec.take()

	// Deleting segment A removes the expired membership: history says it
	// went by TTL when it expired, not by the deletion.
	if err := segs.DeleteSegment(t.Context(), "A"); err != nil {
		t.Fatalf("delete A: %v", err)
	}
	if diff := cmp.Diff(map[string]int64{"remove ttl": 1}, rec.take()); diff != "" {
		t.Errorf("deletion counted (-want +got):\n%s", diff)
	}
	// A change for the user purges B the same way before anything else.
	res, err := users.ChangeUserSegments(t.Context(), domain.SegmentChange{UserID: 1, Add: []string{"B"}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"B"}, res.Added); diff != "" {
		t.Errorf("added (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]int64{"remove ttl": 1, "add manual": 1}, rec.take()); diff != "" {
		t.Errorf("change counted (-want +got):\n%s", diff)
	}

	h := history(t, pool, 1)
	got := make([]string, len(h))
	for i, r := range h {
		got[i] = r.Slug + " " + r.Operation + " " + r.Reason
	}
	want := []string{"A add manual", "B add manual", "A remove ttl", "B remove ttl", "B add manual"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("history (-want +got):\n%s", diff)
	}
	if len(h) != 5 || !h[2].At.Equal(expiredAt) || !h[3].At.Equal(expiredAt) {
		t.Errorf("TTL removals at %v and %v, want the expiry %v", h[2].At, h[3].At, expiredAt)
	}
	testenv.AssertHistoryReplays(t, pool)
}

func TestChangeRefusesAnExpiryThatHasPassed(t *testing.T) {
	pool := env.NewPool(t)
	mustCreate(t, postgres.NewSegmentRepo(pool, postgres.NopRecorder{}), "A")
	past := time.Now().Add(-time.Millisecond)
	_, err := postgres.NewUserRepo(pool, postgres.NopRecorder{}).ChangeUserSegments(t.Context(), domain.SegmentChange{UserID: 1, Add: []string{"A"}, ExpiresAt: &past})
	if !errors.Is(err, domain.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	var n int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM users`).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d users after a refused change (%v)", n, err)
	}
}

func TestSegmentStoreErrors(t *testing.T) {
	pool := env.NewPool(t)
	repo := postgres.NewSegmentRepo(pool, postgres.NopRecorder{})
	mustCreate(t, repo, "A")
	if _, err := repo.CreateSegment(t.Context(), domain.NewSegment{Slug: "A"}); !errors.Is(err, domain.ErrConflict) {
		t.Errorf("duplicate create: %v, want ErrConflict", err)
	}
	if _, err := repo.Segment(t.Context(), "B"); !errors.Is(err, domain.ErrNotFound) {
		t.Errorf("get missing: %v, want ErrNotFound", err)
	}
	if err := repo.DeleteSegment(t.Context(), "B"); !errors.Is(err, domain.ErrNotFound) {
		t.Errorf("delete missing: %v, want ErrNotFound", err)
	}
}

func TestMigrateDownAndUp(t *testing.T) {
	url := env.NewDatabase(t)
	v, dirty, err := postgres.MigrationVersion(url)
	if err != nil || dirty || v == 0 {
		t.Fatalf("version %d dirty %v: %v", v, dirty, err)
	}
	for v > 0 {
		var next uint
		if next, _, err = postgres.Migrate(url, "down"); err != nil {
			t.Fatal(err)
		}
		if next >= v {
			t.Fatalf("down from %d reached %d", v, next)
		}
		v = next
	}
	if v, _, err = postgres.Migrate(url, "up"); err != nil || v == 0 {
		t.Fatalf("up again: version %d: %v", v, err)
	}
}

func TestFirstReadRegistersTheUserOnce(t *testing.T) {
	pool := env.NewPool(t)
	rec := &counts{}
	segs := postgres.NewSegmentRepo(pool, rec)
	users := postgres.NewUserRepo(pool, rec)
	all := domain.MaxPercent
	if _, err := segs.CreateSegment(t.Context(), domain.NewSegment{Slug: "EVERYONE", AutoPercent: &all}); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, segs, "MANUAL")

	// Without registering, an unknown user holds nothing and stays
	// unknown.
	if ms, known, err := users.UserSegments(t.Context(), 1000, false); err != nil || known || len(ms) != 0 {
		t.Fatalf("unregistered read: %+v, known %v, %v; want nothing, unknown", ms, known, err)
	}
	for i := range 2 {
		ms, known, err := users.UserSegments(t.Context(), 1000, true)
		if err != nil || !known {
			t.Fatalf("read %d: known %v, %v", i+1, known, err)
		}
		if len(ms) != 1 || ms[0].Slug != "EVERYONE" || ms[0].Source != domain.SourceAuto || ms[0].ExpiresAt != nil {
			t.Fatalf("read %d: %+v, want the percent segment", i+1, ms)
		}
	}
	var n int64
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM users WHERE id = 1000`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d users 1000 (%v)", n, err)
	}
	if diff := cmp.Diff(map[string]int64{"add auto": 1}, rec.take()); diff != "" {
		t.Errorf("counted (-want +got):\n%s", diff)
	}
	testenv.AssertHistoryReplays(t, pool)
}

// TestNothingIsBornExpired sends changes whose expiry is 0 to 10.5 ms ahead:
// each is either refused or gives a membership added before it expires
// (one clock reading per change), from several goroutines at once.
func TestNothingIsBornExpired(t *testing.T) {
	pool := env.NewPool(t)
	users := postgres.NewUserRepo(pool, postgres.NopRecorder{})
	mustCreate(t, postgres.NewSegmentRepo(pool, postgres.NopRecorder{}), "A", "B")
	var (
		wg              sync.WaitGroup
		mu              sync.Mutex
		applied, refusd int
	)
	for g := range 4 {
		wg.Go(func() {
			for i := range 150 {
				at := time.Now().Add(time.Duration(i%8) * 1500 * time.Microsecond)
				res, err := users.ChangeUserSegments(context.Background(), domain.SegmentChange{
					UserID: int64(g + 1), Add: []string{"A", "B"}, ExpiresAt: &at})
				mu.Lock()
				switch {
				case errors.Is(err, domain.ErrInvalid):
					refusd++
				case err != nil:
					t.Error(err)
				default:
					applied++
					for _, m := range res.Segments {
						if !m.ExpiresAt.After(m.AddedAt) {
							t.Errorf("user %d: %s added at %v expires at %v", g+1, m.Slug, m.AddedAt, *m.ExpiresAt)
						}
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	t.Logf("%d changes applied, %d refused as expired", applied, refusd)
	if applied == 0 || refusd == 0 {
		t.Errorf("%d applied and %d refused: the test did not cover both outcomes", applied, refusd)
	}
	var bad int64
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM memberships WHERE expires_at <= added_at`).Scan(&bad); err != nil || bad != 0 {
		t.Errorf("%d memberships born expired (%v)", bad, err)
	}
	testenv.AssertHistoryReplays(t, pool)
}

// asTest is a subquery that tells the audit triggers a fixture statement
// is the test's (an administrative change must say who makes it).
const asTest = `SELECT set_config('segments.audit', '{"actor": "test"}', true)`
