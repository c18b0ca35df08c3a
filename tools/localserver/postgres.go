package localserver

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// PostgresOptions configure StartPostgres.
type PostgresOptions struct {
	// Dir holds the cluster (Dir/data) and its log; it is created if
	// missing, and an existing cluster in it is reused.
	Dir string
	// Port to listen on at 127.0.0.1; zero picks a free one.
	Port int
	// User is the superuser's name; its password is ignored (trust auth on
	// loopback). Defaults to "postgres".
	User string
	// Throwaway turns off durability (fsync and friends) for speed: for
	// tests, whose data dies with them.
	Throwaway bool
	// Settings are extra server settings (name → value).
	Settings map[string]string
}

// Postgres is a running PostgreSQL server.
type Postgres struct {
	proc *process
	port int
	user string
}

// StartPostgres initializes a cluster in o.Dir if there is none and starts
// a server on it. It returns an error wrapping ErrDirUnreachable if, run
// as root, the postgres user cannot reach o.Dir.
func StartPostgres(ctx context.Context, o PostgresOptions) (*Postgres, error) {
	if o.User == "" {
		o.User = "postgres"
	}
	initdb, err := FindBinary("initdb")
	if err != nil {
		return nil, err
	}
	postgresBin := filepath.Join(filepath.Dir(initdb), "postgres")
	acct, err := postgresAccount()
	if err != nil {
		return nil, err
	}
	if err := acct.prepareDir(o.Dir); err != nil {
		return nil, err
	}
	data := filepath.Join(o.Dir, "data")
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		cmd := acct.command(initdb, "-D", data, "-U", o.User, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-instructions")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("initdb: %w\n%s", err, out)
		}
	}

	args := []string{"-D", data, "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="}
	if o.Throwaway {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	for k, v := range o.Settings {
		args = append(args, "-c", k+"="+v)
	}
	start := func(port int) (*process, error) {
		cmd := acct.command(postgresBin, append([]string{"-p", strconv.Itoa(port)}, args...)...)
		// SIGINT is PostgreSQL's fast shutdown.
		return startProcess(cmd, filepath.Join(o.Dir, "postgres.log"), syscall.SIGINT)
	}
	ready := func(ctx context.Context, port int) error {
		conn, err := pgconn.Connect(ctx, (&Postgres{port: port, user: o.User}).URL("postgres"))
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	}
	proc, port, err := startServer(ctx, "PostgreSQL", o.Port, start, ready)
	if err != nil {
		return nil, err
	}
	return &Postgres{proc: proc, port: port, user: o.User}, nil
}

// URL returns a connection URL for database db.
func (p *Postgres) URL(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(p.user),
		Host:     "127.0.0.1:" + strconv.Itoa(p.port),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Port returns the port the server listens on.
func (p *Postgres) Port() int { return p.port }

// Stop shuts the server down cleanly (a fast shutdown) and waits for it.
func (p *Postgres) Stop() error { return p.proc.stop() }

// StartStandby makes a streaming standby of primary in dir (pg_basebackup
// with -R: it follows primary from the position it was copied at) and
// starts it, as primary's user, hot (it answers reads).
func StartStandby(ctx context.Context, primary *Postgres, dir string) (*Postgres, error) {
	basebackup, err := FindBinary("pg_basebackup")
	if err != nil {
		return nil, err
	}
	acct, err := postgresAccount()
	if err != nil {
		return nil, err
	}
	if err := acct.prepareDir(dir); err != nil {
		return nil, err
	}
	cmd := acct.command(basebackup, "-h", "127.0.0.1", "-p", strconv.Itoa(primary.port), "-U", primary.user,
		"-D", filepath.Join(dir, "data"), "-R", "-X", "stream", "-c", "fast")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pg_basebackup: %w\n%s", err, out)
	}
	return StartPostgres(ctx, PostgresOptions{Dir: dir, User: primary.user, Throwaway: true})
}

// Kill ends the server at once (SIGKILL), as a crash would, and waits for
// it.
func (p *Postgres) Kill() error {
	if p.proc.exited() {
		return nil
	}
	_ = p.proc.cmd.Process.Kill()
	<-p.proc.done
	return nil
}
