// Package testenv gives a package's tests a real PostgreSQL and Redis.
//
// It uses, in order: TEST_DATABASE_URL / TEST_REDIS_URL if set; else Docker
// through testcontainers if a Docker engine answers; else throwaway
// postgres and redis-server processes started from the local binaries (see
// package localserver). One server of each serves a whole package; the
// schema is migrated once into a template database, and each test that
// wants a database of its own gets a fresh copy of it.
//
// Use it from TestMain:
//
//	var env *testenv.Env
//
//	func TestMain(m *testing.M) { testenv.Run(m, &env) }
package testenv

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/tools/localserver"
)

// Env is one PostgreSQL server and one Redis server for tests.
type Env struct {
	// RedisURL points at the Redis server. Tests share it: each isolates
	// itself with its own queue names or keys.
	RedisURL string
	// Source says where the servers came from: "env", "docker" or "local".
	Source string

	adminURL string // the maintenance database, to create test databases
	template string // a migrated database that test databases copy
	prefix   string // unique per Env, so that Envs can share a server
	seq      atomic.Int64
	stops    []func()
	// bouncer, with TEST_PGBOUNCER=1, is a PgBouncer in transaction mode
	// that NewPool's pools go through.
	bouncer *localserver.PgBouncer
}

// directPools maps a pool NewPool made through PgBouncer to a pool on the
// same database directly (see Direct).
var directPools sync.Map

// Direct returns a pool on pool's database that connects to the server
// itself: pool's own unless TEST_PGBOUNCER=1 made it go through PgBouncer
// (what needs a session, as DATABASE_DIRECT_URL, uses it).
func Direct(pool *pgxpool.Pool) *pgxpool.Pool {
	if d, ok := directPools.Load(pool); ok {
		return d.(*pgxpool.Pool)
	}
	return pool
}

// Run starts an Env, stores it in *env, runs the tests and exits with their
// status. Call it from TestMain.
func Run(m *testing.M, env **Env) {
	e, err := Start(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		os.Exit(1)
	}
	*env = e
	code := m.Run()
	e.Close()
	os.Exit(code)
}

// Start finds or starts the servers and migrates the template database.
func Start(ctx context.Context) (*Env, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()

	e := &Env{prefix: fmt.Sprintf("t%d_%04x", os.Getpid(), rand.IntN(1<<16))}
	dbURL, redisURL := os.Getenv("TEST_DATABASE_URL"), os.Getenv("TEST_REDIS_URL")
	e.Source = "env"
	if dbURL == "" || redisURL == "" {
		var p provider = localProvider{}
		e.Source = "local"
		if dockerAnswers(ctx) {
			p, e.Source = dockerProvider{}, "docker"
		}
		var err error
		if dbURL == "" {
			if dbURL, err = p.postgres(ctx, e); err != nil {
				e.Close()
				return nil, fmt.Errorf("start postgres (%s): %w", e.Source, err)
			}
		}
		if redisURL == "" {
			if redisURL, err = p.redis(ctx, e); err != nil {
				e.Close()
				return nil, fmt.Errorf("start redis (%s): %w", e.Source, err)
			}
		}
	}
	e.adminURL, e.RedisURL = dbURL, redisURL

	e.template = e.prefix + "_template"
	if err := e.admin(ctx, "CREATE DATABASE "+e.template); err != nil {
		e.Close()
		return nil, err
	}
	e.stops = append(e.stops, func() {
		_ = e.admin(context.Background(), "DROP DATABASE IF EXISTS "+e.template+" WITH (FORCE)")
	})
	if _, _, err := postgres.Migrate(WithDatabase(e.adminURL, e.template), "up"); err != nil {
		e.Close()
		return nil, fmt.Errorf("migrate template database: %w", err)
	}
	if os.Getenv("TEST_PGBOUNCER") == "1" {
		dir := filepath.Join(os.TempDir(), fmt.Sprintf("segments-pgbouncer-%d", rand.Uint64()))
		e.stops = append(e.stops, func() { _ = os.RemoveAll(dir) })
		b, err := localserver.StartPgBouncer(ctx, localserver.PgBouncerOptions{Dir: dir, Server: e.adminURL, PoolSize: 40})
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("start pgbouncer: %w", err)
		}
		e.bouncer = b
		e.stops = append(e.stops, func() { _ = b.Stop() })
	}
	return e, nil
}

// Close drops what the Env created and stops the servers it started.
func (e *Env) Close() {
	for i := len(e.stops) - 1; i >= 0; i-- {
		e.stops[i]()
	}
	e.stops = nil
}

// NewDatabase creates a migrated database for tb alone, dropped when tb
// ends, and returns its URL.
func (e *Env) NewDatabase(tb testing.TB) string {
	tb.Helper()
	name := fmt.Sprintf("%s_%d", e.prefix, e.seq.Add(1))
	if err := e.admin(context.Background(), fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", name, e.template)); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := e.admin(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			tb.Errorf("drop test database: %v", err)
		}
	})
	return WithDatabase(e.adminURL, name)
}

// NewPool creates a database for tb alone and returns a pool on it, closed
// when tb ends.
//
// With TEST_PGBOUNCER=1 the pool goes through PgBouncer in transaction
// mode (DATABASE_EXEC_MODE cache_describe), and Direct gives its direct
// counterpart.
func (e *Env) NewPool(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	dbURL := e.NewDatabase(tb)
	pool, err := postgres.Open(context.Background(), dbURL, postgres.PoolConfig{MaxConns: 40})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	if e.bouncer == nil {
		return pool
	}
	u, err := url.Parse(dbURL)
	if err != nil {
		tb.Fatal(err)
	}
	pooled, err := postgres.Open(context.Background(), e.bouncer.URL(strings.TrimPrefix(u.Path, "/")),
		postgres.PoolConfig{MaxConns: 40, ExecMode: "cache_describe"})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pooled.Close)
	directPools.Store(pooled, pool)
	tb.Cleanup(func() { directPools.Delete(pooled) })
	return pooled
}

// admin runs one statement on the maintenance database.
func (e *Env) admin(ctx context.Context, sql string) error { return Exec(ctx, e.adminURL, sql) }

// Exec runs one statement on the database at dbURL, on a connection of
// its own.
func Exec(ctx context.Context, dbURL, sql string) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", redact(dbURL), err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// WithDatabase returns dbURL with its database name replaced.
func WithDatabase(dbURL, name string) string {
	u, err := url.Parse(dbURL)
	if err != nil {
		return dbURL
	}
	u.Path = "/" + name
	return u.String()
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return strings.SplitN(raw, "@", 2)[0]
	}
	return u.Redacted()
}

// provider starts servers for an Env and registers how to stop them.
type provider interface {
	postgres(ctx context.Context, e *Env) (string, error)
	redis(ctx context.Context, e *Env) (string, error)
}

// ServerDir returns a fresh directory path for a server's data, removed
// when tb ends. Unlike tb.TempDir, its parents are open to traverse, so a
// server running as another user (postgres, when tests run as root) can
// use it.
func ServerDir(tb testing.TB) string {
	tb.Helper()
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("segments-%s-%d", strings.NewReplacer("/", "-").Replace(tb.Name()), rand.Uint64()))
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// Eventually polls cond every 20 ms until it holds, and fails tb if it does
// not within timeout: for states that background work reaches in its own
// time (a task ran, a server answers), never for timing claims.
func Eventually(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
