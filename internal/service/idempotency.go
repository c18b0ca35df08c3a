package service

import (
	"context"
	"time"
)

// IdempotencyKeyStore is the storage IdempotencyKeys needs.
type IdempotencyKeyStore interface {
	// SweepIdempotencyKeys deletes keys stored before olderThan, batch per
	// transaction, and returns how many.
	SweepIdempotencyKeys(ctx context.Context, olderThan time.Time, batch int) (int64, error)
}

// IdempotencyKeys keeps the stored responses of requests sent with an
// Idempotency-Key for a while, then forgets them.
type IdempotencyKeys struct {
	store IdempotencyKeyStore
	ttl   time.Duration
	now   func() time.Time
}

// NewIdempotencyKeys returns IdempotencyKeys on store that keeps keys for
// ttl.
func NewIdempotencyKeys(store IdempotencyKeyStore, ttl time.Duration, now func() time.Time) *IdempotencyKeys {
	return &IdempotencyKeys{store: store, ttl: ttl, now: now}
}

// Sweep deletes the keys older than the TTL, batch per transaction, and
// returns how many it deleted. A retry with a swept key runs as a new
// request.
func (k *IdempotencyKeys) Sweep(ctx context.Context, batch int) (int64, error) {
	return k.store.SweepIdempotencyKeys(ctx, k.now().Add(-k.ttl), batch)
}
