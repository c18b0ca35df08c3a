package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/domain"
)

// UserRepo stores the user registry and memberships.
type UserRepo struct {
	pool  *pgxpool.Pool
	rec   Recorder
	reads *readBatcher
	// standby, if set, answers the reads that may be a little late.
	standby *Standby
}

// NewUserRepo returns a UserRepo on pool that reports membership changes
// to rec.
func NewUserRepo(pool *pgxpool.Pool, rec Recorder) *UserRepo {
	return &UserRepo{pool: pool, rec: rec, reads: &readBatcher{pool: pool}}
}

// WithStandby makes the repo read cache misses and ?at= from s's standby
// when it may (see Standby) and returns it.
func (r *UserRepo) WithStandby(s *Standby) *UserRepo {
	r.standby, r.reads.standby = s, s
	return r
}

// registryLock is the advisory lock that orders registrations against the
// creation of percent segments: registration takes it shared, creation
// exclusive. So every user either committed before a percent segment
// existed (and is in its rollout population, users.seq <= population_seq)
// or registered after and saw the segment (and got the bucket rule).
const registryLock int64 = 7346012917432108715

// A batch cannot pass one statement's result to the next, so the verdict
// on a membership change travels in the transaction-local setting
// segments.change: accepted; refused (a slug is unknown, or the expiry has
// passed when the change begins or at its instant); or unregistered (the
// user has no row yet). Every write of the change checks accepted; the
// registration in front of a change checks that it was not refused.
// Outside a change the setting is unset: a plain registration is never
// refused.
const (
	accepted = `current_setting('segments.change') = 'accepted'`
	refused  = `current_setting('segments.change', true) IS NOT DISTINCT FROM 'refused'`
)

// queueRegistration queues, on b, the registration of the ids not yet
// known: each new user gets the percent segments its buckets admit it to
// (history reason auto): outside layers, its segment bucket below the
// share; in a layer, its layer bucket in the segment's buckets (the
// buckets of a layer's segments are disjoint: one segment a layer at most). done receives how many users were new and how many
// memberships they got. Ids are inserted in order so that concurrent
// registrations with overlapping ids cannot deadlock.
func queueRegistration(b *pgx.Batch, ids []int64, done func(registered, granted int64)) {
	// The registry lock is taken in a statement of its own, before the
	// snapshot that reads the percent segments.
	//
	// register inserts users (no trigger) and their percent memberships:
	// memberships_history_insert writes their history (add, reason auto)
	// and queues the users for the read caches.
	const lock = `
		SELECT pg_advisory_xact_lock_shared($2)
		WHERE NOT (` + refused + `)
		  AND EXISTS (SELECT 1 FROM unnest($1::bigint[]) AS n(id)
		              WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = n.id))`
	const register = `
		WITH new AS (
			INSERT INTO users (id)
			SELECT DISTINCT n.id FROM unnest($1::bigint[]) AS n(id)
			WHERE NOT (` + refused + `)
			  AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = n.id) -- known users cost no insert attempt
			ORDER BY n.id
			ON CONFLICT (id) DO NOTHING
			RETURNING id
		), granted AS (
			INSERT INTO memberships (user_id, segment_id, layer_id, source)
			SELECT n.id, s.id, s.layer_id, 'auto'
			FROM new n
			CROSS JOIN (SELECT s.id, s.slug, s.auto_percent, s.layer_id, s.layer_buckets, l.slug AS layer_slug
			            FROM segments s LEFT JOIN layers l ON l.id = s.layer_id
			            WHERE s.auto_percent IS NOT NULL
			            FOR KEY SHARE OF s) AS s
			WHERE CASE WHEN s.layer_id IS NULL THEN segment_bucket(s.slug, n.id) < s.auto_percent * 100
			           ELSE s.layer_buckets @> layer_bucket(s.layer_slug, n.id) END
			ORDER BY n.id, s.id
			RETURNING 1
		)
		SELECT (SELECT count(*) FROM new), (SELECT count(*) FROM granted)`
	b.Queue(lock, ids, registryLock)
	b.Queue(setReasonSQL, domain.ReasonAuto)
	b.Queue(register, ids).QueryRow(func(row pgx.Row) error {
		var registered, granted int64
		if err := row.Scan(&registered, &granted); err != nil {
			return err
		}
		done(registered, granted)
		return nil
	})
}

// RegisterUsers registers the ids not yet known, giving them their percent
// segments, in one round trip, and returns how many users were new.
func (r *UserRepo) RegisterUsers(ctx context.Context, ids []int64) (int64, error) {
	var registered, granted int64
	b := &pgx.Batch{}
	queueRegistration(b, ids, func(n, g int64) { registered, granted = n, g })
	if err := on(ctx, r.pool).SendBatch(ctx, b).Close(); err != nil {
		return 0, fmt.Errorf("register %d users: %w", len(ids), dbError(err))
	}
	recordAfterCommit(ctx, r.rec, domain.OperationAdd, domain.ReasonAuto, granted)
	return registered, nil
}
