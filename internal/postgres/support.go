package postgres

import (
	"context"
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
	const segment = `
		SELECT (s.auto_percent * 100)::integer, segment_bucket(s.slug, $1),
		       m.added_at, m.expires_at, m.source
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
		e     = domain.Explanation{Events: []domain.HistoryEvent{}}
		found bool
	)
	b := &pgx.Batch{}
	b.Queue(segment, userID, slug).Query(func(rows pgx.Rows) error {
		defer rows.Close()
		for rows.Next() {
			found = true
			var (
				m       domain.Membership
				addedAt *time.Time
				source  *string
			)
			if err := rows.Scan(&e.AutoPercent, &e.Bucket, &addedAt, &m.ExpiresAt, &source); err != nil {
				return err
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
	if err := on(ctx, r.pool).SendBatch(ctx, b).Close(); err != nil {
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
	const q = `
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
	return readAgain(ctx, r.pool, func() ([]domain.Member, error) {
		rows, _ := on(ctx, r.pool).Query(ctx, q, slug, after, limit)
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
	})
}
