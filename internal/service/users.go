package service

import (
	"context"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/aftercommit"
	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/logctx"
)

// UserStore is the storage Users needs. Every method is atomic.
type UserStore interface {
	// RegisterUsers registers the ids not yet known, giving them their
	// percent segments, and returns how many were new.
	RegisterUsers(ctx context.Context, ids []int64) (int64, error)
	// UserSegments returns the user's active memberships sorted by slug
	// and whether the user is registered; an unknown user is registered
	// (with its percent segments) if register is set.
	UserSegments(ctx context.Context, userID int64, register bool) ([]domain.Membership, bool, error)
	// UserSegmentsAt returns the user's active memberships as they stood
	// at an instant, from history, without registering the user.
	UserSegmentsAt(ctx context.Context, userID int64, at time.Time) ([]domain.Membership, error)
	// ChangeUserSegments applies a validated change, registering the user if
	// new. It returns domain.ErrNotFound with every unknown slug and nothing
	// changed.
	ChangeUserSegments(ctx context.Context, c domain.SegmentChange) (domain.ChangeResult, error)
}

// scheduleTimeout bounds scheduling a change's expiries (or a rollout), so
// that a Redis outage slows a request by at most this much.
const scheduleTimeout = 500 * time.Millisecond

// Users manages the user registry and users' segments.
type Users struct {
	store    UserStore
	expiries ExpiryScheduler
	now      func() time.Time
	log      *zap.Logger
}

// NewUsers returns Users on store. Added memberships that expire are
// scheduled for removal with expiries; now tells the time (time.Now in
// production).
func NewUsers(store UserStore, expiries ExpiryScheduler, now func() time.Time, log *zap.Logger) *Users {
	return &Users{store: store, expiries: expiries, now: now, log: log}
}

// Register registers ids in bulk, each new user with the percent segments
// its buckets admit it to, and returns how many were new. Registering a
// known id again is a no-op.
func (u *Users) Register(ctx context.Context, ids []int64) (int64, error) {
	return u.store.RegisterUsers(ctx, ids)
}

// Segments returns the user's active segments sorted by slug, and whether
// the user is registered. A user the service has never seen is registered
// (with its percent segments) if register is set; else it holds nothing
// and stays unknown.
func (u *Users) Segments(ctx context.Context, userID int64, register bool) ([]domain.Membership, bool, error) {
	return u.store.UserSegments(ctx, userID, register)
}

// SegmentsAt returns the user's segments exactly as a read answered (or
// would have answered) at instant at, added_at, expires_at and source
// included. It does not register the user. It returns domain.ErrInvalid
// for an instant in the future.
func (u *Users) SegmentsAt(ctx context.Context, userID int64, at time.Time) ([]domain.Membership, error) {
	if at.After(u.now()) {
		return nil, domain.Invalid("at is in the future; the past only",
			domain.FieldError{Field: "/at", Message: "must not be in the future"})
	}
	return u.store.UserSegmentsAt(ctx, userID, at)
}

// ChangeSegments adds and removes segments of one user atomically. It
// returns domain.ErrInvalid if the change breaks a rule (both lists empty, a
// slug in both lists, more than domain.MaxSlugsPerChange slugs, both expiry
// forms, an expiry not in the future) and domain.ErrNotFound listing every
// unknown slug; in both cases nothing is changed.
//
// Once the change has committed (see aftercommit), each added membership with an expiry is
// scheduled for removal. A failure to schedule (Redis down) is logged and
// does not fail the change: after the first failure the rest are left to
// the sweep, so that an outage costs a change one scheduleTimeout at most.
func (u *Users) ChangeSegments(ctx context.Context, c domain.SegmentChange) (domain.ChangeResult, error) {
	c, err := u.normalize(c)
	if err != nil {
		return domain.ChangeResult{}, err
	}
	res, err := u.store.ChangeUserSegments(ctx, c)
	if err != nil || c.ExpiresAt == nil {
		return res, err
	}
	aftercommit.Do(ctx, func() { u.scheduleExpiries(ctx, res) })
	return res, nil
}

// scheduleExpiries schedules the removal of the memberships res added
// with an expiry.
func (u *Users) scheduleExpiries(ctx context.Context, res domain.ChangeResult) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), scheduleTimeout)
	defer cancel()
	for _, m := range res.Segments {
		if m.ExpiresAt == nil || !slices.Contains(res.Added, m.Slug) {
			continue
		}
		e := domain.Expiry{UserID: res.UserID, Slug: m.Slug, ExpiresAt: *m.ExpiresAt}
		if err := u.expiries.ScheduleExpiry(sctx, e); err != nil {
			logctx.From(ctx, u.log).Warn("could not schedule expiry; the sweep will remove it",
				zap.Int64("user_id", e.UserID), zap.Strings("slugs", res.Added), zap.Time("expires_at", e.ExpiresAt), zap.Error(err))
			return
		}
	}
}

// normalize checks c's rules across fields, drops repeated slugs and turns a
// TTL into an expiry time.
func (u *Users) normalize(c domain.SegmentChange) (domain.SegmentChange, error) {
	c.Add, c.Remove = dedupe(c.Add), dedupe(c.Remove)
	var fields []domain.FieldError
	if len(c.Add) == 0 && len(c.Remove) == 0 {
		return c, domain.Invalid("nothing to change: add and remove are both empty",
			domain.FieldError{Field: "/add", Message: "add or remove must name at least one segment"})
	}
	if n := len(c.Add) + len(c.Remove); n > domain.MaxSlugsPerChange {
		return c, domain.Invalid(fmt.Sprintf("%d segments in one change; at most %d are allowed", n, domain.MaxSlugsPerChange),
			domain.FieldError{Field: "/add", Message: fmt.Sprintf("add and remove together must name at most %d segments", domain.MaxSlugsPerChange)})
	}
	for i, slug := range c.Remove {
		if slices.Contains(c.Add, slug) {
			fields = append(fields, domain.FieldError{
				Field:   fmt.Sprintf("/remove/%d", i),
				Message: fmt.Sprintf("%q is also in add; a segment cannot be added and removed at once", slug),
			})
		}
	}
	if len(fields) > 0 {
		return c, domain.Invalid("a segment cannot be both added and removed", fields...)
	}
	if c.ExpiresAt != nil && c.TTL != 0 {
		return c, domain.Invalid("give the expiry as ttl_seconds or as expires_at, not both",
			domain.FieldError{Field: "/expires_at", Message: "cannot be combined with ttl_seconds"})
	}
	now := u.now()
	if c.TTL != 0 {
		at := now.Add(c.TTL)
		c.ExpiresAt, c.TTL = &at, 0
	}
	if c.ExpiresAt != nil && !c.ExpiresAt.After(now) {
		return c, domain.Invalid("the expiry is not in the future",
			domain.FieldError{Field: "/expires_at", Message: "must be in the future"})
	}
	return c, nil
}

// dedupe returns s without repeats, keeping first occurrences in order.
func dedupe(s []string) []string {
	seen := make(map[string]struct{}, len(s))
	out := s[:0:0]
	for _, v := range s {
		if _, ok := seen[v]; !ok {
			seen[v] = struct{}{}
			out = append(out, v)
		}
	}
	return out
}
