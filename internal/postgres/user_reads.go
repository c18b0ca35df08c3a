package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/segments-service/segments/internal/domain"
)

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

// UserSegments returns the user's active memberships sorted by slug, and
// whether the user is registered. A known user costs one statement; an
// unknown one, if register is set, is registered (with its percent
// segments) and read again in a second round trip, in one transaction;
// else it has no memberships and is left unknown.
func (r *UserRepo) UserSegments(ctx context.Context, userID int64, register bool) ([]domain.Membership, bool, error) {
	type answer struct {
		ms    []domain.Membership
		known bool
	}
	a, err := readAgain(ctx, r.pool, func() (answer, error) {
		ms, known, err := r.userSegments(ctx, userID, register)
		return answer{ms, known}, err
	})
	return a.ms, a.known, err
}

func (r *UserRepo) userSegments(ctx context.Context, userID int64, register bool) ([]domain.Membership, bool, error) {
	rows, _ := on(ctx, r.pool).Query(ctx, userSegmentsSQL, userID)
	ms, known, err := scanUserSegments(rows)
	if err != nil {
		return nil, false, fmt.Errorf("select segments of user %d: %w", userID, dbError(err))
	}
	if known || !register {
		return ms, known, nil
	}

	var granted int64
	b := &pgx.Batch{}
	queueRegistration(b, []int64{userID}, func(_, g int64) { granted = g })
	b.Queue(userSegmentsSQL, userID).Query(func(rows pgx.Rows) error {
		ms, _, err = scanUserSegments(rows)
		return err
	})
	if err := on(ctx, r.pool).SendBatch(ctx, b).Close(); err != nil {
		return nil, false, fmt.Errorf("register and select user %d: %w", userID, dbError(err))
	}
	recordAfterCommit(ctx, r.rec, domain.OperationAdd, domain.ReasonAuto, granted)
	return ms, true, nil
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

// scanMembership reads (slug, added_at, expires_at, source).
func scanMembership(row pgx.CollectableRow) (domain.Membership, error) {
	var m domain.Membership
	err := row.Scan(&m.Slug, &m.AddedAt, &m.ExpiresAt, &m.Source)
	return m, err
}
