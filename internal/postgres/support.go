package postgres

import (
	"context"
	"errors"
	"time"

	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/segments-service/segments/internal/domain"
)

// explainEvents is how many of the user's events in the segment Explain
// returns (the latest).
const explainEvents = 100

// Explain reads why the user is or is not in the segment named slug: the
// active membership, the bucket, the segment's share and the user's last
// events in it, in one round trip. It never registers the user. It
// returns domain.ErrNotFound if there is no such segment.
func (r *SegmentRepo) Explain(ctx context.Context, userID int64, slug string) (domain.Explanation, error) {
	segment := `
		SELECT (s.auto_percent * 100)::integer, segment_bucket(s.slug, $1),
		       m.added_at, m.expires_at, m.source,
		       (SELECT l.slug FROM layers l WHERE l.id = s.layer_id), ` + rangesOf("s.layer_buckets") + `
		FROM segments s
		LEFT JOIN memberships m ON m.segment_id = s.id AND m.user_id = $1
		                       AND (m.expires_at IS NULL OR m.expires_at > now())
		WHERE s.slug = $2`
	const events = `
		SELECT id, operation, reason, at FROM (
			SELECT h.id, h.operation, h.reason, h.at
			FROM membership_history h
			WHERE h.user_id = $1 AND h.segment_id = (SELECT id FROM segments WHERE slug = $2)
			ORDER BY h.at DESC, h.id DESC
			LIMIT $3
		) last ORDER BY at, id`
	var (
		e     domain.Explanation
		found bool
	)
	explain := func(q dbtx) error {
		e, found = domain.Explanation{Events: []domain.HistoryEvent{}}, false // afresh on the primary after the standby
		b := &pgx.Batch{}
		b.Queue(segment, userID, slug).Query(func(rows pgx.Rows) error {
			defer rows.Close()
			for rows.Next() {
				found = true
				var (
					m          domain.Membership
					addedAt    *time.Time
					source     *string
					layer      *string
					froms, tos []int32
				)
				if err := rows.Scan(&e.AutoPercent, &e.Bucket, &addedAt, &m.ExpiresAt, &source, &layer, &froms, &tos); err != nil {
					return err
				}
				if layer != nil {
					e.Layer = &domain.ExplainedLayer{Slug: *layer, Bucket: domain.LayerBucket(*layer, userID), Ranges: bucketRanges(froms, tos)}
				}
				if source != nil {
					m.Slug, m.AddedAt, m.Source = slug, *addedAt, domain.Source(*source)
					e.Membership = &m
				}
			}
			return rows.Err()
		})
		b.Queue(events, userID, slug, explainEvents).Query(func(rows pgx.Rows) error {
			var err error
			e.Events, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (domain.HistoryEvent, error) {
				ev := domain.HistoryEvent{UserID: userID, Slug: slug}
				err := row.Scan(&ev.ID, &ev.Operation, &ev.Reason, &ev.At)
				return ev, err
			})
			return err
		})
		return q.SendBatch(ctx, b).Close()
	}
	err := readOn(ctx, r.standby, r.pool, explain)
	// A segment created a moment ago may not have reached the standby (no
	// invalidation fences a creation): the primary says.
	if err == nil && !found && r.standby != nil && !inRequestTx(ctx) {
		err = explain(r.pool)
	}
	if err != nil {
		return domain.Explanation{}, fmt.Errorf("explain user %d in %s: %w", userID, slug, dbError(err))
	}
	if !found {
		return domain.Explanation{}, domain.NotFoundf("segment %q does not exist", slug)
	}
	return e, nil
}

// Members returns up to limit active members of the segment named slug
// whose user ids are above after, in user id order. It returns
// domain.ErrNotFound if there is no such segment.
func (r *SegmentRepo) Members(ctx context.Context, slug string, after int64, limit int) ([]domain.Member, error) {
	const query = `
		SELECT s.id, m.user_id, m.added_at, m.expires_at, m.source
		FROM segments s
		LEFT JOIN LATERAL (
			SELECT m.user_id, m.added_at, m.expires_at, m.source
			FROM memberships m
			WHERE m.segment_id = s.id AND m.user_id > $2
			  AND (m.expires_at IS NULL OR m.expires_at > now())
			ORDER BY m.user_id
			LIMIT $3
		) m ON true
		WHERE s.slug = $1`
	page := func(q dbtx) ([]domain.Member, error) {
		rows, _ := q.Query(ctx, query, slug, after, limit)
		defer rows.Close()
		found := false
		out := []domain.Member{}
		for rows.Next() {
			found = true
			var (
				id      int64
				userID  *int64
				addedAt *time.Time
				m       domain.Member
				source  *string
			)
			if err := rows.Scan(&id, &userID, &addedAt, &m.ExpiresAt, &source); err != nil {
				return nil, fmt.Errorf("read members of %s: %w", slug, err)
			}
			if userID != nil {
				m.UserID, m.AddedAt, m.Source = *userID, *addedAt, domain.Source(*source)
				out = append(out, m)
			}
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("select members of %s: %w", slug, dbError(err))
		}
		if !found {
			return nil, domain.NotFoundf("segment %q does not exist", slug)
		}
		return out, nil
	}
	return readAgain(ctx, r.pool, func() ([]domain.Member, error) {
		var out []domain.Member
		err := readOn(ctx, r.standby, r.pool, func(q dbtx) error {
			var err error
			out, err = page(q)
			return err
		})
		// A segment created a moment ago may not have reached the standby
		// (no invalidation fences a creation): the primary says.
		if errors.Is(err, domain.ErrNotFound) && r.standby != nil && !inRequestTx(ctx) {
			out, err = page(r.pool)
		}
		return out, err
	})
}

// UserSegmentsAt returns the user's active memberships as they stood at
// instant at, sorted by slug, rebuilt from history: for each segment the
// user's last add or remove at or before at; an add counts if the
// membership's expiry then (the add's, or the last expiry change since, at
// or before at) had not passed at at. It never registers the user.
//
// Its cost does not grow with the user's events: it walks the segments the
// user ever had through the (user_id, segment_id, at, id) index, one probe
// to find the next segment and one for that segment's last event at or
// before at (a skip scan, written as a recursive query), and one probe of
// membership_expiry_changes's key per membership.
func (r *UserRepo) UserSegmentsAt(ctx context.Context, userID int64, at time.Time) ([]domain.Membership, error) {
	return readAgain(ctx, r.pool, func() ([]domain.Membership, error) {
		var ms []domain.Membership
		err := readOn(ctx, r.standby, r.pool, func(q dbtx) error {
			rows, _ := q.Query(ctx, UserSegmentsAtSQL, userID, at)
			var err error
			ms, err = pgx.CollectRows(rows, scanMembership)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("segments of user %d at %s: %w", userID, at.Format(time.RFC3339Nano), dbError(err))
		}
		return ms, nil
	})
}

// UserSegmentsAtSQL is UserSegmentsAt's statement: $1 the user, $2 the
// instant. (Exported for the benchmark that measures it in the database.)
const UserSegmentsAtSQL = `
		WITH RECURSIVE segs AS (
			(SELECT h.segment_id FROM membership_history h WHERE h.user_id = $1 ORDER BY h.segment_id LIMIT 1)
			UNION ALL
			SELECT (SELECT h.segment_id FROM membership_history h
			        WHERE h.user_id = $1 AND h.segment_id > s.segment_id
			        ORDER BY h.segment_id LIMIT 1)
			FROM segs s WHERE s.segment_id IS NOT NULL
		), last AS (
			SELECT l.* FROM segs s
			CROSS JOIN LATERAL (
				SELECT h.segment_id, h.slug, h.operation, h.reason, h.at, h.expires_at
				FROM membership_history h
				WHERE h.user_id = $1 AND h.segment_id = s.segment_id AND h.at <= $2
				ORDER BY h.at DESC, h.id DESC
				LIMIT 1
			) l
		)
		SELECT l.slug, l.at,
		       CASE WHEN c.at IS NULL THEN l.expires_at ELSE c.expires_at END AS expires_at,
		       CASE WHEN l.reason = 'auto' THEN 'auto' ELSE 'manual' END
		FROM last l
		LEFT JOIN LATERAL (
			SELECT c.at, c.expires_at FROM membership_expiry_changes c
			WHERE c.user_id = $1 AND c.segment_id = l.segment_id AND c.at >= l.at AND c.at <= $2
			ORDER BY c.at DESC, c.id DESC
			LIMIT 1
		) c ON true
		WHERE l.operation = 'add'
		  AND (CASE WHEN c.at IS NULL THEN l.expires_at ELSE c.expires_at END IS NULL
		       OR CASE WHEN c.at IS NULL THEN l.expires_at ELSE c.expires_at END > $2)
		ORDER BY l.slug`
