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
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/segments-service/segments/internal/auth"
	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/tools/loadgen"
	"github.com/segments-service/segments/tools/localserver"
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
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.IntVar(&o.users, "users", 100000, "registered users (up to 10,000,000)")
	fs.IntVar(&o.segments, "segments", 20, "segments SEG_1..SEG_N")
	fs.IntVar(&o.perUser, "per-user", 5, "segments each user holds")
	fs.IntVar(&o.conns, "conns", 32, "connections of the closed-loop phases")
	fs.DurationVar(&o.duration, "duration", 20*time.Second, "length of each closed-loop phase (at most 2m)")
	fs.Float64Var(&o.rate, "rate", 1000, "reads per second (open loop) measured idle and during the rollout")
	fs.StringVar(&o.out, "out", "build/bench", "directory for the binary and the service's logs")
	fs.BoolVar(&o.auth, "auth", false, "turn authentication on (AUTH_JWT_SECRET); every request carries a bearer token")
	fs.BoolVar(&o.keys, "idempotency-keys", false, "send every change with an Idempotency-Key of its own")
	fs.StringVar(&o.only, "only", "", `"changes": run only the change phase (and pgbench on its SQL); "percent": only a percent segment's change from 10 to 50 %, with reads; "members": only a 100 % segment's member list as CSV; "events": only a 50 % rollout and the publishing of its events`)
	fs.BoolVar(&o.events, "events", true, "publish change events (EVENTS_ENABLED); false to measure without")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.users < 1 || o.users > 10_000_000 || o.perUser > o.segments || o.segments < 3 || o.duration <= 0 || o.duration > 2*time.Minute ||
		!slices.Contains([]string{"", "changes", "percent", "members", "events"}, o.only) {
		return errors.New("want 1 ≤ users ≤ 10,000,000, 3 ≤ segments, per-user ≤ segments, 0 < duration ≤ 2m, -only empty, changes, percent, members or events")
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
	log("seeded %d users × %d of %d segments in %s", o.users, o.perUser, o.segments, time.Since(start).Round(time.Millisecond))

	svc, err := startService(ctx, o, dbURL, redisURL, log)
	if err != nil {
		return err
	}
	defer svc.stop()

	rep := &report{opts: o}
	if err := phases(ctx, o, svc, pool, dbURL, rep, log); err != nil {
		return err
	}
	rep.print(stdout)
	return nil
}

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

// seed fills the database with COPY: users 1..N, segments SEG_1..SEG_S,
// and perUser memberships per user (history via the triggers, reason
// manual), a million users per transaction.
func seed(ctx context.Context, pool *pgxpool.Pool, o options) error {
	var slugs []string
	for i := 1; i <= o.segments; i++ {
		slugs = append(slugs, fmt.Sprintf("SEG_%d", i))
	}
	const qSegments = `INSERT INTO segments (slug) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING`
	if _, err := pool.Exec(ctx, qSegments, slugs); err != nil {
		return err
	}
	rows, _ := pool.Query(ctx, `SELECT id FROM segments WHERE slug = ANY ($1) ORDER BY id`, slugs)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return err
	}
	const chunk = 1_000_000
	for from := 1; from <= o.users; from += chunk {
		to := min(from+chunk-1, o.users)
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			i := int64(from - 1)
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"users"}, []string{"id"}, pgx.CopyFromFunc(func() ([]any, error) {
				if i >= int64(to) {
					return nil, nil
				}
				i++
				return []any{i}, nil
			})); err != nil {
				return fmt.Errorf("copy users: %w", err)
			}
			if _, err := tx.Exec(ctx, `SELECT set_config('segments.reason', 'manual', true)`); err != nil {
				return err
			}
			u, k := int64(from), 0
			perm := rand.Perm(o.segments)
			_, err := tx.CopyFrom(ctx, pgx.Identifier{"memberships"}, []string{"user_id", "segment_id"}, pgx.CopyFromFunc(func() ([]any, error) {
				if u > int64(to) {
					return nil, nil
				}
				row := []any{u, ids[perm[k]]}
				if k++; k == o.perUser {
					k, u = 0, u+1
					perm = rand.Perm(o.segments)
				}
				return row, nil
			}))
			if err != nil {
				return fmt.Errorf("copy memberships: %w", err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	// The seed is a bulk load, not changes anyone consumes: the event
	// relay starts after it.
	const skip = `UPDATE event_relay SET (at, id) = (SELECT at, id FROM membership_history ORDER BY at DESC, id DESC LIMIT 1)
	              WHERE EXISTS (SELECT FROM membership_history)`
	if _, err := pool.Exec(ctx, skip); err != nil {
		return err
	}
	_, err = pool.Exec(ctx, `VACUUM ANALYZE`)
	return err
}

// service is the API (with its read cache), a second API process with the
// cache off, and the worker, running.
type service struct {
	base, uncached    string
	redisURL          string
	api, apiOff, wrkr *exec.Cmd
}

func (s *service) stop() {
	for _, c := range []*exec.Cmd{s.api, s.apiOff, s.wrkr} {
		if c != nil && c.Process != nil {
			_ = c.Process.Signal(syscall.SIGTERM)
			_ = c.Wait()
		}
	}
}

func startService(ctx context.Context, o options, dbURL, redisURL string, log func(string, ...any)) (*service, error) {
	bin, err := filepath.Abs(filepath.Join(o.out, "segments"))
	if err != nil {
		return nil, err
	}
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./cmd/segments")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build: %w\n%s", err, out)
	}
	apiPort, err := localserver.FreePort()
	if err != nil {
		return nil, err
	}
	workerPort, err := localserver.FreePort()
	if err != nil {
		return nil, err
	}
	offPort, err := localserver.FreePort()
	if err != nil {
		return nil, err
	}
	env := append(os.Environ(),
		"DATABASE_URL="+dbURL, "REDIS_URL="+redisURL, "LOG_LEVEL=warn",
		"REPORT_SECRET=bench-secret-bench-secret-bench-secret", "WORKER_QUEUE=bench")
	if o.auth {
		env = append(env, "AUTH_JWT_SECRET="+benchJWTSecret)
	}
	start := func(cmd string, port int, extra ...string) (*exec.Cmd, error) {
		c := exec.Command(bin, cmd)
		c.Env = append(append(env, fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", port)), extra...)
		logFile, err := os.Create(filepath.Join(o.out, fmt.Sprintf("%s-%d.log", cmd, port)))
		if err != nil {
			return nil, err
		}
		c.Stdout, c.Stderr = logFile, logFile
		return c, c.Start()
	}
	s := &service{base: fmt.Sprintf("http://127.0.0.1:%d", apiPort), uncached: fmt.Sprintf("http://127.0.0.1:%d", offPort), redisURL: redisURL}
	// Room for every user: the cache library may evict before its bound.
	if s.api, err = start("serve", apiPort, fmt.Sprintf("CACHE_SIZE=%d", 2*o.users)); err != nil {
		return nil, err
	}
	if s.apiOff, err = start("serve", offPort, "CACHE_SIZE=0"); err != nil {
		s.stop()
		return nil, err
	}
	if s.wrkr, err = start("worker", workerPort, fmt.Sprintf("EVENTS_ENABLED=%t", o.events), "EVENTS_STREAM="+benchStream); err != nil {
		s.stop()
		return nil, err
	}
	for _, base := range []string{s.base, s.uncached, fmt.Sprintf("http://127.0.0.1:%d", workerPort)} {
		if err := waitReady(ctx, base); err != nil {
			s.stop()
			return nil, err
		}
	}
	log("service up: API pid %d at %s (cache on), API pid %d at %s (cache off), worker pid %d",
		s.api.Process.Pid, s.base, s.apiOff.Process.Pid, s.uncached, s.wrkr.Process.Pid)
	return s, nil
}

func waitReady(ctx context.Context, base string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not become ready", base)
}

// rssMB reads a process's resident set (VmRSS) or its peak (VmHWM), in MB.
func rssMB(pid int, field string) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// row is one line of the table.
type row struct {
	name   string
	res    loadgen.Result
	wall   time.Duration
	detail string
	// wrk holds a line measured with wrk instead of the Go load generator.
	wrk *wrkResult
}

type report struct {
	opts options
	rows []row
}

func (r *report) add(name string, res loadgen.Result, wall time.Duration, detail string) {
	r.rows = append(r.rows, row{name: name, res: res, wall: wall, detail: detail})
}

func (r *report) print(w io.Writer) {
	commit := "unknown"
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		commit = strings.TrimSpace(string(out))
	}
	fmt.Fprintf(w, "\nSegments benchmark, %s, commit %s, %d CPUs, %s\n", time.Now().UTC().Format(time.RFC3339), commit, runtime.NumCPU(), runtime.Version())
	fmt.Fprintf(w, "data: %d users × %d of %d segments; closed-loop phases: %d connections for %s\n\n",
		r.opts.users, r.opts.perUser, r.opts.segments, r.opts.conns, r.opts.duration)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\trequests\treq/s\tp50\tp99\terrors\twall\t")
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }
	for _, x := range r.rows {
		cols := []string{x.name, "", "", "", "", "", "", x.detail}
		if x.res.Requests > 0 {
			cols[1], cols[2] = strconv.Itoa(x.res.Requests), fmt.Sprintf("%.0f", x.res.Throughput())
			cols[3], cols[4], cols[5] = ms(x.res.Percentile(50)), ms(x.res.Percentile(99)), strconv.Itoa(x.res.Errors)
		}
		if w := x.wrk; w != nil {
			cols[1], cols[2] = strconv.Itoa(w.requests), fmt.Sprintf("%.0f", w.rate)
			cols[3], cols[4], cols[5] = ms(w.p50), ms(w.p99), strconv.Itoa(w.errors)
		}
		if x.wall > 0 {
			cols[6] = fmt.Sprintf("%.2f s", x.wall.Seconds())
		}
		fmt.Fprintln(tw, strings.Join(cols, "\t"))
	}
	tw.Flush()
}

// phases runs the load, in order, and fills the report.
func phases(ctx context.Context, o options, s *service, pool *pgxpool.Pool, dbURL string, rep *report, log func(string, ...any)) error {
	client := loadgen.NewClient(o.conns)
	if o.auth {
		client.Transport = loadgen.BearerTransport{Token: o.token, Base: client.Transport}
	}
	closed := loadgen.Config{Conns: o.conns, Duration: o.duration, Requests: 5_000_000}
	users := int64(o.users)
	switch o.only {
	case "changes":
		return changePhase(ctx, o, s, dbURL, rep, client, closed, log)
	case "percent":
		return percentPhase(ctx, o, s, pool, rep, client, log)
	case "members":
		return membersPhase(ctx, o, s, pool, rep, log)
	case "events":
		return eventsPhase(ctx, o, s, pool, rep, log)
	}

	// Each closed-loop phase runs right after pgbench sends the same SQL
	// with as many connections straight to PostgreSQL: the ceiling that
	// an HTTP round trip plus a database round trip cannot pass.
	log("phase: pgbench, the read's SQL")
	readCeiling, err := runPgbench(ctx, o, dbURL, "tools/cmd/bench/pgbench/user_segments.sql")
	if err != nil {
		return err
	}
	rep.add("pgbench: the read's SQL", loadgen.Result{}, 0, fmt.Sprintf("%.0f tps", readCeiling))
	// Reads go through wrk if it is installed: at tens of thousands of
	// requests per second the Go load generator would take a core of its
	// own from the service on a small machine.
	// The cache starts empty: the first run fills it as it goes, the
	// second shows it warm.
	for _, target := range []struct{ name, base string }{
		{"GET /users/{id}/segments, cache on, cold", s.base},
		{"GET /users/{id}/segments, cache on, warm", s.base},
		{"GET /users/{id}/segments, cache off", s.uncached},
	} {
		log("phase: %s (closed loop)", target.name)
		before, err := cacheLookups(target.base)
		if err != nil {
			return err
		}
		w, res, err := readLoad(ctx, o, client, closed, target.base, users)
		if err != nil {
			return err
		}
		after, err := cacheLookups(target.base)
		if err != nil {
			return err
		}
		rate := res.Throughput()
		if w != nil {
			rate = w.rate
		}
		detail := fmt.Sprintf("%.2f× pgbench", rate/readCeiling)
		if hits, all := after.hits-before.hits, after.all-before.all; hits > 0 {
			detail += fmt.Sprintf("; %.1f %% hits", 100*hits/all)
		}
		rep.rows = append(rep.rows, row{name: target.name, res: res, detail: detail, wrk: w})
	}

	if err := changePhase(ctx, o, s, dbURL, rep, client, closed, log); err != nil {
		return err
	}
	var res loadgen.Result

	openLoop := loadgen.Config{Conns: o.conns, Duration: 10 * time.Second, Requests: 5_000_000, Rate: o.rate}
	log("phase: reads at %.0f/s, idle", o.rate)
	res, err = loadgen.Run(ctx, client, openLoop, loadgen.UserSegments(s.base, users))
	if err != nil {
		return err
	}
	rep.add(fmt.Sprintf("GET at %.0f/s, idle", o.rate), res, 0, "")

	log("phase: 50 %% rollout over %d users, with reads at %.0f/s", o.users, o.rate)
	workerBefore := rssMB(s.wrkr.Process.Pid, "VmRSS")
	stopReads := backgroundReads(ctx, client, openLoop, s.base, users)
	time.Sleep(500 * time.Millisecond)
	slug := fmt.Sprintf("ROLLOUT_%d", time.Now().Unix())
	startRollout := time.Now()
	if err := postJSON(s.base+"/api/v1/segments", fmt.Sprintf(`{"slug":%q,"auto_percent":50}`, slug), nil); err != nil {
		stopReads()
		return err
	}
	status, assigned, err := waitRollout(ctx, pool, slug)
	rolloutWall := time.Since(startRollout)
	during := stopReads()
	if err != nil {
		return err
	}
	rep.add(fmt.Sprintf("50 %% rollout (%d of %d users)", assigned, o.users), loadgen.Result{}, rolloutWall,
		fmt.Sprintf("worker RSS %.0f → peak %.0f MB; %s", workerBefore, rssMB(s.wrkr.Process.Pid, "VmHWM"), status))
	rep.add(fmt.Sprintf("GET at %.0f/s, during rollout", o.rate), during, 0, "")
	if o.events {
		if err := eventsPublished(ctx, s, pool, rep); err != nil {
			return err
		}
	}

	log("phase: one user's month report")
	period := time.Now().UTC().Format("2006-01")
	var links []string
	for range 200 {
		var l struct{ URL string }
		body := fmt.Sprintf(`{"period":%q,"user_id":%d}`, period, 1+rand.Int64N(users))
		if err := postJSON(s.base+"/api/v1/reports/history", body, &l); err != nil {
			return err
		}
		links = append(links, s.base+l.URL) // links are relative
	}
	res, err = loadgen.Run(ctx, client, loadgen.Config{Conns: 8, Duration: o.duration, Requests: 20000},
		func(i int) (*http.Request, error) { return http.NewRequest(http.MethodGet, links[i%len(links)], nil) })
	if err != nil {
		return err
	}
	rep.add("user month report (8 conns)", res, 0, "")

	log("phase: all users' month report")
	var rowsInMonth int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM membership_history WHERE at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'`).Scan(&rowsInMonth); err != nil {
		return err
	}
	d, err := downloadReport(s, "/api/v1/reports/history", fmt.Sprintf(`{"period":%q}`, period))
	if err != nil {
		return fmt.Errorf("all-users report: %w", err)
	}
	rep.add(fmt.Sprintf("all-users month report (%d rows)", rowsInMonth), loadgen.Result{}, d.wall,
		fmt.Sprintf("%.1f MB of CSV; API peak RSS %.0f → %.0f MB", float64(d.bytes)/1e6, d.peakBefore, d.peakAfter))
	return nil
}

// download is what downloadReport measured.
type download struct {
	bytes                            int64
	wall                             time.Duration
	rssBefore, peakBefore, peakAfter float64 // the API's RSS and peak RSS, MB
}

// downloadReport asks linkPath for a report link with body, then
// downloads the report and measures the download and the API's memory.
func downloadReport(s *service, linkPath, body string) (download, error) {
	var l struct{ URL string }
	if err := postJSON(s.base+linkPath, body, &l); err != nil {
		return download{}, err
	}
	d := download{rssBefore: rssMB(s.api.Process.Pid, "VmRSS"), peakBefore: rssMB(s.api.Process.Pid, "VmHWM")}
	t0 := time.Now()
	resp, err := http.Get(s.base + l.URL)
	if err != nil {
		return d, err
	}
	d.bytes, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		return d, fmt.Errorf("status %d, %v", resp.StatusCode, err)
	}
	d.wall, d.peakAfter = time.Since(t0), rssMB(s.api.Process.Pid, "VmHWM")
	return d, nil
}

// changePhase runs pgbench on the change's SQL, then changes through the
// API (each with an Idempotency-Key of its own if o.keys).
func changePhase(ctx context.Context, o options, s *service, dbURL string, rep *report, client *http.Client, closed loadgen.Config, log func(string, ...any)) error {
	log("phase: pgbench, the change's SQL")
	changeCeiling, err := runPgbench(ctx, o, dbURL, "tools/cmd/bench/pgbench/change.sql")
	if err != nil {
		return err
	}
	rep.add("pgbench: the change's SQL", loadgen.Result{}, 0, fmt.Sprintf("%.0f tps", changeCeiling))
	log("phase: changes, add 2 remove 1 (closed loop)")
	next := loadgen.ChangeSegments(s.base, int64(o.users), o.segments)
	name := "POST /users/{id}/segments"
	if o.keys {
		next = loadgen.WithIdempotencyKeys(next, fmt.Sprintf("bench-%d", time.Now().UnixNano()))
		name += ", Idempotency-Key"
	}
	if o.auth {
		name += ", bearer token"
	}
	res, err := loadgen.Run(ctx, client, closed, next)
	if err != nil {
		return err
	}
	rep.add(name, res, 0, fmt.Sprintf("%.2f× pgbench", res.Throughput()/changeCeiling))
	return nil
}

// percentPhase creates a 10 % segment, waits for its rollout, then raises
// it to 50 % and times that rollout, with reads at o.rate measured idle and
// during it.
func percentPhase(ctx context.Context, o options, s *service, pool *pgxpool.Pool, rep *report, client *http.Client, log func(string, ...any)) error {
	users := int64(o.users)
	slug := fmt.Sprintf("RAMP_%d", time.Now().Unix())
	log("phase: a 10 %% segment over %d users", o.users)
	if _, err := createRolledOut(ctx, o, s, pool, rep, slug, 10); err != nil {
		return err
	}
	if err := settle(ctx, o, pool); err != nil {
		return err
	}

	openLoop := loadgen.Config{Conns: o.conns, Duration: 10 * time.Second, Requests: 5_000_000, Rate: o.rate}
	// The first reads open the HTTP connections and the API's database
	// connections (a new PostgreSQL session's first statements take
	// milliseconds): not counted.
	log("phase: reads at %.0f/s, warming up", o.rate)
	warm := openLoop
	warm.Duration = 3 * time.Second
	if _, err := loadgen.Run(ctx, client, warm, loadgen.UserSegments(s.base, users)); err != nil {
		return err
	}
	log("phase: reads at %.0f/s, idle", o.rate)
	idle, err := loadgen.Run(ctx, client, openLoop, loadgen.UserSegments(s.base, users))
	if err != nil {
		return err
	}
	rep.add(fmt.Sprintf("GET at %.0f/s, idle", o.rate), idle, 0, "")

	// The same reads with one core kept busy by a process that shares
	// nothing with the service: how much of the ratio below the machine's
	// scheduling alone accounts for.
	log("phase: reads at %.0f/s, one core busy", o.rate)
	busy, err := readsWithBusyCore(ctx, client, openLoop, s.base, users)
	if err != nil {
		return err
	}
	rep.add(fmt.Sprintf("GET at %.0f/s, one core busy", o.rate), busy, 0,
		fmt.Sprintf("p99 %.2f× idle", float64(busy.Percentile(99))/float64(idle.Percentile(99))))

	log("phase: 10 → 50 %%, with reads at %.0f/s", o.rate)
	stopReads := backgroundReads(ctx, client, openLoop, s.base, users)
	defer stopReads()
	time.Sleep(500 * time.Millisecond)
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, s.base+"/api/v1/segments/"+slug, strings.NewReader(`{"auto_percent":50}`))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/merge-patch+json")
	t1 := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("PATCH: %d", resp.StatusCode)
	}
	status, assigned, err := waitRollout(ctx, pool, slug)
	wall := time.Since(t1)
	during := stopReads()
	if err == nil && status != "done" {
		err = fmt.Errorf("the change's rollout ended %s", status)
	}
	if err != nil {
		return err
	}
	rep.add(fmt.Sprintf("10 → 50 %% (%d of %d users)", assigned, o.users), loadgen.Result{}, wall,
		fmt.Sprintf("read p99 %.2f× idle", float64(during.Percentile(99))/float64(idle.Percentile(99))))
	rep.add(fmt.Sprintf("GET at %.0f/s, during 10 → 50 %%", o.rate), during, 0, "")
	return nil
}

// settle lets the work of what came before finish, so that the idle reads
// after it are idle: the relay publishes the events still waiting (with
// o.events) and a checkpoint writes out the seed's and the rollout's pages.
func settle(ctx context.Context, o options, pool *pgxpool.Pool) error {
	if o.events {
		if err := waitPublished(ctx, pool); err != nil {
			return err
		}
	}
	_, err := pool.Exec(ctx, "CHECKPOINT")
	return err
}

// waitPublished waits until the relay has published every event history
// holds (10 minutes at most).
func waitPublished(ctx context.Context, pool *pgxpool.Pool) error {
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		waiting, err := postgres.UnpublishedEvents(ctx, pool)
		if err != nil || waiting == 0 {
			return err
		}
		if time.Since(start) > 10*time.Minute {
			return fmt.Errorf("%d events still unpublished after 10 minutes", waiting)
		}
	}
}

// readsWithBusyCore runs reads as cfg says while a shell loops without
// pause: one core busy with work that touches nothing the service uses.
func readsWithBusyCore(ctx context.Context, client *http.Client, cfg loadgen.Config, base string, users int64) (loadgen.Result, error) {
	spin := exec.CommandContext(ctx, "sh", "-c", "while :; do :; done")
	if err := spin.Start(); err != nil {
		return loadgen.Result{}, fmt.Errorf("start a busy loop: %w", err)
	}
	defer func() {
		_ = spin.Process.Kill()
		_ = spin.Wait()
	}()
	return loadgen.Run(ctx, client, cfg, loadgen.UserSegments(base, users))
}

// benchStream is the change event stream of the bench's worker.
const benchStream = "segments:changes"

// eventsPhase creates a 50 % segment and measures how long after its
// rollout ended its events were all in the stream (with o.events; without,
// just the rollout, to compare).
func eventsPhase(ctx context.Context, o options, s *service, pool *pgxpool.Pool, rep *report, log func(string, ...any)) error {
	log("phase: a 50 %% segment over %d users, its events published", o.users)
	if _, err := createRolledOut(ctx, o, s, pool, rep, fmt.Sprintf("EVENTS_%d", time.Now().Unix()), 50); err != nil || !o.events {
		return err
	}
	return eventsPublished(ctx, s, pool, rep)
}

// eventsPublished waits until the relay has published every event history
// holds (10 minutes at most) and reports how long that took from now, and
// the stream's length and memory.
func eventsPublished(ctx context.Context, s *service, pool *pgxpool.Pool, rep *report) error {
	start := time.Now()
	if err := waitPublished(ctx, pool); err != nil {
		return err
	}
	wall := time.Since(start)
	opt, err := redis.ParseURL(s.redisURL)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	n, err := rdb.XLen(ctx, benchStream).Result()
	if err != nil {
		return err
	}
	mem, err := rdb.MemoryUsage(ctx, benchStream, 0).Result()
	if err != nil {
		return err
	}
	rep.add("events published, after the rollout ended", loadgen.Result{}, wall,
		fmt.Sprintf("stream: %d entries, %.0f MB (%.0f B each)", n, float64(mem)/1e6, float64(mem)/float64(max(n, 1))))
	return nil
}

// createRolledOut creates a percent segment, waits until its rollout is
// done, reports how long that took and returns how many users it got.
func createRolledOut(ctx context.Context, o options, s *service, pool *pgxpool.Pool, rep *report, slug string, percent int) (int64, error) {
	t0 := time.Now()
	if err := postJSON(s.base+"/api/v1/segments", fmt.Sprintf(`{"slug":%q,"auto_percent":%d}`, slug, percent), nil); err != nil {
		return 0, err
	}
	status, assigned, err := waitRollout(ctx, pool, slug)
	if err == nil && status != "done" {
		err = fmt.Errorf("the %d %% rollout ended %s", percent, status)
	}
	if err != nil {
		return 0, err
	}
	rep.add(fmt.Sprintf("%d %% rollout (%d of %d users)", percent, assigned, o.users), loadgen.Result{}, time.Since(t0), "")
	return assigned, nil
}

// membersPhase gives a segment to every user (100 %) and downloads its
// member list as CSV three times, with the API's peak RSS before and after.
func membersPhase(ctx context.Context, o options, s *service, pool *pgxpool.Pool, rep *report, log func(string, ...any)) error {
	slug := fmt.Sprintf("EVERYONE_%d", time.Now().Unix())
	log("phase: a 100 %% segment over %d users", o.users)
	assigned, err := createRolledOut(ctx, o, s, pool, rep, slug, 100)
	if err != nil {
		return err
	}
	for i := range 3 {
		log("phase: the member list as CSV (%d)", i+1)
		d, err := downloadReport(s, "/api/v1/reports/members", fmt.Sprintf(`{"slug":%q}`, slug))
		if err != nil {
			return fmt.Errorf("members CSV: %w", err)
		}
		rep.add(fmt.Sprintf("members CSV (%d members)", assigned), loadgen.Result{}, d.wall,
			fmt.Sprintf("%.1f MB; API RSS %.0f MB, peak %.0f → %.0f MB", float64(d.bytes)/1e6, d.rssBefore, d.peakBefore, d.peakAfter))
	}
	return nil
}

// backgroundReads sends reads at cfg's rate until the returned function is
// called, which returns what they measured (once; later calls return the
// zero Result).
func backgroundReads(ctx context.Context, client *http.Client, cfg loadgen.Config, base string, users int64) func() loadgen.Result {
	reads := make(chan loadgen.Result, 1)
	rctx, cancel := context.WithCancel(ctx)
	go func() {
		cfg.Duration = 10 * time.Minute
		r, _ := loadgen.Run(rctx, client, cfg, loadgen.UserSegments(base, users))
		reads <- r
	}()
	var once sync.Once
	return func() loadgen.Result {
		var r loadgen.Result
		once.Do(func() { cancel(); r = <-reads })
		return r
	}
}

// waitRollout waits until slug's rollout is done or failed (10 minutes at
// most) and returns its status and assigned count. It watches the status
// column itself: GET /segments/{slug} counts the members, which on a large
// segment would load the machine being measured.
func waitRollout(ctx context.Context, pool *pgxpool.Pool, slug string) (string, int64, error) {
	start := time.Now()
	for {
		var (
			status   string
			assigned int64
		)
		const q = `SELECT rollout_status, rollout_assigned FROM segments WHERE slug = $1`
		if err := pool.QueryRow(ctx, q, slug).Scan(&status, &assigned); err != nil {
			return "", 0, err
		}
		if status == "done" || status == "failed" {
			return status, assigned, nil
		}
		if time.Since(start) > 10*time.Minute {
			return status, assigned, errors.New("the rollout did not finish in 10 minutes")
		}
		time.Sleep(20 * time.Millisecond)
	}
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

// benchJWTSecret signs the bench's tokens (with -auth).
const benchJWTSecret = "bench-jwt-secret-bench-jwt-secret-bench"

func postJSON(url, body string, out any) error {
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return err
	}
	return decodeResponse(resp, out)
}

// runPgbench runs a pgbench script (prepared statements, o.conns clients,
// o.duration) against dbURL and returns its transactions per second.
func runPgbench(ctx context.Context, o options, dbURL, script string) (float64, error) {
	bin, err := localserver.FindBinary("pgbench")
	if err != nil {
		return 0, err
	}
	cmd := exec.CommandContext(ctx, bin, "-n", "-M", "prepared", "-c", strconv.Itoa(o.conns), "-j", "2",
		"-T", strconv.Itoa(max(1, int(o.duration.Seconds()))), "-f", script, dbURL)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("pgbench %s: %w\n%s", script, err, out)
	}
	for line := range strings.Lines(string(out)) {
		if rest, ok := strings.CutPrefix(line, "tps = "); ok {
			tps, _, _ := strings.Cut(rest, " ")
			return strconv.ParseFloat(tps, 64)
		}
	}
	return 0, fmt.Errorf("pgbench %s printed no tps:\n%s", script, out)
}

func decodeResponse(resp *http.Response, out any) error {
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %d %s", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, b)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

// wrkResult is what wrk reported.
type wrkResult struct {
	requests, errors int
	rate             float64
	p50, p99         time.Duration
}

// readLoad sends reads of random users 1..users to base for o.duration:
// with wrk (tools/cmd/bench/wrk/user_segments.lua) if it is on PATH, else with the Go
// load generator.
func readLoad(ctx context.Context, o options, client *http.Client, cfg loadgen.Config, base string, users int64) (*wrkResult, loadgen.Result, error) {
	bin, err := exec.LookPath("wrk")
	if err != nil {
		res, err := loadgen.Run(ctx, client, cfg, loadgen.UserSegments(base, users))
		return nil, res, err
	}
	args := []string{"-t2", fmt.Sprintf("-c%d", o.conns), fmt.Sprintf("-d%ds", max(1, int(o.duration.Seconds()))), "--latency"}
	if o.auth {
		args = append(args, "-H", "Authorization: Bearer "+o.token)
	}
	args = append(args, "-s", "tools/cmd/bench/wrk/user_segments.lua", base, "--", strconv.FormatInt(users, 10))
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return nil, loadgen.Result{}, fmt.Errorf("wrk: %w\n%s", err, out)
	}
	w, err := parseWrk(string(out))
	return &w, loadgen.Result{}, err
}

// parseWrk reads wrk's summary (run with --latency).
func parseWrk(out string) (wrkResult, error) {
	var w wrkResult
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "Requests/sec:":
			w.rate, _ = strconv.ParseFloat(f[1], 64)
		case len(f) >= 2 && f[1] == "requests" && len(f) > 2 && f[2] == "in":
			w.requests, _ = strconv.Atoi(f[0])
		case len(f) == 2 && f[0] == "50%":
			w.p50, _ = time.ParseDuration(f[1])
		case len(f) == 2 && f[0] == "99%":
			w.p99, _ = time.ParseDuration(f[1])
		case len(f) == 5 && f[0] == "Non-2xx":
			n, _ := strconv.Atoi(f[4])
			w.errors += n
		case len(f) > 1 && f[0] == "Socket" && f[1] == "errors:":
			for i := 2; i+1 < len(f); i += 2 {
				n, _ := strconv.Atoi(strings.TrimSuffix(f[i+1], ","))
				w.errors += n
			}
		}
	}
	if w.rate == 0 || w.requests == 0 {
		return w, fmt.Errorf("wrk printed no figures:\n%s", out)
	}
	return w, nil
}

// lookups counts the read cache's lookups of one API process.
type lookups struct{ hits, all float64 }

// cacheLookups reads segments_cache_lookups_total from base's metrics.
func cacheLookups(base string) (lookups, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return lookups{}, err
	}
	defer resp.Body.Close()
	var l lookups
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "segments_cache_lookups_total{")
		if !ok {
			continue
		}
		labels, value, _ := strings.Cut(rest, "} ")
		n, _ := strconv.ParseFloat(value, 64)
		l.all += n
		if labels == `result="hit"` {
			l.hits += n
		}
	}
	return l, sc.Err()
}
