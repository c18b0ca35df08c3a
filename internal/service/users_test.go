package service_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/service"
	"github.com/segments-service/segments/tools/apitest"
)

// fakeUsers records the change it is given.
type fakeUsers struct {
	got        *domain.SegmentChange
	registered []int64
}

func (f *fakeUsers) RegisterUsers(_ context.Context, ids []int64) (int64, error) {
	f.registered = append(f.registered, ids...)
	return int64(len(ids)), nil
}

func (f *fakeUsers) UserSegmentsAt(context.Context, int64, time.Time) ([]domain.Membership, error) {
	return nil, nil
}

func (f *fakeUsers) UserSegments(context.Context, int64, bool) ([]domain.Membership, bool, error) {
	return []domain.Membership{}, true, nil
}

func (f *fakeUsers) ChangeUserSegments(_ context.Context, c domain.SegmentChange) (domain.ChangeResult, error) {
	f.got = &c
	return domain.ChangeResult{UserID: c.UserID}, nil
}

func TestChangeSegmentsNormalizes(t *testing.T) {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	store := &fakeUsers{}
	users := service.NewUsers(store, apitest.NopScheduler{}, func() time.Time { return now }, zap.NewNop())

	_, err := users.ChangeSegments(t.Context(), domain.SegmentChange{
		UserID: 1, Add: []string{"A", "B", "A"}, Remove: []string{"C", "C"}, TTL: 48 * time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	exp := now.Add(48 * time.Hour)
	want := domain.SegmentChange{UserID: 1, Add: []string{"A", "B"}, Remove: []string{"C"}, ExpiresAt: &exp}
	if diff := cmp.Diff(want, *store.got); diff != "" {
		t.Errorf("change given to the store (-want +got):\n%s", diff)
	}
}

func TestChangeSegmentsRules(t *testing.T) {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	past, future := now.Add(-time.Second), now.Add(time.Second)
	many := make([]string, 1001)
	for i := range many {
		many[i] = string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676))
	}
	tests := []struct {
		name   string
		change domain.SegmentChange
		field  string
	}{
		{"nothing to change", domain.SegmentChange{UserID: 1}, "/add"},
		{"slug in both lists", domain.SegmentChange{UserID: 1, Add: []string{"A"}, Remove: []string{"B", "A"}}, "/remove/1"},
		{"both expiry forms", domain.SegmentChange{UserID: 1, Add: []string{"A"}, TTL: time.Hour, ExpiresAt: &future}, "/expires_at"},
		{"expiry now", domain.SegmentChange{UserID: 1, Add: []string{"A"}, ExpiresAt: &now}, "/expires_at"},
		{"expiry in the past", domain.SegmentChange{UserID: 1, Add: []string{"A"}, ExpiresAt: &past}, "/expires_at"},
		{"too many slugs", domain.SegmentChange{UserID: 1, Add: many[:700], Remove: many[700:]}, "/add"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := &fakeUsers{}
			users := service.NewUsers(store, apitest.NopScheduler{}, func() time.Time { return now }, zap.NewNop())
			_, err := users.ChangeSegments(t.Context(), tc.change)
			var de *domain.Error
			if !errors.As(err, &de) || !errors.Is(err, domain.ErrInvalid) {
				t.Fatalf("err = %v, want a domain ErrInvalid", err)
			}
			if len(de.Fields) != 1 || de.Fields[0].Field != tc.field {
				t.Errorf("fields = %+v, want one for %s", de.Fields, tc.field)
			}
			if store.got != nil {
				t.Error("an invalid change reached the store")
			}
		})
	}
}

// failingScheduler fails every call and counts them.
type failingScheduler struct{ calls int }

func (f *failingScheduler) ScheduleExpiry(context.Context, domain.Expiry) error {
	f.calls++
	return errors.New("redis: connection refused")
}

// expiringStore answers every change as if all its adds appeared with the
// change's expiry.
type expiringStore struct{ fakeUsers }

func (s *expiringStore) ChangeUserSegments(_ context.Context, c domain.SegmentChange) (domain.ChangeResult, error) {
	res := domain.ChangeResult{UserID: c.UserID, Added: c.Add}
	for _, slug := range c.Add {
		res.Segments = append(res.Segments, domain.Membership{Slug: slug, ExpiresAt: c.ExpiresAt})
	}
	return res, nil
}

func TestSchedulingStopsAtTheFirstFailure(t *testing.T) {
	sched := &failingScheduler{}
	users := service.NewUsers(&expiringStore{}, sched, time.Now, zap.NewNop())
	res, err := users.ChangeSegments(t.Context(), domain.SegmentChange{UserID: 1, Add: []string{"A", "B", "C"}, TTL: time.Hour})
	if err != nil || len(res.Added) != 3 {
		t.Fatalf("the change failed with Redis down: %+v, %v", res, err)
	}
	if sched.calls != 1 {
		t.Errorf("%d scheduling attempts with Redis down, want 1", sched.calls)
	}
}
