package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"segments/internal/domain"
	"segments/internal/service"
)

var _ service.UserStore = (*UserRepo)(nil)

// UserRepo stores the user registry and memberships.
type UserRepo struct {
	pool *pgxpool.Pool
}

// NewUserRepo returns a UserRepo on pool.
func NewUserRepo(pool *pgxpool.Pool) *UserRepo {
	return &UserRepo{pool: pool}
}

// RegisterUsers registers the ids not yet known, giving them their percent
// segments, and returns how many users were new and how many memberships
// they got.
func (r *UserRepo) RegisterUsers(ctx context.Context, ids []int64) (registered, autoAdded int64, err error) {
	const q = `SELECT registered, auto_added FROM register_users($1)`
	if err := r.pool.QueryRow(ctx, q, ids).Scan(&registered, &autoAdded); err != nil {
		return 0, 0, fmt.Errorf("register %d users: %w", len(ids), err)
	}
	return registered, autoAdded, nil
}

// UserSegments returns the user's active memberships sorted by slug, and
// whether the user is registered at all.
func (r *UserRepo) UserSegments(ctx context.Context, userID int64) ([]domain.Membership, bool, error) {
	// One row per membership; one row of NULLs for a registered user with
	// none; no row for an unknown user.
	const q = `
		SELECT s.slug, m.added_at, m.expires_at, m.source
		FROM users u
		LEFT JOIN (memberships m JOIN segments s ON s.id = m.segment_id)
		       ON m.user_id = u.id AND (m.expires_at IS NULL OR m.expires_at > now())
		WHERE u.id = $1
		ORDER BY s.slug`
	rows, err := r.pool.Query(ctx, q, userID)
	if err != nil {
		return nil, false, fmt.Errorf("select segments of user %d: %w", userID, err)
	}
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
			return nil, false, fmt.Errorf("scan segments of user %d: %w", userID, err)
		}
		if slug == nil {
			continue
		}
		m.Slug, m.AddedAt, m.Source = *slug, *addedAt, *source
		ms = append(ms, m)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("select segments of user %d: %w", userID, err)
	}
	return ms, known, nil
}

// ChangeUserSegments applies c in one transaction (the SQL function
// change_user_segments, one round trip) and registers the user if new. It
// returns domain.ErrNotFound listing every unknown slug, with nothing
// changed, and domain.ErrInvalid if the expiry has passed by the time the
// user's lock is taken.
func (r *UserRepo) ChangeUserSegments(ctx context.Context, c domain.SegmentChange) (domain.ChangeResult, error) {
	const q = `SELECT change, slug, added_at, expires_at, source
		FROM change_user_segments($1, $2, $3, $4)`
	res := domain.ChangeResult{
		UserID:   c.UserID,
		Added:    []string{},
		Removed:  []string{},
		Segments: []domain.Membership{},
	}
	rows, err := r.pool.Query(ctx, q, c.UserID, nonNil(c.Add), nonNil(c.Remove), c.ExpiresAt)
	if err != nil {
		return res, fmt.Errorf("change segments of user %d: %w", c.UserID, err)
	}
	var unknown []string
	for rows.Next() {
		var (
			change  string
			addedAt *time.Time
			source  *domain.Source
			m       domain.Membership
		)
		if err := rows.Scan(&change, &m.Slug, &addedAt, &m.ExpiresAt, &source); err != nil {
			rows.Close()
			return res, fmt.Errorf("scan change of user %d: %w", c.UserID, err)
		}
		switch change {
		case "unknown":
			unknown = append(unknown, m.Slug)
		case "removed":
			res.Removed = append(res.Removed, m.Slug)
		case "expired":
			res.Expired++
		case "auto":
			res.AutoAdded++
		case "added", "renewed", "kept":
			m.AddedAt, m.Source = *addedAt, *source
			res.Segments = append(res.Segments, m)
			if change != "kept" {
				res.Added = append(res.Added, m.Slug)
			}
			if change == "added" {
				res.Appeared++
			}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		if pgCode(err) == invalidParameterValue {
			return res, domain.Invalid("the expiry has passed",
				domain.FieldError{Field: "/expires_at", Message: "must be in the future"})
		}
		return res, fmt.Errorf("change segments of user %d: %w", c.UserID, err)
	}
	if len(unknown) > 0 {
		return res, domain.UnknownSlugs(unknown)
	}
	return res, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
