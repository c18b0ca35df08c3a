package main

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/tools/localserver"
	"github.com/segments-service/segments/tools/testenv"
)

// metric reads one series' value from a process's /metrics.
func metric(t *testing.T, base, series string) float64 {
	t.Helper()
	_, body := get(t, base+"/metrics")
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no %s in %s/metrics", series, base)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestStandbyReadsStayExact runs two API processes, A and B, on a primary
// with a streaming standby (pg_basebackup) for their cache misses. With
// the standby's replay paused, users changed through A read their change
// through A at once and through B as soon as B hears of it, and never
// lose it again; after replay resumes, misses are served by the standby
// and nothing stale stays cached; with the standby killed, every read
// still answers, from the primary.
func TestStandbyReadsStayExact(t *testing.T) {
	ctx := t.Context()
	primary, err := localserver.StartPostgres(ctx, localserver.PostgresOptions{Dir: testenv.ServerDir(t), Throwaway: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = primary.Stop() })
	if err := testenv.Exec(ctx, primary.URL("postgres"), "CREATE DATABASE segments"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := postgres.Migrate(primary.URL("segments"), "up"); err != nil {
		t.Fatal(err)
	}
	standby, err := localserver.StartStandby(ctx, primary, testenv.ServerDir(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = standby.Stop() })
	onStandby := func(sql string) int64 {
		t.Helper()
		conn, err := pgx.Connect(ctx, standby.URL("segments"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		var n int64
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM users`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	vars := map[string]string{
		"DATABASE_URL":         primary.URL("segments"),
		"DATABASE_REPLICA_URL": standby.URL("segments"),
		"REPLICA_MAX_LAG":      "5s",
		"REDIS_URL":            env.RedisURL,
		"WORKER_QUEUE":         fmt.Sprintf("standby-%d", time.Now().UnixNano()),
		"LOG_LEVEL":            "warn",
	}
	a := startReplica(t, "A", vars)
	b := startReplica(t, "B", vars)
	a.send(t, "POST", "/api/v1/segments", `{"slug":"S"}`)
	users := ""
	for u := 1; u <= 200; u++ {
		users += fmt.Sprintf(",%d", u)
	}
	a.send(t, "POST", "/api/v1/users", `{"user_ids":[`+users[1:]+`]}`)
	testenv.Eventually(t, 30*time.Second, "the standby did not catch up", func() bool { return onStandby(`SELECT 1`) == 200 })
	testenv.Eventually(t, 30*time.Second, "B never found the standby usable", func() bool {
		return metric(t, b.base, "segments_standby_usable") == 1
	})
	for u := int64(101); u <= 110; u++ {
		b.read(t, u)
	}
	if metric(t, b.base, "segments_standby_reads_total") == 0 {
		t.Fatal("B's misses did not go to the standby while it was usable")
	}

	// Replay paused: the standby stays where it is.
	onStandby(`SELECT pg_wal_replay_pause()`)
	for u := int64(1); u <= 30; u++ {
		b.read(t, u) // cached by B before the change
		a.send(t, "POST", fmt.Sprintf("/api/v1/users/%d/segments", u), `{"add":["S"]}`)
		if got, status := a.read(t, u); !slices.Equal(got, []string{"S"}) {
			_, m := get(t, a.base+"/metrics")
			t.Fatalf("A does not read its own write of user %d: %v (Cache-Status %s)\n%s", u, got, status, regexp.MustCompile(`(?m)^segments_standby.*$`).FindAllString(m, -1))
		}
		testenv.Eventually(t, 10*time.Second, fmt.Sprintf("B never showed user %d's change", u), func() bool {
			got, _ := b.read(t, u)
			return slices.Equal(got, []string{"S"})
		})
		for range 5 {
			if got, _ := b.read(t, u); !slices.Equal(got, []string{"S"}) {
				t.Fatalf("B showed user %d's change, then %v", u, got)
			}
		}
	}
	if n := onStandby(`SELECT 1`); n != 200 {
		t.Fatalf("the paused standby has %d users", n)
	}
	if metric(t, b.base, `segments_standby_fallbacks_total{reason="behind"}`)+
		metric(t, b.base, `segments_standby_fallbacks_total{reason="lagging"}`) == 0 {
		t.Fatal("B never went to the primary while the standby was paused")
	}

	// Replay resumed: misses go to the standby again, and every answer
	// has the changes.
	onStandby(`SELECT pg_wal_replay_resume()`)
	before := metric(t, b.base, "segments_standby_reads_total")
	// On failure, say where the fence and the standby stood.
	defer func() {
		if !t.Failed() {
			return
		}
		_, m := get(t, b.base+"/metrics")
		t.Logf("B: %s", regexp.MustCompile(`(?m)^segments_standby.*$`).FindAllString(m, -1))
		for name, q := range map[string]string{primary.URL("segments"): `SELECT pg_current_wal_insert_lsn()::text`,
			standby.URL("segments"): `SELECT pg_last_wal_replay_lsn()::text`} {
			if conn, err := pgx.Connect(context.Background(), name); err == nil {
				var pos string
				_ = conn.QueryRow(context.Background(), q).Scan(&pos)
				t.Logf("%s: %s", q, pos)
				conn.Close(context.Background())
			}
		}
	}()
	fresh := int64(110) // users B has not read: each read a miss
	testenv.Eventually(t, 30*time.Second, "B's misses did not go back to the standby", func() bool {
		fresh++
		if got, _ := b.read(t, fresh); len(got) != 0 {
			t.Fatalf("user %d: %v", fresh, got)
		}
		return metric(t, b.base, "segments_standby_reads_total") > before
	})
	if fresh > 160 {
		t.Fatalf("the standby answered again only after %d reads", fresh-110)
	}
	for u := int64(1); u <= 40; u++ {
		want := []string{}
		if u <= 30 {
			want = []string{"S"}
		}
		for _, r := range []replica{a, b} {
			if got, _ := r.read(t, u); !slices.Equal(got, want) {
				t.Fatalf("after replay resumed, %s reads user %d as %v, want %v", r.base, u, got, want)
			}
		}
	}

	// Explain, members and a history export through B, which may read them
	// from the standby now: each has the changes.
	readsBefore := metric(t, b.base, "segments_standby_reads_total")
	if got := b.send(t, "GET", "/api/v1/users/7/segments/S", ""); !strings.Contains(got, `"member":true`) {
		t.Fatalf("B explains user 7 in S as %s", got)
	}
	if got := b.send(t, "GET", "/api/v1/segments/S/members?limit=1000", ""); strings.Count(got, `"user_id"`) != 30 {
		t.Fatalf("B lists S's members as %s", got)
	}
	link := b.send(t, "POST", "/api/v1/reports/history", fmt.Sprintf(`{"period":%q,"user_id":7}`, time.Now().UTC().Format("2006-01")))
	var report struct{ URL string }
	if err := json.Unmarshal([]byte(link), &report); err != nil {
		t.Fatal(err)
	}
	if _, csv := get(t, b.base+report.URL); !strings.Contains(csv, "7;S;add;") {
		t.Fatalf("B's history export of user 7: %q", csv)
	}
	if metric(t, b.base, "segments_standby_reads_total")-readsBefore < 3 {
		t.Fatal("explain, members and the export did not go to the standby")
	}

	// The standby gone: every read answers, from the primary.
	if err := standby.Kill(); err != nil {
		t.Fatal(err)
	}
	for u := int64(161); u <= 200; u++ {
		if got, _ := b.read(t, u); len(got) != 0 {
			t.Fatalf("user %d: %v", u, got)
		}
	}
	if metric(t, b.base, `segments_standby_fallbacks_total{reason="down"}`)+
		metric(t, b.base, `segments_standby_fallbacks_total{reason="lagging"}`) == 0 {
		t.Fatal("no read fell back from the killed standby")
	}
}
