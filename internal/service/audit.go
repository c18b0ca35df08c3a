package service

import (
	"context"
	"time"

	"github.com/segments-service/segments/internal/domain"
)

// AuditStore is the storage Audit needs.
type AuditStore interface {
	// AuditEntries returns up to limit entries with ids below before (0:
	// from the newest), newest first: all of them, or with slug those of
	// the segments that have had that slug and of their imports.
	AuditEntries(ctx context.Context, slug string, before int64, limit int) ([]domain.AuditEntry, error)
	// SweepAudit deletes up to limit entries older than before.
	SweepAudit(ctx context.Context, before time.Time, limit int) (int64, error)
}

// Audit reads the audit log, which the stores write in the transactions
// of the changes themselves, and trims it.
type Audit struct {
	store     AuditStore
	retention time.Duration
	now       func() time.Time
}

// NewAudit returns Audit on store; entries older than retention are
// swept (0 keeps them forever).
func NewAudit(store AuditStore, retention time.Duration, now func() time.Time) *Audit {
	return &Audit{store: store, retention: retention, now: now}
}

// AuditPage is one page of audit entries, newest first.
type AuditPage struct {
	Entries []domain.AuditEntry
	// NextBefore is the cursor of the next page; 0 on the last page.
	NextBefore int64
}

// List returns up to limit entries older than the entry before (0: from
// the newest): every entry, or with slug set those about the segments
// that have had that slug and their imports.
func (a *Audit) List(ctx context.Context, slug string, before int64, limit int) (AuditPage, error) {
	entries, err := a.store.AuditEntries(ctx, slug, before, limit+1)
	if err != nil {
		return AuditPage{}, err
	}
	p := AuditPage{}
	if last := cutPage(&entries, limit); last != nil {
		p.NextBefore = last.ID
	}
	p.Entries = entries
	return p, nil
}

// Sweep deletes the entries older than the retention, batch at a time,
// and returns how many it deleted; with no retention it does nothing.
func (a *Audit) Sweep(ctx context.Context, batch int) (int64, error) {
	if a.retention <= 0 {
		return 0, nil
	}
	before := a.now().Add(-a.retention)
	var n int64
	for {
		d, err := a.store.SweepAudit(ctx, before, batch)
		n += d
		if err != nil || d < int64(batch) {
			return n, err
		}
	}
}
