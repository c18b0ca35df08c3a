package testenv

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
)

// AssertHistoryReplays checks the history invariant on the whole database:
// for every (user, segment) the history, in time order, alternates add and
// remove starting with add, and replaying it yields exactly the memberships
// stored now; and every stored membership names a registered user and an
// existing segment. It reports every violation it finds.
func AssertHistoryReplays(tb testing.TB, pool *pgxpool.Pool) {
	tb.Helper()
	ctx := context.Background()
	type key struct{ user, segment int64 }

	const qHistory = `SELECT user_id, segment_id, operation FROM membership_history ORDER BY at, id`
	rows, err := pool.Query(ctx, qHistory)
	if err != nil {
		tb.Fatal(err)
	}
	held := map[key]bool{}
	var (
		k        key
		op       string
		problems []string
		events   int
	)
	for rows.Next() {
		if err := rows.Scan(&k.user, &k.segment, &op); err != nil {
			tb.Fatal(err)
		}
		events++
		switch {
		case op == "add" && held[k]:
			problems = append(problems, fmt.Sprintf("user %d segment %d: added twice without a remove", k.user, k.segment))
		case op == "remove" && !held[k]:
			problems = append(problems, fmt.Sprintf("user %d segment %d: removed while not held", k.user, k.segment))
		}
		if op == "add" {
			held[k] = true
		} else {
			delete(held, k)
		}
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}

	const qCurrent = `SELECT user_id, segment_id FROM memberships`
	rows, err = pool.Query(ctx, qCurrent)
	if err != nil {
		tb.Fatal(err)
	}
	current := 0
	for rows.Next() {
		if err := rows.Scan(&k.user, &k.segment); err != nil {
			tb.Fatal(err)
		}
		current++
		if !held[k] {
			problems = append(problems, fmt.Sprintf("user %d segment %d: stored but history does not hold it", k.user, k.segment))
		}
		delete(held, k)
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	for k := range held {
		problems = append(problems, fmt.Sprintf("user %d segment %d: history holds it but it is not stored", k.user, k.segment))
	}
	const qOrphans = `
		SELECT m.user_id, m.segment_id FROM memberships m
		WHERE NOT EXISTS (SELECT 1 FROM segments s WHERE s.id = m.segment_id)
		   OR NOT EXISTS (SELECT 1 FROM users u WHERE u.id = m.user_id)`
	rows, err = pool.Query(ctx, qOrphans)
	if err != nil {
		tb.Fatal(err)
	}
	for rows.Next() {
		if err := rows.Scan(&k.user, &k.segment); err != nil {
			tb.Fatal(err)
		}
		problems = append(problems, fmt.Sprintf("user %d segment %d: stored, but the user or the segment does not exist", k.user, k.segment))
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	for i, p := range problems {
		if i == 20 {
			tb.Errorf("... and %d more history violations", len(problems)-20)
			break
		}
		tb.Error(p)
	}
	if testing.Verbose() {
		tb.Logf("history: %d events replay to the %d stored memberships: %d violations", events, current, len(problems))
	}
}
