package testenv

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/events"
)

// StreamName names a change event stream for tb alone (tests share a
// Redis).
func StreamName(tb testing.TB) string {
	return fmt.Sprintf("test-events-%s-%d", strings.ReplaceAll(tb.Name(), "/", "-"), rand.Uint32())
}

// StreamEntry is one entry of a change event stream.
type StreamEntry struct {
	ID     string // the stream's id
	Fields map[string]string
}

// ReadStream returns every entry of stream, oldest first.
func ReadStream(tb testing.TB, rdb redis.Cmdable, stream string) []StreamEntry {
	tb.Helper()
	var out []StreamEntry
	start := "-"
	for {
		msgs, err := rdb.XRangeN(context.Background(), stream, start, "+", 10000).Result()
		if err != nil {
			tb.Fatalf("XRANGE %s: %v", stream, err)
		}
		for _, m := range msgs {
			e := StreamEntry{ID: m.ID, Fields: map[string]string{}}
			for k, v := range m.Values {
				e.Fields[k] = fmt.Sprint(v)
			}
			out = append(out, e)
		}
		if len(msgs) < 10000 {
			return out
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

// AssertEventsPublished checks stream against the whole history: every
// history event is in it with the same fields, nothing else is, and each
// user's events (the first copy of each) come in the order of their at. It
// returns how many entries repeat an earlier one: a relay that died
// between publishing a batch and recording it publishes the batch again.
func AssertEventsPublished(tb testing.TB, pool *pgxpool.Pool, rdb redis.Cmdable, stream string) (copies int) {
	tb.Helper()
	rows, _ := pool.Query(context.Background(),
		`SELECT id, user_id, slug, operation, reason, at FROM membership_history`)
	all, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (domain.Event, error) {
		var e domain.Event
		err := row.Scan(&e.ID, &e.UserID, &e.Segment, &e.Operation, &e.Reason, &e.At)
		return e, err
	})
	if err != nil {
		tb.Fatal(err)
	}
	history := map[string]map[string]string{}
	for _, e := range all {
		f := events.Fields(e)
		m := map[string]string{}
		for i := 0; i < len(f); i += 2 {
			m[f[i]] = f[i+1]
		}
		history[m["id"]] = m
	}

	seen := map[string]bool{}
	last := map[string]string{} // user → at of its last event
	var problems []string
	report := func(format string, args ...any) {
		if len(problems) < 20 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	for _, e := range ReadStream(tb, rdb, stream) {
		id := e.Fields["id"]
		want, ok := history[id]
		switch {
		case !ok:
			report("entry %s: event %q is not in history: %v", e.ID, id, e.Fields)
			continue
		case !maps.Equal(e.Fields, want):
			report("entry %s: %v, history has %v", e.ID, e.Fields, want)
		}
		if seen[id] {
			copies++
			continue
		}
		seen[id] = true
		user, at := e.Fields["user_id"], e.Fields["at"]
		if at < last[user] {
			report("entry %s: user %s's event %s at %s comes after one at %s", e.ID, user, id, at, last[user])
		}
		last[user] = at
	}
	missing := 0
	for id, h := range history {
		if !seen[id] {
			missing++
			if missing <= 5 {
				report("event %s is not in the stream: %v", id, h)
			}
		}
	}
	if missing > 0 {
		report("%d of %d history events are missing from the stream", missing, len(history))
	}
	for _, p := range problems {
		tb.Error(p)
	}
	return copies
}
