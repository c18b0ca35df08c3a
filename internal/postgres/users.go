package postgres

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/domain"
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
	if err := on(ctx, r.pool).SendBatch(ctx, b).Close(); err != nil {
		return 0, fmt.Errorf("register %d users: %w", len(ids), dbError(err))
	}
	recordAfterCommit(ctx, r.rec, domain.OperationAdd, domain.ReasonAuto, granted)
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
	return readAgain(ctx, r.pool, func() ([]domain.Membership, error) { return r.userSegments(ctx, userID) })
}

func (r *UserRepo) userSegments(ctx context.Context, userID int64) ([]domain.Membership, error) {
	rows, _ := on(ctx, r.pool).Query(ctx, userSegmentsSQL, userID)
	ms, known, err := scanUserSegments(rows)
	if err != nil {
		return nil, fmt.Errorf("select segments of user %d: %w", userID, dbError(err))
	}
	if known {
		return ms, nil
	}

	var granted int64
	b := &pgx.Batch{}
	queueRegistration(b, []int64{userID}, func(_, g int64) { granted = g })
	b.Queue(userSegmentsSQL, userID).Query(func(rows pgx.Rows) error {
		ms, _, err = scanUserSegments(rows)
		return err
	})
	if err := on(ctx, r.pool).SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("register and select user %d: %w", userID, dbError(err))
	}
	recordAfterCommit(ctx, r.rec, domain.OperationAdd, domain.ReasonAuto, granted)
	return ms, nil
}

// scanUserSegments reads the rows of userSegmentsSQL, and whether the user
// is registered. It scans into pgtype values rather than pointers: this is
// the read every cache miss makes, and pointer targets cost an allocation
// and a slower scan plan per column.
func scanUserSegments(rows pgx.Rows) ([]domain.Membership, bool, error) {
	defer rows.Close()
	var (
		known              bool
		ms                 = []domain.Membership{}
		slug, source       pgtype.Text
		addedAt, expiresAt pgtype.Timestamptz
	)
	for rows.Next() {
		known = true
		if err := rows.Scan(&slug, &addedAt, &expiresAt, &source); err != nil {
			return nil, false, err
		}
		if !slug.Valid {
			continue
		}
		m := domain.Membership{Slug: slug.String, AddedAt: addedAt.Time, Source: domain.SourceManual}
		if source.String == string(domain.SourceAuto) {
			m.Source = domain.SourceAuto
		}
		if expiresAt.Valid {
			t := expiresAt.Time
			m.ExpiresAt = &t
		}
		ms = append(ms, m)
	}
	return ms, known, rows.Err()
}

// ChangeUserSegments applies c for one user atomically, registering the
// user if new. It returns domain.ErrNotFound listing every unknown slug,
// and domain.ErrInvalid if the expiry has passed; either way nothing is
// changed.
//
// The change is one batch of statements: PostgreSQL runs it as one
// implicit transaction, in one network round trip.
//
//  1. Lock the segments the slugs name against deletion, and record the
//     verdict: refused if a slug names none or the expiry has passed.
//  2. Lock the user, which serializes all writes for the user. A user the
//     service does not know has no row to lock: the verdict becomes
//     unregistered, nothing is written, and the change is sent again with
//     the registration (and the user's percent segments) in front: a
//     second round trip, once per user.
//  3. Fix the change's instant (one clock reading: the expiry check,
//     added_at and every removal use it) and refuse an expiry that has
//     passed by then.
//  4. Delete the user's expired memberships (history: ttl at their expiry)
//     and the removed ones (manual).
//  5. Insert the added ones; one the user holds keeps its added_at and
//     takes the new expiry.
//  6. Read the user's memberships as they stand at the instant.
func (r *UserRepo) ChangeUserSegments(ctx context.Context, c domain.SegmentChange) (domain.ChangeResult, error) {
	res, unregistered, err := r.changeUserSegments(ctx, c, false)
	if err == nil && unregistered {
		res, _, err = r.changeUserSegments(ctx, c, true)
	}
	return res, err
}

// changeUserSegments sends the batch of ChangeUserSegments, with the
// user's registration in front if register is set. It reports whether the
// user was unregistered (and so nothing was done).
func (r *UserRepo) changeUserSegments(ctx context.Context, c domain.SegmentChange, register bool) (res domain.ChangeResult, unregistered bool, err error) {
	const resolve = `
		SELECT known.slugs, e.passed,
		       set_config('segments.change', CASE WHEN cardinality(known.slugs) = $2 AND NOT e.passed
		                                          THEN 'accepted' ELSE 'refused' END, true)
		FROM (SELECT coalesce(array_agg(slug), '{}') AS slugs
		      FROM (SELECT slug FROM segments WHERE slug = ANY ($1::text[]) ORDER BY id FOR KEY SHARE) AS k) AS known,
		     (SELECT coalesce($3::timestamptz <= clock_timestamp(), false) AS passed) AS e`
	const lockUser = `
		WITH locked AS (SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE)
		SELECT set_config('segments.change',
		                  CASE WHEN current_setting('segments.change') = 'accepted' AND NOT EXISTS (SELECT FROM locked)
		                       THEN 'unregistered' ELSE current_setting('segments.change') END, true)`
	const begin = `
		SELECT coalesce($1::timestamptz <= c.now, false),
		       set_config('segments.now', c.now::text, true),
		       set_config('segments.reason', 'manual', true),
		       set_config('segments.change', CASE WHEN $1::timestamptz <= c.now THEN 'refused'
		                                          ELSE current_setting('segments.change') END, true)
		FROM (SELECT clock_timestamp() AS now) AS c`
	// Removing a percent segment opts the user out of it (a rollout will
	// not give it back); adding one by hand cancels that.
	const remove = `
		WITH removed AS (
			DELETE FROM memberships m
			USING segments s
			WHERE m.user_id = $1 AND s.id = m.segment_id AND ` + accepted + `
			  AND (m.expires_at <= current_setting('segments.now')::timestamptz OR s.slug = ANY ($2::text[]))
			RETURNING s.slug, m.segment_id, s.auto_percent IS NOT NULL AS percent,
			          coalesce(m.expires_at <= current_setting('segments.now')::timestamptz, false) AS expired
		), opted_out AS (
			INSERT INTO segment_opt_outs (segment_id, user_id)
			SELECT segment_id, $1 FROM removed WHERE percent AND NOT expired
			ON CONFLICT DO NOTHING
		)
		SELECT slug, expired FROM removed`
	const add = `
		WITH opted_in AS (
			DELETE FROM segment_opt_outs o
			USING segments s
			WHERE o.user_id = $1 AND o.segment_id = s.id AND s.slug = ANY ($2::text[]) AND ` + accepted + `
		)
		INSERT INTO memberships AS m (user_id, segment_id, source, added_at, expires_at)
		SELECT $1, s.id, 'manual', current_setting('segments.now')::timestamptz, $3
		FROM segments s
		WHERE s.slug = ANY ($2::text[]) AND ` + accepted + `
		ORDER BY s.id
		ON CONFLICT (user_id, segment_id) DO UPDATE
		   SET expires_at = EXCLUDED.expires_at
		 WHERE m.expires_at IS DISTINCT FROM EXCLUDED.expires_at
		RETURNING (SELECT slug FROM segments WHERE id = m.segment_id), xmax = 0`
	const read = `
		SELECT s.slug, m.added_at, m.expires_at, m.source
		FROM memberships m
		JOIN segments s ON s.id = m.segment_id
		WHERE m.user_id = $1 AND ` + accepted + `
		  AND (m.expires_at IS NULL OR m.expires_at > current_setting('segments.now')::timestamptz)
		ORDER BY s.slug`

	res = domain.ChangeResult{UserID: c.UserID, Added: []string{}, Removed: []string{}, Segments: []domain.Membership{}}
	var (
		known                     []string
		passed                    bool
		verdict                   string
		granted, expired, created int64
	)
	slugs := slices.Concat(c.Add, c.Remove)
	slices.Sort(slugs)
	slugs = slices.Compact(slugs)
	b := &pgx.Batch{}
	b.Queue(resolve, slugs, len(slugs), c.ExpiresAt).QueryRow(func(row pgx.Row) error {
		return row.Scan(&known, &passed, nil)
	})
	if register {
		queueRegistration(b, []int64{c.UserID}, func(_, g int64) { granted = g })
	}
	b.Queue(lockUser, c.UserID).QueryRow(func(row pgx.Row) error {
		return row.Scan(&verdict)
	})
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
	if err := on(ctx, r.pool).SendBatch(ctx, b).Close(); err != nil {
		return res, false, fmt.Errorf("change segments of user %d: %w", c.UserID, dbError(err))
	}
	switch {
	case len(known) < len(slugs):
		unknown := slices.DeleteFunc(slugs, func(s string) bool { return slices.Contains(known, s) })
		return domain.ChangeResult{}, false, domain.UnknownSlugs(unknown)
	case passed:
		return domain.ChangeResult{}, false, domain.Invalid("the expiry has passed",
			domain.FieldError{Field: "/expires_at", Message: "must be in the future"})
	case verdict == "unregistered":
		return domain.ChangeResult{}, true, nil
	}
	slices.Sort(res.Added)
	slices.Sort(res.Removed)
	recordAfterCommit(ctx, r.rec, domain.OperationAdd, domain.ReasonAuto, granted)
	recordAfterCommit(ctx, r.rec, domain.OperationRemove, domain.ReasonTTL, expired)
	recordAfterCommit(ctx, r.rec, domain.OperationAdd, domain.ReasonManual, created)
	recordAfterCommit(ctx, r.rec, domain.OperationRemove, domain.ReasonManual, int64(len(res.Removed)))
	return res, false, nil
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
