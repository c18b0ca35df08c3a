package localserver

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// PgBouncerOptions configure StartPgBouncer.
type PgBouncerOptions struct {
	// Dir holds its configuration and log; it is created if missing.
	Dir string
	// Server is a URL of the PostgreSQL server it pools (any database of
	// it, as its user).
	Server string
	// PoolSize is the server connections per database and user; zero: 20.
	PoolSize int
}

// PgBouncer is a running pgbouncer in transaction mode.
type PgBouncer struct {
	proc *process
	port int
	user string
}

// StartPgBouncer starts pgbouncer in front of o.Server in transaction
// pooling mode (a server connection per transaction), trusting every
// client as PostgreSQL's own test servers do. statement_timeout is an
// ignored startup parameter: through PgBouncer it belongs on the role.
func StartPgBouncer(ctx context.Context, o PgBouncerOptions) (*PgBouncer, error) {
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		for _, p := range []string{"/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer"} {
			if _, serr := os.Stat(p); serr == nil {
				bin, err = p, nil
				break
			}
		}
		if err != nil {
			return nil, fmt.Errorf("pgbouncer not found; install it (Debian: apt-get install pgbouncer)")
		}
	}
	if o.PoolSize == 0 {
		o.PoolSize = 20
	}
	server, err := pgconn.ParseConfig(o.Server)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	// pgbouncer refuses to run as root: as PostgreSQL, it runs as the
	// postgres account then.
	acct, err := postgresAccount()
	if err != nil {
		return nil, err
	}
	if err := acct.prepareDir(o.Dir); err != nil {
		return nil, err
	}
	users := filepath.Join(o.Dir, "users.txt")
	if err := os.WriteFile(users, []byte(strconv.Quote(server.User)+` ""`+"\n"), 0o644); err != nil {
		return nil, err
	}
	start := func(port int) (*process, error) {
		ini := filepath.Join(o.Dir, "pgbouncer.ini")
		text := fmt.Sprintf(`[databases]
* = host=%s port=%d

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = transaction
default_pool_size = %d
max_client_conn = 1000
ignore_startup_parameters = statement_timeout,extra_float_digits
server_reset_query =
`, server.Host, server.Port, port, users, o.PoolSize)
		if err := os.WriteFile(ini, []byte(text), 0o644); err != nil {
			return nil, err
		}
		if acct.cred != nil {
			_ = os.Chown(ini, acct.uid, acct.gid)
			_ = os.Chown(users, acct.uid, acct.gid)
		}
		return startProcess(acct.command(bin, ini), filepath.Join(o.Dir, "pgbouncer.log"), syscall.SIGINT)
	}
	ready := func(ctx context.Context, port int) error {
		conn, err := pgconn.Connect(ctx, (&PgBouncer{port: port, user: server.User}).URL("postgres"))
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	}
	proc, port, err := startServer(ctx, "PgBouncer", 0, start, ready)
	if err != nil {
		return nil, err
	}
	return &PgBouncer{proc: proc, port: port, user: server.User}, nil
}

// URL returns a connection URL for database db through the pooler.
func (b *PgBouncer) URL(db string) string {
	u := url.URL{Scheme: "postgres", User: url.User(b.user), Host: "127.0.0.1:" + strconv.Itoa(b.port), Path: "/" + db,
		RawQuery: "sslmode=disable"}
	return u.String()
}

// Stop shuts it down and waits for it.
func (b *PgBouncer) Stop() error { return b.proc.stop() }
