package postgres

import (
	"context"
	"encoding/json"
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
	tx          pgx.Tx
	queue       *aftercommit.Queue
	caller, key string
}

// Begin opens the transaction a request with caller's key runs in and
// claims the key for it (a transaction-scoped advisory lock on the pair):
// domain.ErrKeyInUse if another transaction holds it. It returns the
// response stored under the key, if any; then the request must not run,
// and the attempt is to be rolled back. The returned context carries the
// transaction: store calls made with it join it, and work deferred with
// aftercommit runs only once Commit has committed.
func (r *IdempotencyRepo) Begin(ctx context.Context, caller, key string) (context.Context, domain.KeyedAttempt, *domain.StoredResponse, error) {
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return ctx, nil, nil, fmt.Errorf("begin keyed request: %w", dbError(err))
	}
	const claim = `SELECT pg_try_advisory_xact_lock(hashtextextended($1 || E'\n' || $2, 0))`
	const stored = `
		SELECT fingerprint, method, path, status, headers, body, created_at
		FROM idempotency_keys WHERE caller = $1 AND key = $2`
	var (
		claimed bool
		found   *domain.StoredResponse
	)
	b := &pgx.Batch{}
	b.Queue(claim, caller, key).QueryRow(func(row pgx.Row) error { return row.Scan(&claimed) })
	b.Queue(stored, caller, key).Query(func(rows pgx.Rows) error {
		defer rows.Close()
		for rows.Next() {
			var (
				s       domain.StoredResponse
				headers []byte
			)
			if err := rows.Scan(&s.Fingerprint, &s.Method, &s.Path, &s.Status, &headers, &s.Body, &s.CreatedAt); err != nil {
				return err
			}
			if err := json.Unmarshal(headers, &s.Header); err != nil {
				return err
			}
			found = &s
		}
		return rows.Err()
	})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return ctx, nil, nil, fmt.Errorf("claim idempotency key: %w", dbError(err))
	}
	if !claimed {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return ctx, nil, nil, domain.ErrKeyInUse
	}
	a := &Attempt{tx: tx, caller: caller, key: key}
	ctx, a.queue = aftercommit.With(context.WithValue(ctx, requestTxKey{}, tx))
	return ctx, a, found, nil
}

// Commit stores resp under the attempt's key and commits it with the
// request's effects; then it runs the work deferred until the commit. An
// error means the outcome is unknown if the commit itself failed (the
// connection was cut): a retry with the key finds out.
func (a *Attempt) Commit(ctx context.Context, resp domain.StoredResponse) error {
	headers, err := json.Marshal(resp.Header)
	if err != nil {
		return err
	}
	const store = `
		INSERT INTO idempotency_keys (caller, key, fingerprint, method, path, status, headers, body)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`
	if _, err := a.tx.Exec(ctx, store, a.caller, a.key, resp.Fingerprint, resp.Method, resp.Path, resp.Status, headers, resp.Body); err != nil {
		a.Rollback(ctx)
		return fmt.Errorf("store the response of key %q: %w", a.key, dbError(err))
	}
	if err := a.tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit keyed request: %w: %w", domain.ErrCommitUncertain, dbError(err))
	}
	a.queue.Run()
	return nil
}

// Rollback undoes the attempt and drops the deferred work; the key stays
// free. It does nothing after Commit.
func (a *Attempt) Rollback(ctx context.Context) {
	_ = a.tx.Rollback(context.WithoutCancel(ctx))
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
