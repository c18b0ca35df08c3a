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
// a server on it.
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

	port := o.Port
	for attempt := 0; ; attempt++ {
		if o.Port == 0 {
			if port, err = FreePort(); err != nil {
				return nil, err
			}
		} else if !PortFree(port) {
			return nil, fmt.Errorf("port %d on 127.0.0.1 is taken; is another PostgreSQL running?", port)
		}
		args := []string{"-D", data, "-p", strconv.Itoa(port),
			"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="}
		if o.Throwaway {
			args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
		}
		for k, v := range o.Settings {
			args = append(args, "-c", k+"="+v)
		}
		// SIGINT is PostgreSQL's fast shutdown.
		proc, err := startProcess(acct.command(postgresBin, args...), filepath.Join(o.Dir, "postgres.log"), syscall.SIGINT)
		if err != nil {
			return nil, err
		}
		pg := &Postgres{proc: proc, port: port, user: o.User}
		err = proc.waitReady(ctx, "postgres", func(ctx context.Context) error {
			conn, err := pgconn.Connect(ctx, pg.URL("postgres"))
			if err != nil {
				return err
			}
			return conn.Close(ctx)
		})
		if err == nil {
			return pg, nil
		}
		// Another process may have taken the free port first: try another.
		if o.Port != 0 || attempt == 2 {
			return nil, err
		}
	}
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
