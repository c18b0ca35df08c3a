package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/segments-service/segments/internal/domain"
)

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
//     and the removed ones (manual): memberships_history_delete writes
//     their history and queues the user for the read caches.
//  5. Insert the added ones: memberships_history_insert writes their
//     history (add, manual) and queues the user. One the user holds keeps
//     its added_at and takes the new expiry (an UPDATE):
//     memberships_cache_update records the new expiry in
//     membership_expiry_changes (for ?at=) and queues the user.
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
		INSERT INTO memberships AS m (user_id, segment_id, layer_id, source, added_at, expires_at)
		SELECT $1, s.id, s.layer_id, 'manual', current_setting('segments.now')::timestamptz, $3
		FROM segments s
		WHERE s.slug = ANY ($2::text[]) AND ` + accepted + `
		ORDER BY s.id
		ON CONFLICT (user_id, segment_id) DO UPDATE
		   SET expires_at = EXCLUDED.expires_at
		 WHERE m.expires_at IS DISTINCT FROM EXCLUDED.expires_at
		RETURNING (SELECT slug FROM segments WHERE id = m.segment_id), xmax = 0`
	// The segments asked for that share a layer with one the user holds
	// (and this change does not remove) or with another asked for refuse
	// the change; the database's unique index on (user, layer) holds it
	// whatever else runs.
	const layers = `
		SELECT coalesce(array_agg(c.slug ORDER BY c.slug, c.held), '{}'),
		       coalesce(array_agg(c.held ORDER BY c.slug, c.held), '{}'),
		       CASE WHEN count(*) > 0 THEN set_config('segments.change', 'refused', true) END
		FROM (` + layerConflictsSQL + `) AS c
		WHERE ` + accepted
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
		conflictSlugs, conflictOf []string
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
	b.Queue(layers, c.UserID, nonNil(c.Add), nonNil(c.Remove)).QueryRow(func(row pgx.Row) error {
		return row.Scan(&conflictSlugs, &conflictOf, nil)
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
	// refusal is why the change was refused, if it was: read from the
	// batch's results.
	refusal := func() error {
		switch {
		case len(known) < len(slugs):
			unknown := slices.DeleteFunc(slices.Clone(slugs), func(s string) bool { return slices.Contains(known, s) })
			return domain.UnknownSlugs(unknown)
		case passed:
			return domain.Invalid("the expiry has passed",
				domain.FieldError{Field: "/expires_at", Message: "must be in the future"})
		case len(conflictSlugs) > 0:
			e := &domain.LayerConflictError{}
			for i := range conflictSlugs {
				e.Conflicts = append(e.Conflicts, domain.LayerConflict{Slug: conflictSlugs[i], Held: conflictOf[i]})
			}
			return e
		}
		return nil
	}
	var refused error
	if !register {
		// One implicit transaction: a refused change writes nothing.
		if err = on(ctx, r.pool).SendBatch(ctx, b).Close(); err == nil {
			refused = refusal()
		}
	} else {
		// The registration in front commits only with the change: a
		// refused change (a conflict with a percent segment the
		// registration gave, an expiry passed meanwhile) rolls it back.
		err = withTx(ctx, r.pool, func(tx pgx.Tx) error {
			if err := tx.SendBatch(ctx, b).Close(); err != nil {
				return err
			}
			refused = refusal()
			return refused
		})
		if refused != nil {
			err = nil // the rollback was the refusal's
		}
	}
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.ConstraintName == "memberships_one_per_layer":
		return domain.ChangeResult{}, false, r.layerConflictError(ctx, c)
	case err != nil:
		return res, false, fmt.Errorf("change segments of user %d: %w", c.UserID, dbError(err))
	case refused != nil:
		return domain.ChangeResult{}, false, refused
	}
	if verdict == "unregistered" {
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

// layerConflictsSQL lists (slug, held): each segment of $2 (the slugs a
// change adds for user $1) that shares a layer with one the user holds at
// the change's instant and does not remove ($3), or with another of $2.
const layerConflictsSQL = `
	WITH asked AS (
		SELECT s.slug, s.layer_id FROM segments s WHERE s.slug = ANY ($2::text[]) AND s.layer_id IS NOT NULL
	), held AS (
		SELECT s.slug, m.layer_id
		FROM memberships m JOIN segments s ON s.id = m.segment_id
		WHERE m.user_id = $1 AND m.layer_id IS NOT NULL AND NOT (s.slug = ANY ($3::text[]))
		  AND (m.expires_at IS NULL
		       OR m.expires_at > coalesce(nullif(current_setting('segments.now', true), '')::timestamptz, now()))
	)
	SELECT a.slug, h.slug AS held FROM asked a JOIN held h ON h.layer_id = a.layer_id AND h.slug <> a.slug
	UNION
	SELECT a.slug, b.slug FROM asked a JOIN asked b ON b.layer_id = a.layer_id AND b.slug < a.slug`

// layerConflictError reads what a change that the unique index on (user,
// layer) refused conflicts with: a rollout or a registration gave the user
// a segment of the layer between the change's check and its insert.
func (r *UserRepo) layerConflictError(ctx context.Context, c domain.SegmentChange) error {
	rows, _ := r.pool.Query(ctx, layerConflictsSQL, c.UserID, nonNil(c.Add), nonNil(c.Remove))
	conflicts, err := pgx.CollectRows(rows, pgx.RowToStructByPos[domain.LayerConflict])
	if err != nil {
		return fmt.Errorf("conflicts of user %d: %w", c.UserID, dbError(err))
	}
	if len(conflicts) == 0 {
		conflicts = []domain.LayerConflict{{Slug: strings.Join(c.Add, ", "), Held: "(a segment of the same layer, given meanwhile)"}}
	}
	return &domain.LayerConflictError{Conflicts: conflicts}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
