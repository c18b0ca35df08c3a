package postgres_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/postgres"
)

// openEventLog opens the relay's reader on pool's database.
func openEventLog(t *testing.T, pool *pgxpool.Pool) *postgres.EventLog {
	t.Helper()
	l, err := postgres.OpenEventLog(t.Context(), pool.Config().ConnConfig, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(context.Background()) })
	return l
}

// next reads the next events and describes each as "user operation slug
// reason", publishing them.
func next(t *testing.T, l *postgres.EventLog) []string {
	t.Helper()
	events, err := l.Next(t.Context(), 100)
	if err != nil {
		t.Fatal(err)
	}
	out := []string{}
	for _, e := range events {
		out = append(out, fmt.Sprintf("%d %s %s %s", e.UserID, e.Operation, e.Segment, e.Reason))
	}
	if len(events) > 0 {
		if err := l.Published(t.Context(), events[len(events)-1].Cursor()); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestEventsCommittedOutOfOrderAreNotSkipped commits two transactions in
// the unlucky order: A writes its event first (the smaller id and at) but
// commits after B. A relay that read everything committed after the last
// id it published would publish B and then never see A. The event log
// holds B back while A runs, then gives both, A first.
func TestEventsCommittedOutOfOrderAreNotSkipped(t *testing.T) {
	t.Parallel()
	pool := env.NewPool(t)
	mustCreate(t, postgres.NewSegmentRepo(pool, nil), "SLOW", "FAST")
	mustExec(t, pool, `INSERT INTO users (id) VALUES (1), (2)`)
	l := openEventLog(t, pool)
	ctx := t.Context()

	a, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Rollback(context.Background())
	give := func(tx pgx.Tx, user int64, slug string) {
		t.Helper()
		if _, err := tx.Exec(ctx, `
			WITH r AS (SELECT set_config('segments.reason', 'manual', true))
			INSERT INTO memberships (user_id, segment_id) SELECT $1, id FROM segments, r WHERE slug = $2`, user, slug); err != nil {
			t.Fatal(err)
		}
	}
	give(a, 1, "SLOW")
	b, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	give(b, 2, "FAST")
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	var committed, lastID int64
	if err := pool.QueryRow(ctx, `SELECT count(*), max(id) FROM membership_history`).Scan(&committed, &lastID); err != nil {
		t.Fatal(err)
	}
	if committed != 1 || lastID != 2 {
		t.Fatalf("before A commits: %d committed events, last id %d; want B's alone, id 2 (A took id 1)", committed, lastID)
	}
	if got := next(t, l); len(got) != 0 {
		t.Fatalf("while A runs the log gave %q; want nothing (A may still commit an earlier event)", got)
	}
	if err := a.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"1 add SLOW manual", "2 add FAST manual"}
	if got := next(t, l); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("after A commits the log gave %q; want %q", got, want)
	}
	if got := next(t, l); len(got) != 0 {
		t.Fatalf("then %q; want nothing more", got)
	}
}

// TestExpiredMembershipHoldsBackLaterEvents: a ttl removal is recorded at
// the expiry, however late a writer removes the row. An event of the same
// user written after the expiry but before the removal must wait, or the
// user's events would reach the stream out of the order of their at.
func TestExpiredMembershipHoldsBackLaterEvents(t *testing.T) {
	t.Parallel()
	pool := env.NewPool(t)
	mustCreate(t, postgres.NewSegmentRepo(pool, nil), "BRIEF", "LATER")
	mustExec(t, pool, `INSERT INTO users (id) VALUES (1)`)
	l := openEventLog(t, pool)

	var expiry time.Time
	err := pool.QueryRow(t.Context(), `
		WITH r AS (SELECT set_config('segments.reason', 'manual', true))
		INSERT INTO memberships (user_id, segment_id, expires_at)
		SELECT 1, id, clock_timestamp() + interval '300 milliseconds' FROM segments, r WHERE slug = 'BRIEF'
		RETURNING expires_at`).Scan(&expiry)
	if err != nil {
		t.Fatal(err)
	}
	if got := next(t, l); strings.Join(got, "|") != "1 add BRIEF manual" {
		t.Fatalf("got %q; want the add", got)
	}
	time.Sleep(time.Until(expiry) + 50*time.Millisecond)
	// A writer that does not clean up the user's expired memberships (a
	// rollout does not) gives the user another segment.
	mustExec(t, pool, `
		WITH r AS (SELECT set_config('segments.reason', 'auto', true))
		INSERT INTO memberships (user_id, segment_id, source) SELECT 1, id, 'auto' FROM segments, r WHERE slug = 'LATER'`)
	if got := next(t, l); len(got) != 0 {
		t.Fatalf("with BRIEF expired but not removed the log gave %q; want nothing (its removal will be recorded at %s)", got, expiry)
	}
	if n, err := l.Backlog(t.Context(), 100); err != nil || n != 1 {
		t.Fatalf("backlog %d (%v); want 1", n, err)
	}
	mustExec(t, pool, `
		WITH r AS (SELECT set_config('segments.reason', 'manual', true))
		DELETE FROM memberships USING r WHERE user_id = 1 AND expires_at IS NOT NULL`)
	want := []string{"1 remove BRIEF ttl", "1 add LATER auto"}
	if got := next(t, l); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("after the removal the log gave %q; want %q", got, want)
	}
	if n, err := l.Backlog(t.Context(), 100); err != nil || n != 0 {
		t.Fatalf("backlog %d (%v); want 0", n, err)
	}
}

// TestOneEventLogAtATime: a second reader waits for the first's lock, and
// starts where the first stopped.
func TestOneEventLogAtATime(t *testing.T) {
	t.Parallel()
	pool := env.NewPool(t)
	mustCreate(t, postgres.NewSegmentRepo(pool, nil), "ONE")
	mustExec(t, pool, `INSERT INTO users (id) VALUES (1), (2)`)
	give := func(user int64) {
		mustExec(t, pool, `
			WITH r AS (SELECT set_config('segments.reason', 'manual', true))
			INSERT INTO memberships (user_id, segment_id) SELECT $1, id FROM segments, r WHERE slug = 'ONE'`, user)
	}
	first := openEventLog(t, pool)
	give(1)
	if got := next(t, first); strings.Join(got, "|") != "1 add ONE manual" {
		t.Fatalf("first: %q", got)
	}
	give(2)

	opened := make(chan *postgres.EventLog, 1)
	go func() {
		l, err := postgres.OpenEventLog(context.Background(), pool.Config().ConnConfig, 10*time.Millisecond)
		if err != nil {
			t.Error(err)
		}
		opened <- l
	}()
	select {
	case <-opened:
		t.Fatal("a second event log opened while the first holds the lock")
	case <-time.After(200 * time.Millisecond):
	}
	first.Close(t.Context())
	second := <-opened
	if second == nil {
		return
	}
	defer second.Close(context.Background())
	if got := next(t, second); strings.Join(got, "|") != "2 add ONE manual" {
		t.Fatalf("second: %q; want user 2's event alone", got)
	}
}

// blockingWriter takes the first write and then blocks until released.
type blockingWriter struct {
	started chan struct{}
	release chan struct{}
	once    sync.Once
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.started) })
	<-w.release
	return len(p), nil
}

// TestExportsDoNotHoldBackEvents: a CSV export may stream for minutes, in
// a transaction that is read-only and can write no history; events written
// meanwhile are published at once. Another open transaction holds them.
func TestExportsDoNotHoldBackEvents(t *testing.T) {
	t.Parallel()
	pool := env.NewPool(t)
	mustCreate(t, postgres.NewSegmentRepo(pool, nil), "X")
	mustExec(t, pool, `INSERT INTO users (id) VALUES (1), (2), (3)`)
	give := func(user int64) {
		mustExec(t, pool, `
			WITH r AS (SELECT set_config('segments.reason', 'manual', true))
			INSERT INTO memberships (user_id, segment_id) SELECT $1, id FROM segments, r WHERE slug = 'X'`, user)
	}
	give(1)
	l := openEventLog(t, pool)
	if got := next(t, l); len(got) != 1 {
		t.Fatalf("got %q; want user 1's event", got)
	}

	w := &blockingWriter{started: make(chan struct{}), release: make(chan struct{})}
	exported := make(chan error, 1)
	go func() {
		now := time.Now().UTC()
		exported <- postgres.NewHistoryRepo(pool, time.Minute).CopyHistoryCSV(context.Background(),
			domain.HistoryQuery{Period: domain.Period{Year: now.Year(), Month: now.Month()}}, w)
	}()
	<-w.started
	give(2)
	if got := next(t, l); strings.Join(got, "|") != "2 add X manual" {
		t.Errorf("during an export the log gave %q; want user 2's event", got)
	}
	close(w.release)
	if err := <-exported; err != nil {
		t.Fatal(err)
	}

	open, err := pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer open.Rollback(context.Background())
	if _, err := open.Exec(t.Context(), `SELECT 1`); err != nil {
		t.Fatal(err)
	}
	give(3)
	if got := next(t, l); len(got) != 0 {
		t.Errorf("with another transaction open the log gave %q; want nothing", got)
	}
}

// TestEventLogNeedsTrackActivities: without it the horizon would see no
// running transaction, so the log refuses to open.
func TestEventLogNeedsTrackActivities(t *testing.T) {
	t.Parallel()
	pool := env.NewPool(t)
	cfg := pool.Config().ConnConfig.Copy()
	cfg.RuntimeParams["track_activities"] = "off"
	l, err := postgres.OpenEventLog(t.Context(), cfg, 10*time.Millisecond)
	if err == nil {
		l.Close(context.Background())
		t.Fatal("opened with track_activities off")
	}
	if !strings.Contains(err.Error(), "track_activities is off") {
		t.Errorf("error %q does not say why", err)
	}
}
