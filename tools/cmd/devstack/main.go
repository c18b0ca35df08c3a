// Command devstack runs a command against a local PostgreSQL and Redis for
// development, on machines without Docker. It starts both servers from the
// local binaries (data kept under -dir, loopback only), creates the
// database, runs the command with DATABASE_URL and REDIS_URL pointing at
// them, and stops the servers when the command ends.
//
//	devstack [-dir .data] [-pg-port 5432] [-redis-port 6379] -- command [args...]
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/jackc/pgx/v5"

	"github.com/segments-service/segments/tools/localserver"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		os.Exit(exit.ExitCode())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "devstack:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, log io.Writer) error {
	fs := flag.NewFlagSet("devstack", flag.ContinueOnError)
	dir := fs.String("dir", ".data", "directory for the servers' data and logs")
	pgPort := fs.Int("pg-port", 5432, "PostgreSQL port on 127.0.0.1")
	redisPort := fs.Int("redis-port", 6379, "Redis port on 127.0.0.1")
	reset := fs.Bool("reset", false, "delete the servers' data (an empty database next time) and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	if *reset {
		for _, d := range []string{abs, reachableDir(abs)} {
			if err := os.RemoveAll(d); err != nil {
				return err
			}
		}
		fmt.Fprintf(log, "devstack: deleted the data in %s\n", abs)
		return nil
	}
	if fs.NArg() == 0 {
		return errors.New("usage: devstack [flags] -- command [args...]")
	}
	if err := checkPorts(*pgPort, *redisPort); err != nil {
		return err
	}

	st, err := startStack(ctx, abs, *pgPort, *redisPort, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(log, "devstack: PostgreSQL on 127.0.0.1:%d (data in %s), Redis on %s (data in %s)\n",
		st.pg.Port(), st.pgDir, st.rd.Addr(), st.redisDir)
	err = runCommand(ctx, fs.Args(), st)
	if stopErr := st.stop(); stopErr != nil {
		fmt.Fprintf(log, "devstack: %v\n", stopErr)
	} else {
		resetHint := "make reset"
		if *dir != fs.Lookup("dir").DefValue {
			resetHint += " DATA_DIR=" + *dir
		}
		fmt.Fprintf(log, "devstack: stopped PostgreSQL and Redis; data kept in %s (%s deletes it)\n", st.dataDirs(), resetHint)
	}
	return err
}

// checkPorts fails, saying how to free the port or choose another, if a
// fixed port (not zero) is taken.
func checkPorts(pgPort, redisPort int) error {
	for _, s := range []struct {
		port                 int
		name, unit, makeFlag string
	}{
		{pgPort, "PostgreSQL", "postgresql", "PG_PORT"},
		{redisPort, "Redis", "redis-server", "REDIS_PORT"},
	} {
		if s.port == 0 || localserver.PortFree(s.port) {
			continue
		}
		// 5432 → 55432, as the README suggests, unless that is taken too.
		other := 50000 + s.port%10000
		if other == s.port || !localserver.PortFree(other) {
			other, _ = localserver.FreePort()
		}
		return fmt.Errorf("port %d on 127.0.0.1 is taken (another make run, or a packaged %s? `systemctl stop %s`; or choose another: make run %s=%d)",
			s.port, s.name, s.unit, s.makeFlag, other)
	}
	return nil
}

// stack is PostgreSQL, with a database "segments", and Redis, running.
type stack struct {
	pg              *localserver.Postgres
	rd              *localserver.Redis
	dir             string // the -dir directory, absolute
	pgDir, redisDir string // the servers' own directories
}

// startStack starts PostgreSQL, creates the database, and starts Redis,
// with their data under dir (PostgreSQL's under reachableDir(dir) if, run
// as root, the postgres user cannot reach dir).
func startStack(ctx context.Context, dir string, pgPort, redisPort int, log io.Writer) (*stack, error) {
	st := &stack{dir: dir, pgDir: filepath.Join(dir, "postgres"), redisDir: filepath.Join(dir, "redis")}
	if _, err := os.Stat(filepath.Join(reachableDir(dir), "postgres")); err == nil {
		st.pgDir = filepath.Join(reachableDir(dir), "postgres") // chosen on an earlier run
	}
	pgOptions := localserver.PostgresOptions{Dir: st.pgDir, Port: pgPort, User: "segments"}
	pg, err := localserver.StartPostgres(ctx, pgOptions)
	if errors.Is(err, localserver.ErrDirUnreachable) {
		pgOptions.Dir = filepath.Join(reachableDir(dir), "postgres")
		fmt.Fprintf(log, "devstack: the postgres user cannot reach %s (a parent directory is private); PostgreSQL's data goes to %s\n", st.pgDir, pgOptions.Dir)
		st.pgDir = pgOptions.Dir
		pg, err = localserver.StartPostgres(ctx, pgOptions)
	}
	if err != nil {
		return nil, err
	}
	if err := createDatabase(ctx, pg.URL("postgres"), "segments"); err != nil {
		_ = pg.Stop()
		return nil, err
	}
	rd, err := localserver.StartRedis(ctx, localserver.RedisOptions{Dir: st.redisDir, Port: redisPort, Persist: true})
	if err != nil {
		_ = pg.Stop()
		return nil, err
	}
	st.pg, st.rd = pg, rd
	return st, nil
}

// stop stops Redis, then PostgreSQL.
func (st *stack) stop() error {
	return errors.Join(st.rd.Stop(), st.pg.Stop())
}

// dataDirs names where the data is: dir, and PostgreSQL's directory if it
// is elsewhere.
func (st *stack) dataDirs() string {
	if filepath.Dir(st.pgDir) == st.dir {
		return st.dir
	}
	return st.dir + " and " + st.pgDir
}

// runCommand runs args with DATABASE_URL and REDIS_URL pointing at st. When
// ctx ends, it passes the stop on and waits for the command to finish.
func runCommand(ctx context.Context, args []string, st *stack) error {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "DATABASE_URL="+st.pg.URL("segments"), "REDIS_URL="+st.rd.URL(0))
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		return err
	case <-ctx.Done():
		_ = cmd.Process.Signal(syscall.SIGTERM)
		return <-exited
	}
}

// reachableDir is where PostgreSQL's data goes when the postgres user (as
// which it runs under root) cannot reach dir: a directory of its own under
// /var/tmp, which outlives reboots, named after dir.
func reachableDir(dir string) string {
	sum := sha256.Sum256([]byte(dir))
	return filepath.Join("/var/tmp", "segments-devstack-"+hex.EncodeToString(sum[:6]))
}

// createDatabase creates database name unless it exists.
func createDatabase(ctx context.Context, url, name string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var exists bool
	const q = `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`
	if err := conn.QueryRow(ctx, q, name).Scan(&exists); err != nil || exists {
		return err
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	return err
}
