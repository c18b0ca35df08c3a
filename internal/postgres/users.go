package postgres

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"segments/internal/domain"
)

// UserRepo stores the user registry and memberships.
type UserRepo struct {
	pool *pgxpool.Pool
	rec  Recorder
}

// NewUserRepo returns a UserRepo on pool that reports membership changes
// to rec.
func NewUserRepo(pool *pgxpool.Pool, rec Recorder) *UserRepo {
	return &UserRepo{pool: pool, rec: rec}
}

// registryLock is the advisory lock that orders registrations against the
// creation of percent segments: registration takes it shared, creation
// exclusive. So every user either committed before a percent segment
// existed (and is in its rollout population, users.seq <= population_seq)
// or registered after and saw the segment (and got the bucket rule).
const registryLock int64 = 7346012917432108715

// refused is true in a membership change that is refused: a slug is
// unknown, or the expiry has passed (when the change begins or at its
// instant). A batch cannot
// pass one statement's result to the next, so the verdict travels in the
// transaction-local setting segments.change and every write checks it.
// Outside a change the setting is unset and nothing is refused.
const refused = `current_setting('segments.change', true) IS NOT DISTINCT FROM 'refused'`

// queueRegistration queues, on b, the registration of the ids not yet
// known: each new user gets the percent segments its buckets admit it to
// (history reason auto). done receives how many users were new and how many
// memberships they got. Ids are inserted in order so that concurrent
// registrations with overlapping ids cannot deadlock.
func queueRegistration(b *pgx.Batch, ids []int64, done func(registered, granted int64)) {
	// The registry lock is taken in a statement of its own, before the
	// snapshot that reads the percent segments.
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
			ORDER BY n.id
			ON CONFLICT (id) DO NOTHING
			RETURNING id
		), granted AS (
			INSERT INTO memberships (user_id, segment_id, source)
			SELECT n.id, s.id, 'auto'
			FROM new n
			CROSS JOIN (SELECT id, slug, auto_percent FROM segments
			            WHERE auto_percent IS NOT NULL
			            FOR KEY SHARE) AS s
			WHERE segment_bucket(s.slug, n.id) < s.auto_percent * 100
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
	if err := r.pool.SendBatch(ctx, b).Close(); err != nil {
		return 0, fmt.Errorf("register %d users: %w", len(ids), err)
	}
	r.rec.MembershipsChanged(domain.OperationAdd, domain.ReasonAuto, granted)
	return registered, nil
}

// userSegmentsSQL reads a user's active memberships: one row per
// membership, one row of NULLs for a registered user with none, no row for
// an unknown user.
const userSegmentsSQL = `
	SELECT s.slug, m.added_at, m.expires_at, m.source
	FROM users u
	LEFT JOIN (memberships m JOIN segments s ON s.id = m.segment_id)
	       ON m.user_id = u.id AND (m.expires_at IS NULL OR m.expires_at > now())
	WHERE u.id = $1
	ORDER BY s.slug`

// UserSegments returns the user's active memberships sorted by slug. A
// known user costs one statement; an unknown one is registered (with its
// percent segments) and read again in a second round trip, in one
// transaction.
func (r *UserRepo) UserSegments(ctx context.Context, userID int64) ([]domain.Membership, error) {
	rows, _ := r.pool.Query(ctx, userSegmentsSQL, userID)
	ms, known, err := scanUserSegments(rows)
	if err != nil || known {
		if err != nil {
			err = fmt.Errorf("select segments of user %d: %w", userID, err)
		}
		return ms, err
	}

	var granted int64
	b := &pgx.Batch{}
	queueRegistration(b, []int64{userID}, func(_, g int64) { granted = g })
	b.Queue(userSegmentsSQL, userID).Query(func(rows pgx.Rows) error {
		ms, _, err = scanUserSegments(rows)
		return err
	})
	if err := r.pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("register and select user %d: %w", userID, err)
	}
	r.rec.MembershipsChanged(domain.OperationAdd, domain.ReasonAuto, granted)
	return ms, nil
}

// scanUserSegments reads the rows of userSegmentsSQL, and whether the user
// is registered.
func scanUserSegments(rows pgx.Rows) ([]domain.Membership, bool, error) {
	defer rows.Close()
	var (
		known bool
		ms    = []domain.Membership{}
	)
	for rows.Next() {
		known = true
		var (
			slug    *string
			addedAt *time.Time
			source  *domain.Source
			m       domain.Membership
		)
		if err := rows.Scan(&slug, &addedAt, &m.ExpiresAt, &source); err != nil {
			return nil, false, err
		}
		if slug == nil {
			continue
		}
		m.Slug, m.AddedAt, m.Source = *slug, *addedAt, *source
		ms = append(ms, m)
	}
	return ms, known, rows.Err()
}

// ChangeUserSegments applies c for one user atomically, registering the
// user if new. It returns domain.ErrNotFound listing every unknown slug,
// and domain.ErrInvalid if the expiry has passed at the change's instant;
// either way nothing is changed.
//
// The change is one batch: PostgreSQL runs it as one implicit transaction,
// in one network round trip.
//
//  1. Resolve every slug, locking the known segments against deletion, and
//     record the verdict: refused if any slug is unknown or the expiry has
//     passed.
//  2. Register the user if new, with its percent segments.
//  3. Lock the user, which serializes all writes for the user; then fix
//     the change's instant (one clock reading: the expiry check, added_at
//     and every removal use it) and refuse an expiry that has passed by
//     then. (A user registered in step 2 stays registered in that case,
//     as on any call that names it.)
//  4. Delete the user's expired memberships (history: ttl at their expiry)
//     and the removed ones (manual).
//  5. Insert the added ones; one the user holds keeps its added_at and
//     takes the new expiry.
//  6. Read the user's memberships as they stand at the instant.
func (r *UserRepo) ChangeUserSegments(ctx context.Context, c domain.SegmentChange) (domain.ChangeResult, error) {
	const resolve = `
		WITH known AS MATERIALIZED (
			SELECT slug FROM segments WHERE slug = ANY ($1::text[]) ORDER BY id FOR KEY SHARE
		), unknown AS (
			SELECT coalesce(array_agg(n.slug ORDER BY n.slug), '{}') AS slugs
			FROM (SELECT DISTINCT u.slug COLLATE "C" AS slug FROM unnest($1::text[]) AS u(slug)) AS n
			WHERE n.slug NOT IN (SELECT slug FROM known)
		)
		SELECT slugs, passed,
		       set_config('segments.change', CASE WHEN slugs = '{}' AND NOT passed THEN 'accepted' ELSE 'refused' END, true)
		FROM unknown, (SELECT coalesce($2::timestamptz <= clock_timestamp(), false) AS passed) AS e`
	const lockUser = `SELECT FROM users WHERE id = $1 FOR NO KEY UPDATE`
	const begin = `
		SELECT coalesce($1::timestamptz <= c.now, false),
		       set_config('segments.now', c.now::text, true),
		       set_config('segments.reason', 'manual', true),
		       set_config('segments.change', CASE WHEN $1::timestamptz <= c.now THEN 'refused'
		                                          ELSE current_setting('segments.change') END, true)
		FROM (SELECT clock_timestamp() AS now) AS c`
	const remove = `
		DELETE FROM memberships m
		USING segments s
		WHERE m.user_id = $1 AND s.id = m.segment_id AND NOT (` + refused + `)
		  AND (m.expires_at <= current_setting('segments.now')::timestamptz OR s.slug = ANY ($2::text[]))
		RETURNING s.slug, coalesce(m.expires_at <= current_setting('segments.now')::timestamptz, false)`
	const add = `
		INSERT INTO memberships AS m (user_id, segment_id, source, added_at, expires_at)
		SELECT $1, s.id, 'manual', current_setting('segments.now')::timestamptz, $3
		FROM segments s
		WHERE s.slug = ANY ($2::text[]) AND NOT (` + refused + `)
		ORDER BY s.id
		ON CONFLICT (user_id, segment_id) DO UPDATE
		   SET expires_at = EXCLUDED.expires_at
		 WHERE m.expires_at IS DISTINCT FROM EXCLUDED.expires_at
		RETURNING (SELECT slug FROM segments WHERE id = m.segment_id), xmax = 0`
	const read = `
		SELECT s.slug, m.added_at, m.expires_at, m.source
		FROM memberships m
		JOIN segments s ON s.id = m.segment_id
		WHERE m.user_id = $1
		  AND (m.expires_at IS NULL OR m.expires_at > current_setting('segments.now')::timestamptz)
		ORDER BY s.slug`

	res := domain.ChangeResult{UserID: c.UserID, Added: []string{}, Removed: []string{}, Segments: []domain.Membership{}}
	var (
		unknown                   []string
		passed                    bool
		granted, expired, created int64
	)
	b := &pgx.Batch{}
	b.Queue(resolve, slices.Concat(nonNil(c.Add), c.Remove), c.ExpiresAt).QueryRow(func(row pgx.Row) error {
		return row.Scan(&unknown, &passed, nil)
	})
	queueRegistration(b, []int64{c.UserID}, func(_, g int64) { granted = g })
	b.Queue(lockUser, c.UserID)
	b.Queue(begin, c.ExpiresAt).QueryRow(func(row pgx.Row) error {
		var late bool
		err := row.Scan(&late, nil, nil, nil)
		passed = passed || late
		return err
	})
	b.Queue(remove, c.UserID, nonNil(c.Remove)).Query(func(rows pgx.Rows) error {
		var slug string
		var wasExpired bool
		_, err := pgx.ForEachRow(rows, []any{&slug, &wasExpired}, func() error {
			if wasExpired {
				expired++
			} else {
				res.Removed = append(res.Removed, slug)
			}
			return nil
		})
		return err
	})
	b.Queue(add, c.UserID, nonNil(c.Add), c.ExpiresAt).Query(func(rows pgx.Rows) error {
		var slug string
		var inserted bool
		_, err := pgx.ForEachRow(rows, []any{&slug, &inserted}, func() error {
			res.Added = append(res.Added, slug)
			if inserted {
				created++
			}
			return nil
		})
		return err
	})
	b.Queue(read, c.UserID).Query(func(rows pgx.Rows) error {
		var err error
		res.Segments, err = pgx.CollectRows(rows, scanMembership)
		return err
	})
	if err := r.pool.SendBatch(ctx, b).Close(); err != nil {
		return res, fmt.Errorf("change segments of user %d: %w", c.UserID, err)
	}
	switch {
	case len(unknown) > 0:
		return domain.ChangeResult{}, domain.UnknownSlugs(unknown)
	case passed:
		return domain.ChangeResult{}, domain.Invalid("the expiry has passed",
			domain.FieldError{Field: "/expires_at", Message: "must be in the future"})
	}
	slices.Sort(res.Added)
	slices.Sort(res.Removed)
	r.rec.MembershipsChanged(domain.OperationAdd, domain.ReasonAuto, granted)
	r.rec.MembershipsChanged(domain.OperationRemove, domain.ReasonTTL, expired)
	r.rec.MembershipsChanged(domain.OperationAdd, domain.ReasonManual, created)
	r.rec.MembershipsChanged(domain.OperationRemove, domain.ReasonManual, int64(len(res.Removed)))
	return res, nil
}

// scanMembership reads (slug, added_at, expires_at, source).
func scanMembership(row pgx.CollectableRow) (domain.Membership, error) {
	var m domain.Membership
	err := row.Scan(&m.Slug, &m.AddedAt, &m.ExpiresAt, &m.Source)
	return m, err
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
