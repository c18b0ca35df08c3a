package service

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/domain"
)

// ExpiryScheduler arranges for a membership to be removed at its expiry. It
// is best effort: the periodic sweep removes whatever a lost schedule
// misses, and reads never show an expired membership either way.
type ExpiryScheduler interface {
	ScheduleExpiry(ctx context.Context, e domain.Expiry) error
}

// ExpiryStore is the storage Expiry needs. Every method is atomic.
type ExpiryStore interface {
	// ExpireMembership deletes the membership e names if its expiry is still
	// e.ExpiresAt and has passed (history: ttl, at the expiry). It reports
	// whether it deleted it, and the database's current time.
	ExpireMembership(ctx context.Context, e domain.Expiry) (deleted bool, now time.Time, err error)
	// DeleteExpired deletes up to limit expired memberships, skipping rows
	// that other transactions hold, and returns how many it deleted.
	DeleteExpired(ctx context.Context, limit int) (int64, error)
}

// NotYetExpiredError says an expiry task ran before its time (clocks
// differ); it should run again after Wait.
type NotYetExpiredError struct{ Wait time.Duration }

func (e *NotYetExpiredError) Error() string {
	return fmt.Sprintf("membership expires in %s; not removed yet", e.Wait)
}

// Expiry removes memberships whose time is up.
type Expiry struct {
	store ExpiryStore
	log   *zap.Logger
}

// NewExpiry returns Expiry on store.
func NewExpiry(store ExpiryStore, log *zap.Logger) *Expiry {
	return &Expiry{store: store, log: log}
}

// Expire removes the membership e if it still expires at e.ExpiresAt: a
// membership re-added with another expiry, made permanent or already
// removed is left alone. It returns a *NotYetExpiredError if the expiry has
// not passed on the database's clock.
func (x *Expiry) Expire(ctx context.Context, e domain.Expiry) error {
	deleted, now, err := x.store.ExpireMembership(ctx, e)
	if err != nil {
		return err
	}
	if !deleted && now.Before(e.ExpiresAt) {
		return &NotYetExpiredError{Wait: e.ExpiresAt.Sub(now)}
	}
	return nil
}

// Sweep removes every expired membership, batch transactions of up to batch
// rows at a time, and returns how many it removed. It stops early, with the
// count so far, if ctx ends; nothing is half-removed.
func (x *Expiry) Sweep(ctx context.Context, batch int) (int64, error) {
	var total int64
	for {
		n, err := x.store.DeleteExpired(ctx, batch)
		total += n
		if err != nil {
			return total, err
		}
		if n < int64(batch) {
			if total > 0 {
				x.log.Info("swept expired memberships", zap.Int64("removed", total))
			}
			return total, nil
		}
	}
}
