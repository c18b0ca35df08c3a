// Command bench measures the service end to end on this machine and prints
// one table: it starts PostgreSQL and Redis the way the tests do (or uses
// BENCH_DATABASE_URL / BENCH_REDIS_URL), seeds users, segments, memberships
// and their history with COPY, starts the service binary (API and worker as
// separate processes, built with -trimpath) and sends bounded load to it on
// loopback. See BENCHMARKS.md.
//
//	go run ./tools/cmd/bench [-users 100000] [-duration 20s] …
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/segments-service/segments/internal/auth"
	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/tools/loadgen"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type options struct {
	users, segments, perUser int
	conns                    int
	duration                 time.Duration
	rate                     float64
	out                      string
	// auth turns authentication on; every request carries a token.
	auth bool
	// keys sends every change with an Idempotency-Key of its own.
	keys bool
	// only, if set, runs just one phase (see the flag).
	only string
	// events runs the worker with change events on (EVENTS_ENABLED).
	events bool
	// token is the bearer token requests carry when auth is on.
	token string
	// cacheBytes is the cached API's CACHE_MAX_BYTES.
	cacheBytes int64
}

// closedLoop is the load of the closed-loop phases: o.conns connections,
// each sending its next request when the last is answered, for o.duration.
func (o options) closedLoop() loadgen.Config {
	return loadgen.Config{Conns: o.conns, Duration: o.duration, Requests: 5_000_000}
}

// openLoop is reads at o.rate per second for 10 seconds.
func (o options) openLoop() loadgen.Config {
	return loadgen.Config{Conns: o.conns, Duration: 10 * time.Second, Requests: 5_000_000, Rate: o.rate}
}

// seconds is o.duration in whole seconds, at least 1: pgbench's and wrk's
// duration.
func (o options) seconds() int { return max(1, int(o.duration.Seconds())) }

// benchJWTSecret signs the bench's tokens (with -auth).
const benchJWTSecret = "bench-jwt-secret-bench-jwt-secret-bench"

// run parses the flags, starts the servers, seeds them, starts the service,
// runs the phases and prints the table.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.IntVar(&o.users, "users", 100000, "registered users (up to 10,000,000)")
	fs.Int64Var(&o.cacheBytes, "cache-bytes", 256<<20, "CACHE_MAX_BYTES of the API with the cache on (the default's)")
	fs.IntVar(&o.segments, "segments", 20, "segments SEG_1..SEG_N")
	fs.IntVar(&o.perUser, "per-user", 5, "segments each user holds")
	fs.IntVar(&o.conns, "conns", 32, "connections of the closed-loop phases")
	fs.DurationVar(&o.duration, "duration", 20*time.Second, "length of each closed-loop phase (at most 2m)")
	fs.Float64Var(&o.rate, "rate", 1000, "reads per second (open loop) measured idle and during the rollout")
	fs.StringVar(&o.out, "out", "build/bench", "directory for the binary and the service's logs")
	fs.BoolVar(&o.auth, "auth", false, "turn authentication on (AUTH_JWT_SECRET); every request carries a bearer token")
	fs.BoolVar(&o.keys, "idempotency-keys", false, "send every change with an Idempotency-Key of its own")
	fs.StringVar(&o.only, "only", "", `"changes": run only the change phase (and pgbench on its SQL); "percent": only a percent segment's change from 10 to 50 %, with reads; "members": only a 100 % segment's member list as CSV; "events": only a 50 % rollout and the publishing of its events; "exports": only the reads idle and during 8 slow report downloads and 40 HEADs in a loop; "population": only reads of uniform and Zipf-skewed users (cache on and off, against pgbench), the segment listing, and a 10 % rollout against an INSERT … SELECT of the same rows; "imports": only a 10,000,000-id list's upload and sort, and an import adding every user (up to 1,000,000) against an INSERT … SELECT of the same rows, with reads idle, with one core busy and during it; "layers": only 50 % rollouts outside layers and in a layer, interleaved`)
	fs.BoolVar(&o.events, "events", true, "publish change events (EVENTS_ENABLED); false to measure without")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.users < 1 || o.users > 10_000_000 || o.perUser > o.segments || o.segments < 3 || o.duration <= 0 || o.duration > 2*time.Minute ||
		!slices.Contains([]string{"", "changes", "percent", "members", "events", "exports", "population", "imports", "layers"}, o.only) {
		return errors.New("want 1 ≤ users ≤ 10,000,000, 3 ≤ segments, per-user ≤ segments, 0 < duration ≤ 2m, -only empty, changes, percent, members, events, exports, population, imports or layers")
	}
	if o.auth {
		token, err := auth.Mint([]byte(benchJWTSecret), "bench", []string{auth.ScopeRead, auth.ScopeWrite, auth.ScopeAdmin}, 24*time.Hour, "", "", time.Now())
		if err != nil {
			return err
		}
		o.token = token
		http.DefaultClient.Transport = loadgen.BearerTransport{Token: token, Base: http.DefaultTransport}
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	log := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...) }

	dbURL, redisURL, cleanup, err := servers(ctx, log)
	defer cleanup()
	if err != nil {
		return err
	}
	if _, _, err := postgres.Migrate(dbURL, "up"); err != nil {
		return err
	}
	pool, err := postgres.Open(ctx, dbURL, postgres.PoolConfig{MaxConns: 4})
	if err != nil {
		return err
	}
	defer pool.Close()

	start := time.Now()
	if err := seed(ctx, pool, o); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	seedWall := time.Since(start)
	log("seeded %d users × %d of %d segments in %s", o.users, o.perUser, o.segments, seedWall.Round(time.Millisecond))
	sizes, err := databaseSizes(ctx, pool)
	if err != nil {
		return err
	}
	rep := &report{opts: o}
	rep.add(fmt.Sprintf("seeded %d users × %d of %d segments (COPY)", o.users, o.perUser, o.segments), loadgen.Result{}, seedWall, sizes)

	svc, err := startService(ctx, o, dbURL, redisURL, log)
	if err != nil {
		return err
	}
	defer svc.stop()

	client := loadgen.NewClient(o.conns)
	if o.auth {
		client.Transport = loadgen.BearerTransport{Token: o.token, Base: client.Transport}
	}
	b := &bench{o: o, svc: svc, pool: pool, dbURL: dbURL, client: client, rep: rep, log: log}
	if err := b.phases(ctx); err != nil {
		return err
	}
	b.rep.print(stdout)
	return nil
}
