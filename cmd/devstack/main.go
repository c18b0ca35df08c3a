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

	"segments/internal/localserver"
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
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("usage: devstack [flags] -- command [args...]")
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}

	pg, err := localserver.StartPostgres(ctx, localserver.PostgresOptions{
		Dir: filepath.Join(abs, "postgres"), Port: *pgPort, User: "segments",
	})
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
