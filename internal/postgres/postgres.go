// Package postgres implements the service's stores on PostgreSQL with pgx.
//
// Every statement the service runs is here, as a const in the method that
// runs it; migrations hold only the schema and its triggers. Every exported
// store method is atomic: it runs in one transaction (often one statement,
// or one batch that PostgreSQL runs as one implicit transaction in one
// network round trip) and either applies fully or not at all. Driver errors
// are translated to domain errors here; nothing above this package sees pgx
// types.
//
// Reads are idempotent: one whose pooled connection turns out dead (the
// server restarted or failed over) is run once more on a fresh connection.
// An error that says the database cannot be reached or takes no writes
// carries domain.ErrUnavailable.
//
// The stores report every membership they add or remove, by history
// reason, to a Recorder once their transaction has committed: the counts
// come from what each statement returned, so they are exact.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/golang-migrate/migrate/v4"
	migratepgx "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/segments-service/segments/internal/aftercommit"
	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/migrations"
)

// Recorder counts memberships that appeared or disappeared, by history
// reason, for monitoring. It is called after the transaction committed.
type Recorder interface {
	MembershipsChanged(op domain.Operation, reason domain.Reason, n int64)
}

// NopRecorder counts nothing.
type NopRecorder struct{}

// MembershipsChanged does nothing.
func (NopRecorder) MembershipsChanged(domain.Operation, domain.Reason, int64) {}

// PoolConfig tunes the connection pool.
type PoolConfig struct {
	MaxConns int32
	// ExecMode is a key of ExecModes; "" is pgx's default (cache_statement).
	ExecMode string
	// StatementTimeout bounds every statement on the server; zero keeps the
	// server's setting.
	StatementTimeout time.Duration
}

// ExecModes name pgx's ways of sending a statement (DATABASE_EXEC_MODE).
// cache_statement prepares each statement once per connection (named
// prepared statements: not through PgBouncer in transaction mode before
// 1.21); the others prepare no named statement.
var ExecModes = map[string]pgx.QueryExecMode{
	"cache_statement": pgx.QueryExecModeCacheStatement,
	"cache_describe":  pgx.QueryExecModeCacheDescribe,
	"describe_exec":   pgx.QueryExecModeDescribeExec,
	"exec":            pgx.QueryExecModeExec,
	"simple_protocol": pgx.QueryExecModeSimpleProtocol,
}

// Open connects a pool to the database at url and checks that it answers.
func Open(ctx context.Context, url string, pc PoolConfig) (*pgxpool.Pool, error) {
	pool, err := OpenLazy(url, pc)
	if err != nil {
		return nil, err
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("ping database: %w", err)
	}
	return pool, nil
}

// OpenLazy returns a pool on the database at url that connects when it is
// first used.
func OpenLazy(url string, pc PoolConfig) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	if pc.MaxConns > 0 {
		cfg.MaxConns = pc.MaxConns
	}
	if pc.StatementTimeout > 0 {
		cfg.ConnConfig.RuntimeParams["statement_timeout"] = fmt.Sprint(pc.StatementTimeout.Milliseconds())
	}
	if pc.ExecMode != "" {
		mode, ok := ExecModes[pc.ExecMode]
		if !ok {
			return nil, fmt.Errorf("unknown exec mode %q", pc.ExecMode)
		}
		cfg.ConnConfig.DefaultQueryExecMode = mode
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("create pool: %w", err)
	}
	return pool, nil
}

// Ready checks that the database answers and accepts writes. A standby (in
// recovery) or a database set read-only answers reads but fails every
// write and every first read, which registers the user: it is not ready.
func Ready(ctx context.Context, pool *pgxpool.Pool) error {
	const q = `SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'`
	var recovery, readOnly bool
	if err := pool.QueryRow(ctx, q).Scan(&recovery, &readOnly); err != nil {
		return err
	}
	switch {
	case recovery:
		return &domain.Error{Kind: domain.ErrUnavailable, Message: "the database is a standby (in recovery) and accepts no writes"}
	case readOnly:
		return &domain.Error{Kind: domain.ErrUnavailable, Message: "the database is read-only (transaction_read_only is on) and accepts no writes"}
	}
	return nil
}

// Migrate moves the schema of the database at url. Direction is "up" (to the
// newest version) or "down" (one step back). It returns the version reached
// and whether the schema is marked dirty by a failed migration.
func Migrate(url, direction string) (version uint, dirty bool, err error) {
	m, err := newMigrator(url)
	if err != nil {
		return 0, false, err
	}
	defer m.Close()

	switch direction {
	case "up":
		err = m.Up()
	case "down":
		err = m.Steps(-1)
	default:
		return 0, false, fmt.Errorf("unknown migration direction %q (want up or down)", direction)
	}
	if err != nil && !errors.Is(err, migrate.ErrNoChange) {
		return 0, false, fmt.Errorf("migrate %s: %w", direction, err)
	}
	return schemaVersion(m)
}

// MigrationVersion reports the schema version of the database at url; zero
// means no migration has run.
func MigrationVersion(url string) (version uint, dirty bool, err error) {
	m, err := newMigrator(url)
	if err != nil {
		return 0, false, err
	}
	defer m.Close()
	return schemaVersion(m)
}

// schemaVersion reads m's version, treating "no migration yet" as zero.
func schemaVersion(m *migrate.Migrate) (uint, bool, error) {
	v, dirty, err := m.Version()
	if errors.Is(err, migrate.ErrNilVersion) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read schema version: %w", err)
	}
	return v, dirty, nil
}

func newMigrator(url string) (*migrate.Migrate, error) {
	cc, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	db := stdlib.OpenDB(*cc)
	driver, err := migratepgx.WithInstance(db, &migratepgx.Config{})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open migration driver: %w", err)
	}
	src, err := iofs.New(migrations.FS, ".")
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open embedded migrations: %w", err)
	}
	m, err := migrate.NewWithInstance("iofs", src, "pgx5", driver)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("create migrator: %w", err)
	}
	return m, nil
}

// SQLSTATE codes this package translates.
const (
	uniqueViolation  = "23505"
	lockNotAvailable = "55P03"
)

// dbError marks err with domain.ErrUnavailable when it says the database
// cannot be reached or cannot take writes now: the connection failed or
// was cut (the server shut down, crashed or is starting; SQLSTATE class 08,
// 57P01–57P03), it has no connection slot (53300), or it is a read-only
// standby (25006). Other errors pass through.
func dbError(err error) error {
	if err == nil || errors.Is(err, domain.ErrUnavailable) {
		return err
	}
	var (
		pgErr   *pgconn.PgError
		connErr *pgconn.ConnectError
	)
	switch {
	case errors.As(err, &pgErr):
		switch pgErr.Code {
		case "57P01", "57P02", "57P03", "53300", "25006":
		default:
			if !strings.HasPrefix(pgErr.Code, "08") {
				return err
			}
		}
	case errors.As(err, &connErr), pgconn.SafeToRetry(err),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed), errors.Is(err, syscall.ECONNRESET):
	default:
		return err
	}
	return fmt.Errorf("%w: %w", domain.ErrUnavailable, err)
}

// pgCode returns err's SQLSTATE, or "" if err did not come from the server.
func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// readAgain runs an idempotent read. If its connection turns out dead (a
// restart or failover cuts every pooled connection at once, and one used
// in the last second is not pinged before use), it drops the pool's
// connections and reads once more on a fresh one.
func readAgain[T any](ctx context.Context, pool *pgxpool.Pool, read func() (T, error)) (T, error) {
	v, err := read()
	if err == nil || !errors.Is(err, domain.ErrUnavailable) || ctx.Err() != nil || inRequestTx(ctx) {
		return v, err
	}
	pool.Reset()
	return read()
}

// withTx runs fn in a transaction that commits if fn returns nil and rolls
// back otherwise (a savepoint, inside a request's transaction).
func withTx(ctx context.Context, pool *pgxpool.Pool, fn func(pgx.Tx) error) error {
	return dbError(pgx.BeginFunc(ctx, on(ctx, pool), fn))
}

// recordAfterCommit reports changed memberships to rec once ctx's
// transaction has committed.
func recordAfterCommit(ctx context.Context, rec Recorder, op domain.Operation, reason domain.Reason, n int64) {
	aftercommit.Do(ctx, func() { rec.MembershipsChanged(op, reason, n) })
}

// setReasonSQL tells the history triggers why the transaction changes
// memberships (the schema refuses a change without a reason). Each
// transaction kind sets it in one place, through setReason or a batch.
const setReasonSQL = `SELECT set_config('segments.reason', $1, true)`

// setReason runs setReasonSQL in tx.
func setReason(ctx context.Context, tx pgx.Tx, reason domain.Reason) error {
	if _, err := tx.Exec(ctx, setReasonSQL, reason); err != nil {
		return fmt.Errorf("set history reason %s: %w", reason, err)
	}
	return nil
}
