package postgres

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/aftercommit"
	"github.com/segments-service/segments/internal/domain"
)

// dbtx is what a store runs its statements on: the pool, or the
// transaction of a request sent with an Idempotency-Key.
type dbtx interface {
	Begin(ctx context.Context) (pgx.Tx, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

type requestTxKey struct{}

// on returns the request's transaction if ctx carries one (see
// IdempotencyRepo.Begin), else pool: a store's statements join the
// transaction, and its own transactions become savepoints in it.
func on(ctx context.Context, pool *pgxpool.Pool) dbtx {
	if tx, ok := ctx.Value(requestTxKey{}).(pgx.Tx); ok {
		return tx
	}
	return pool
}

// inRequestTx says whether ctx carries a request's transaction.
func inRequestTx(ctx context.Context) bool {
	_, ok := ctx.Value(requestTxKey{}).(pgx.Tx)
	return ok
}

// IdempotencyRepo stores the responses of requests sent with an
// Idempotency-Key, in the transaction of their effects.
type IdempotencyRepo struct {
	pool *pgxpool.Pool
}

// NewIdempotencyRepo returns an IdempotencyRepo on pool.
func NewIdempotencyRepo(pool *pgxpool.Pool) *IdempotencyRepo {
	return &IdempotencyRepo{pool: pool}
}

// Attempt is a keyed request's transaction.
type Attempt struct {
	conn        *pgxpool.Conn
	tx          pgx.Tx
	queue       *aftercommit.Queue
	caller, key string
	done        bool
}

// Begin opens the transaction a request with caller's key runs in and
// claims the key for it, in one round trip: BEGIN, then a
// transaction-scoped advisory lock on the pair, waited for at most a
// millisecond (domain.ErrKeyInUse if another transaction holds it). The
// returned context carries the transaction: store calls made with it join
// it, and work deferred with aftercommit runs only once Commit has
// committed. Whether the key has a stored response is found out at Commit
// (see there), not here: that saves a round trip on every first request.
func (r *IdempotencyRepo) Begin(ctx context.Context, caller, key string) (context.Context, domain.KeyedAttempt, error) {
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return ctx, nil, fmt.Errorf("begin keyed request: %w", dbError(err))
	}
	// The lock id is a hash of the pair, computed here so that no text of
	// the caller's goes into the statement (BEGIN's statements take no
	// parameters).
	h := sha256.Sum256([]byte(caller + "\x00" + key))
	claim := fmt.Sprintf(`BEGIN; SET LOCAL lock_timeout = 1; SELECT pg_advisory_xact_lock(%d); SET LOCAL lock_timeout = DEFAULT`,
		int64(binary.BigEndian.Uint64(h[:8])))
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{BeginQuery: claim})
	if err != nil {
		if !conn.Conn().IsClosed() {
			_, _ = conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
		}
		conn.Release()
		if pgCode(err) == lockNotAvailable {
			return ctx, nil, domain.ErrKeyInUse
		}
		return ctx, nil, fmt.Errorf("claim idempotency key: %w", dbError(err))
	}
	a := &Attempt{conn: conn, tx: tx, caller: caller, key: key}
	ctx, a.queue = aftercommit.With(context.WithValue(ctx, requestTxKey{}, tx))
	return ctx, a, nil
}

// Commit stores resp under the attempt's key and commits it with the
// request's effects, in one round trip; then it runs the work deferred
// until the commit. If the key has a stored response already (this is a
// retry, or reuses the key), the insert fails, the transaction rolls back
// with everything the request did, and Commit returns domain.ErrKeyUsed:
// the caller answers from the stored response. Of the other errors, only
// domain.ErrCommitUncertain (the connection died) leaves the outcome
// unknown.
func (a *Attempt) Commit(ctx context.Context, resp domain.StoredResponse) error {
	a.done = true
	defer a.conn.Release()
	headers, err := json.Marshal(resp.Header)
	if err != nil {
		_, _ = a.conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
		return err
	}
	const store = `
		INSERT INTO idempotency_keys (caller, key, fingerprint, method, path, status, headers, body)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`
	b := &pgx.Batch{}
	b.Queue(store, a.caller, a.key, resp.Fingerprint, resp.Method, resp.Path, resp.Status, json.RawMessage(headers), resp.Body)
	b.Queue("COMMIT")
	err = a.conn.SendBatch(ctx, b).Close()
	if err == nil {
		a.queue.Run()
		return nil
	}
	if pgCode(err) == "" {
		return fmt.Errorf("commit keyed request: %w: %w", domain.ErrCommitUncertain, dbError(err))
	}
	// Refused by the server: the pipeline stopped at the error, before
	// COMMIT; the transaction is aborted and is rolled back here.
	if a.conn.Conn().PgConn().TxStatus() != 'I' {
		_, _ = a.conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
	}
	if pgCode(err) == uniqueViolation {
		return domain.ErrKeyUsed
	}
	return fmt.Errorf("store the response of key %q: %w", a.key, dbError(err))
}

// Rollback undoes the attempt and drops the deferred work. It does
// nothing after Commit.
func (a *Attempt) Rollback(ctx context.Context) {
	if a.done {
		return
	}
	a.done = true
	_ = a.tx.Rollback(context.WithoutCancel(ctx))
	a.conn.Release()
}

// Stored returns the response stored under caller's key, or nil.
func (r *IdempotencyRepo) Stored(ctx context.Context, caller, key string) (*domain.StoredResponse, error) {
	const q = `
		SELECT fingerprint, method, path, status, headers, body, created_at
		FROM idempotency_keys WHERE caller = $1 AND key = $2`
	var (
		s       domain.StoredResponse
		headers []byte
	)
	err := r.pool.QueryRow(ctx, q, caller, key).Scan(&s.Fingerprint, &s.Method, &s.Path, &s.Status, &headers, &s.Body, &s.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the response of key %q: %w", key, dbError(err))
	}
	if err := json.Unmarshal(headers, &s.Header); err != nil {
		return nil, err
	}
	return &s, nil
}

// SweepIdempotencyKeys deletes keys stored before olderThan, at most batch
// per transaction, until none is left; it returns how many it deleted.
func (r *IdempotencyRepo) SweepIdempotencyKeys(ctx context.Context, olderThan time.Time, batch int) (int64, error) {
	const sweep = `
		DELETE FROM idempotency_keys
		WHERE ctid = ANY (ARRAY(SELECT ctid FROM idempotency_keys
		                        WHERE created_at < $1
		                        ORDER BY created_at
		                        LIMIT $2))`
	var total int64
	for {
		tag, err := r.pool.Exec(ctx, sweep, olderThan, batch)
		if err != nil {
			return total, fmt.Errorf("sweep idempotency keys: %w", dbError(err))
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < int64(batch) {
			return total, nil
		}
		if err := ctx.Err(); err != nil {
			return total, err
		}
	}
}
