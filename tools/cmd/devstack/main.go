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

	pgDir := filepath.Join(abs, "postgres")
	if _, err := os.Stat(filepath.Join(reachableDir(abs), "postgres")); err == nil {
		pgDir = filepath.Join(reachableDir(abs), "postgres") // chosen on an earlier run
	}
	pgOptions := localserver.PostgresOptions{Dir: pgDir, Port: *pgPort, User: "segments"}
	pg, err := localserver.StartPostgres(ctx, pgOptions)
	if errors.Is(err, localserver.ErrDirUnreachable) {
		pgOptions.Dir = filepath.Join(reachableDir(abs), "postgres")
		fmt.Fprintf(log, "devstack: the postgres user cannot reach %s (a parent directory is private); PostgreSQL's data goes to %s\n", pgDir, pgOptions.Dir)
		pg, err = localserver.StartPostgres(ctx, pgOptions)
	}
	if err != nil {
		return err
	}
	defer pg.Stop()
	if err := createDatabase(ctx, pg.URL("postgres"), "segments"); err != nil {
		return err
	}
	rd, err := localserver.StartRedis(ctx, localserver.RedisOptions{
		Dir: filepath.Join(abs, "redis"), Port: *redisPort, Persist: true,
	})
	if err != nil {
		return err
	}
	defer rd.Stop()
	fmt.Fprintf(log, "devstack: postgres on 127.0.0.1:%d, redis on %s, data in %s\n", pg.Port(), rd.Addr(), abs)

	cmd := exec.Command(fs.Arg(0), fs.Args()[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "DATABASE_URL="+pg.URL("segments"), "REDIS_URL="+rd.URL(0))
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err = <-exited:
	case <-ctx.Done():
		// Pass the stop on and wait for the command to finish cleanly.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		err = <-exited
	}
	return err
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
