package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/segments-service/segments/tools/localserver"
)

// servers returns database and Redis URLs: BENCH_DATABASE_URL and
// BENCH_REDIS_URL if set, else servers started from the local binaries
// with PostgreSQL's default settings (durable, unlike the tests').
func servers(ctx context.Context, log func(string, ...any)) (db, rd string, cleanup func(), err error) {
	var stops []func()
	cleanup = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	if db = os.Getenv("BENCH_DATABASE_URL"); db == "" {
		dir := filepath.Join(os.TempDir(), fmt.Sprintf("segments-bench-%d", os.Getpid()))
		stops = append(stops, func() { _ = os.RemoveAll(dir) })
		// Default settings but for connections: three service processes
		// (up to 32 each) and pgbench's clients exceed the default 100.
		pg, err := localserver.StartPostgres(ctx, localserver.PostgresOptions{Dir: filepath.Join(dir, "pg"),
			Settings: benchSettings()})
		if err != nil {
			return "", "", cleanup, err
		}
		stops = append(stops, func() { _ = pg.Stop() })
		db = pg.URL("postgres")
		log("started PostgreSQL on port %d (default settings but %v)", pg.Port(), benchSettings())
	}
	if rd = os.Getenv("BENCH_REDIS_URL"); rd == "" {
		dir := filepath.Join(os.TempDir(), fmt.Sprintf("segments-bench-redis-%d", os.Getpid()))
		stops = append(stops, func() { _ = os.RemoveAll(dir) })
		r, err := localserver.StartRedis(ctx, localserver.RedisOptions{Dir: dir})
		if err != nil {
			return "", "", cleanup, err
		}
		stops = append(stops, func() { _ = r.Stop() })
		rd = r.URL(0)
	}
	return db, rd, cleanup, nil
}

// benchSettings are the bench server's settings beyond the defaults:
// max_connections 200 (three service processes and pgbench), and any
// name=value pairs in BENCH_PG_SETTINGS (comma-separated), to try others.
func benchSettings() map[string]string {
	settings := map[string]string{"max_connections": "200"}
	for _, kv := range strings.Split(os.Getenv("BENCH_PG_SETTINGS"), ",") {
		if k, v, ok := strings.Cut(strings.TrimSpace(kv), "="); ok {
			settings[k] = v
		}
	}
	return settings
}
