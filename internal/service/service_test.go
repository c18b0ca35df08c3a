package service_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/service"
)

var errStore = errors.New("store failed")

// fakeSegments is a SegmentStore over a sorted list of slugs.
type fakeSegments struct {
	slugs   []string
	created []domain.NewSegment
	err     error
}

func (f *fakeSegments) CreateSegment(_ context.Context, ns domain.NewSegment) (domain.Segment, error) {
	f.created = append(f.created, ns)
	return domain.Segment{ID: 7, Slug: ns.Slug, AutoPercent: ns.AutoPercent}, f.err
}

func (f *fakeSegments) Segment(context.Context, string) (domain.Segment, error) {
	return domain.Segment{}, f.err
}

func (f *fakeSegments) Segments(_ context.Context, after string, limit int) ([]domain.Segment, error) {
	var out []domain.Segment
	for _, s := range f.slugs {
		if s > after && len(out) < limit {
			out = append(out, domain.Segment{Slug: s})
		}
	}
	return out, f.err
}

func (f *fakeSegments) DeleteSegment(context.Context, string) error { return f.err }

func (f *fakeSegments) Explain(context.Context, int64, string) (domain.Explanation, error) {
	return domain.Explanation{}, f.err
}

func (f *fakeSegments) Members(context.Context, string, int64, int) ([]domain.Member, error) {
	return nil, f.err
}

func (f *fakeSegments) PatchSegment(context.Context, string, domain.SegmentPatch) (domain.Segment, error) {
	return domain.Segment{}, f.err
}

// rolloutScheduler records what it is asked to schedule.
type rolloutScheduler struct {
	ids []int64
	err error
}

func (s *rolloutScheduler) ScheduleRollout(_ context.Context, id int64) error {
	s.ids = append(s.ids, id)
	return s.err
}

func (s *rolloutScheduler) ScheduleDeletion(context.Context, domain.ScheduledDeletion) error {
	return s.err
}

func (s *rolloutScheduler) ScheduleStep(context.Context, domain.ScheduledStep) error {
	return s.err
}

func TestSegmentsCreateQueuesRolloutsOfPercentSegments(t *testing.T) {
	half := domain.Percent(5000)
	tests := []struct {
		name      string
		seg       domain.NewSegment
		storeErr  error
		schedErr  error
		wantErr   error
		wantQueue []int64
	}{
		{"manual", domain.NewSegment{Slug: "M"}, nil, nil, nil, nil},
		{"percent", domain.NewSegment{Slug: "P", AutoPercent: &half}, nil, nil, nil, []int64{7}},
		{"percent with Redis down still created", domain.NewSegment{Slug: "P", AutoPercent: &half}, nil, errors.New("redis down"), nil, []int64{7}},
		{"store fails: nothing queued", domain.NewSegment{Slug: "P", AutoPercent: &half}, errStore, nil, errStore, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sched := &rolloutScheduler{err: tc.schedErr}
			segs := service.NewSegments(&fakeSegments{err: tc.storeErr}, sched, time.Now, zap.NewNop())
			seg, err := segs.Create(t.Context(), tc.seg)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err == nil && seg.Slug != tc.seg.Slug {
				t.Errorf("created %q, want %q", seg.Slug, tc.seg.Slug)
			}
			if diff := cmp.Diff(tc.wantQueue, sched.ids); diff != "" {
				t.Errorf("rollouts queued (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSegmentsListPages(t *testing.T) {
	segs := service.NewSegments(&fakeSegments{slugs: []string{"A", "B", "C", "D", "E"}}, &rolloutScheduler{}, time.Now, zap.NewNop())
	tests := []struct {
		after     string
		limit     int
		want      []string
		nextAfter string
	}{
		{"", 2, []string{"A", "B"}, "B"},
		{"B", 2, []string{"C", "D"}, "D"},
		{"D", 2, []string{"E"}, ""},
		{"", 5, []string{"A", "B", "C", "D", "E"}, ""},
		{"E", 5, nil, ""},
	}
	for _, tc := range tests {
		page, err := segs.List(t.Context(), tc.after, tc.limit)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, s := range page.Segments {
			got = append(got, s.Slug)
		}
		if diff := cmp.Diff(tc.want, got); diff != "" || page.NextAfter != tc.nextAfter {
			t.Errorf("after %q limit %d: next %q (want %q), slugs (-want +got):\n%s", tc.after, tc.limit, page.NextAfter, tc.nextAfter, diff)
		}
	}
}

// fakeRollouts is a RolloutStore whose rollout has a number of batches.
type fakeRollouts struct {
	held       map[int64]bool // rollouts another runner holds
	claimed    map[int64]bool // rollouts claimed and not yet released
	prepared   []int64
	prepare    domain.Rollout
	prepareErr error
	batches    int // left to claim
	batchErr   error
	finish     domain.Rollout
	finishErr  error
	failed     []int64
	unfinished []int64
}

func (f *fakeRollouts) ClaimRollout(_ context.Context, id int64) (func(), bool, error) {
	if f.held[id] || f.claimed[id] {
		return nil, false, nil
	}
	if f.claimed == nil {
		f.claimed = map[int64]bool{}
	}
	f.claimed[id] = true
	return func() { delete(f.claimed, id) }, true, nil
}

func (f *fakeRollouts) PrepareRollout(_ context.Context, id int64, _ int) (domain.Rollout, error) {
	f.prepared = append(f.prepared, id)
	return f.prepare, f.prepareErr
}

func (f *fakeRollouts) RolloutBatch(context.Context, int64) (bool, int64, error) {
	if f.batchErr != nil {
		return false, 0, f.batchErr
	}
	if f.batches == 0 {
		return false, 0, nil
	}
	f.batches--
	return true, 10, nil
}

func (f *fakeRollouts) FinishRollout(context.Context, int64) (domain.Rollout, error) {
	return f.finish, f.finishErr
}

func (f *fakeRollouts) FailRollout(_ context.Context, id int64) error {
	f.failed = append(f.failed, id)
	return nil
}

func (f *fakeRollouts) UnfinishedRollouts(context.Context) ([]int64, error) {
	return f.unfinished, nil
}

func TestRolloutsRun(t *testing.T) {
	running := domain.Rollout{Status: domain.RolloutRunning, Total: 30}
	done := domain.Rollout{Status: domain.RolloutDone, Total: 30, Assigned: 30}
	tests := []struct {
		name    string
		store   fakeRollouts
		wantErr error
	}{
		{"segment gone before it starts", fakeRollouts{prepareErr: domain.NotFoundf("gone")}, nil},
		{"already done", fakeRollouts{prepare: done}, nil},
		{"runs every batch, then done", fakeRollouts{prepare: running, batches: 3, finish: done}, nil},
		{"segment deleted meanwhile", fakeRollouts{prepare: running, batches: 3, finishErr: domain.NotFoundf("gone")}, nil},
		{"batches held elsewhere", fakeRollouts{prepare: running, finish: running}, service.ErrRolloutIncomplete},
		{"a batch fails", fakeRollouts{prepare: running, batchErr: errStore}, errStore},
		{"prepare fails", fakeRollouts{prepareErr: errStore}, errStore},
		{"another run holds it", fakeRollouts{held: map[int64]bool{7: true}, prepare: running, batches: 3}, service.ErrRolloutIncomplete},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := tc.store
			r := service.NewRollouts(&store, queued{}, service.RolloutSettings{Workers: 1, Batch: 100}, zap.NewNop())
			if err := r.Run(t.Context(), 7); !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if tc.store.held[7] {
				if len(store.prepared) != 0 || store.batches != 3 {
					t.Errorf("ran a rollout another run holds")
				}
				return
			}
			if tc.store.batchErr == nil && store.batches != 0 {
				t.Errorf("%d batches left unclaimed", store.batches)
			}
			if len(store.claimed) != 0 {
				t.Errorf("claims left after the run: %v", store.claimed)
			}
		})
	}
}

// queued is a RolloutQueue: the rollouts whose task waits to run.
type queued map[int64]bool

func (q queued) RolloutQueued(_ context.Context, id int64) (bool, error) { return q[id], nil }

func TestRolloutsResumeAndFail(t *testing.T) {
	// 5 is held by a live runner and 9's task is queued (its retry counts
	// toward its budget); the others are taken up.
	store := &fakeRollouts{unfinished: []int64{3, 5, 8, 9}, held: map[int64]bool{5: true},
		prepare: domain.Rollout{Status: domain.RolloutDone}}
	r := service.NewRollouts(store, queued{9: true}, service.RolloutSettings{Workers: 1, Batch: 100}, zap.NewNop())
	if err := r.Resume(t.Context()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int64{3, 8}, store.prepared); diff != "" {
		t.Errorf("rollouts taken up (-want +got):\n%s", diff)
	}
	store.prepareErr = errStore
	if err := r.Resume(t.Context()); !errors.Is(err, errStore) {
		t.Errorf("Resume hid a failure: %v", err)
	}
	if diff := cmp.Diff([]int64{3, 8}, store.failed); diff != "" {
		t.Errorf("rollouts the resume failed on, marked failed (-want +got):\n%s", diff)
	}
	store.failed = nil
	if err := r.Fail(t.Context(), 5); err != nil || len(store.failed) != 1 || store.failed[0] != 5 {
		t.Errorf("Fail: %v, failed %v", err, store.failed)
	}
}

// fakeExpiry is an ExpiryStore: ExpireMembership answers as set; each
// DeleteExpired call removes up to limit of left.
type fakeExpiry struct {
	deleted bool
	now     time.Time
	left    int64
	failAt  int // DeleteExpired call that fails (1-based), 0 for none
	calls   int
}

func (f *fakeExpiry) ExpireMembership(context.Context, domain.Expiry) (bool, time.Time, error) {
	return f.deleted, f.now, nil
}

func (f *fakeExpiry) DeleteExpired(_ context.Context, limit int) (int64, error) {
	f.calls++
	if f.calls == f.failAt {
		return 0, errStore
	}
	n := min(f.left, int64(limit))
	f.left -= n
	return n, nil
}

func TestExpiryExpire(t *testing.T) {
	at := time.Date(2030, 1, 1, 0, 0, 10, 0, time.UTC)
	tests := []struct {
		name     string
		store    fakeExpiry
		wantWait time.Duration // 0: no NotYetExpiredError
	}{
		{"removed", fakeExpiry{deleted: true, now: at.Add(time.Millisecond)}, 0},
		{"already gone or re-added", fakeExpiry{now: at.Add(time.Second)}, 0},
		{"task came early", fakeExpiry{now: at.Add(-3 * time.Second)}, 3 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x := service.NewExpiry(&tc.store, zap.NewNop())
			err := x.Expire(t.Context(), domain.Expiry{UserID: 1, Slug: "A", ExpiresAt: at})
			var early *service.NotYetExpiredError
			switch {
			case tc.wantWait == 0 && err != nil:
				t.Fatalf("err = %v, want nil", err)
			case tc.wantWait != 0 && (!errors.As(err, &early) || early.Wait != tc.wantWait):
				t.Fatalf("err = %v, want a wait of %s", err, tc.wantWait)
			}
		})
	}
}

func TestExpirySweepsInBatches(t *testing.T) {
	tests := []struct {
		name      string
		store     fakeExpiry
		wantTotal int64
		wantCalls int
		wantErr   error
	}{
		{"nothing expired", fakeExpiry{}, 0, 1, nil},
		{"less than a batch", fakeExpiry{left: 7}, 7, 1, nil},
		{"exactly two batches", fakeExpiry{left: 20}, 20, 3, nil},
		{"two and a half batches", fakeExpiry{left: 25}, 25, 3, nil},
		{"fails on the second batch", fakeExpiry{left: 25, failAt: 2}, 10, 2, errStore},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x := service.NewExpiry(&tc.store, zap.NewNop())
			total, err := x.Sweep(t.Context(), 10)
			if total != tc.wantTotal || tc.store.calls != tc.wantCalls || !errors.Is(err, tc.wantErr) {
				t.Errorf("swept %d in %d calls (%v), want %d in %d (%v)", total, tc.store.calls, err, tc.wantTotal, tc.wantCalls, tc.wantErr)
			}
		})
	}
}

// fakeHistory is a HistoryStore over a fixed list of events.
type fakeHistory struct {
	events []domain.HistoryEvent
	csv    string
	err    error
	// hold, if set, makes exports wait until it is closed; entered, if
	// set, hears of each export that got to the store.
	hold    chan struct{}
	entered chan struct{}
}

func (f *fakeHistory) CopyHistoryCSV(_ context.Context, _ domain.HistoryQuery, w io.Writer) error {
	if f.entered != nil {
		f.entered <- struct{}{}
	}
	if f.hold != nil {
		<-f.hold
	}
	if f.err != nil {
		return f.err
	}
	_, err := io.WriteString(w, f.csv)
	return err
}

func (f *fakeHistory) CopyMembersCSV(context.Context, int64, io.Writer) error { return nil }

func (f *fakeHistory) SegmentExists(context.Context, int64) (bool, error) { return true, nil }

func (f *fakeHistory) UserHistory(_ context.Context, _ int64, _, _ time.Time, after domain.HistoryCursor, limit int) ([]domain.HistoryEvent, error) {
	var out []domain.HistoryEvent
	for _, e := range f.events {
		if (e.At.After(after.At) || e.At.Equal(after.At) && e.ID > after.ID) && len(out) < limit {
			out = append(out, e)
		}
	}
	return out, nil
}

// downloads is a service.Recorder that keeps what it is told.
type downloads struct{ got []string }

func (d *downloads) ReportDownloaded(allUsers, ok bool) {
	scope, outcome := "user", "ok"
	if allUsers {
		scope = "all"
	}
	if !ok {
		outcome = "error"
	}
	d.got = append(d.got, scope+" "+outcome)
}

func TestReportLinks(t *testing.T) {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	clock := now
	r := service.NewReports(&fakeHistory{}, &downloads{}, []byte("a secret of at least 32 bytes, for tests"), time.Hour, 4, func() time.Time { return clock })
	q := domain.HistoryQuery{Period: domain.Period{Year: 2023, Month: 8}, UserID: 1000}
	token, exp := r.Link(q)
	if !exp.Equal(now.Add(time.Hour)) {
		t.Errorf("expires %v, want %v", exp, now.Add(time.Hour))
	}
	tampered := []byte(token)
	tampered[3] ^= 1
	other := service.NewReports(&fakeHistory{}, &downloads{}, []byte("another secret of at least 32 bytes!!"), time.Hour, 4, func() time.Time { return clock })
	otherToken, _ := other.Link(q)
	tests := []struct {
		name  string
		token string
		at    time.Time
		ok    bool
	}{
		{"fresh", token, now, true},
		{"a second before expiry", token, now.Add(time.Hour - time.Second), true},
		{"at expiry", token, now.Add(time.Hour), false},
		{"tampered", string(tampered), now, false},
		{"signed with another secret", otherToken, now, false},
		{"no signature", strings.Split(token, ".")[0], now, false},
		{"empty", "", now, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock = tc.at
			got, err := r.Open(tc.token)
			if tc.ok && (err != nil || got != q) {
				t.Fatalf("Open = %+v, %v; want %+v", got, err, q)
			}
			if !tc.ok && !errors.Is(err, domain.ErrForbidden) {
				t.Fatalf("err = %v, want ErrForbidden", err)
			}
		})
	}
}

func TestReportCSVIsCounted(t *testing.T) {
	rec := &downloads{}
	store := &fakeHistory{csv: "user_id;segment;operation;datetime;reason\n"}
	r := service.NewReports(store, rec, []byte("a secret of at least 32 bytes, for tests"), time.Hour, 4, time.Now)
	var buf bytes.Buffer
	if err := r.WriteCSV(t.Context(), domain.HistoryQuery{UserID: 1}, &buf); err != nil || buf.String() != store.csv {
		t.Fatalf("WriteCSV wrote %q, %v", buf.String(), err)
	}
	store.err = errStore
	if err := r.WriteCSV(t.Context(), domain.HistoryQuery{}, &buf); !errors.Is(err, errStore) {
		t.Fatalf("err = %v, want the store's", err)
	}
	if diff := cmp.Diff([]string{"user ok", "all error"}, rec.got); diff != "" {
		t.Errorf("downloads counted (-want +got):\n%s", diff)
	}
}

// Exports beyond the allowed number are refused at once with ErrBusy (and
// a retry delay), writing nothing, whatever their kind; once one ends,
// the next is allowed.
func TestExportsAreBounded(t *testing.T) {
	store := &fakeHistory{csv: "user_id;segment;operation;datetime;reason\n", hold: make(chan struct{}), entered: make(chan struct{}, 2)}
	r := service.NewReports(store, service.NopRecorder{}, []byte("a secret of at least 32 bytes, for tests"), time.Hour, 2, time.Now)
	var running sync.WaitGroup
	for range 2 {
		running.Go(func() {
			if err := r.WriteCSV(t.Context(), domain.HistoryQuery{}, io.Discard); err != nil {
				t.Errorf("an allowed export failed: %v", err)
			}
		})
	}
	<-store.entered
	<-store.entered
	var buf bytes.Buffer
	err := r.WriteMembersCSV(t.Context(), service.MembersReport{SegmentID: 1, Slug: "S"}, &buf)
	var de *domain.Error
	if !errors.Is(err, domain.ErrBusy) || !errors.As(err, &de) || de.RetryAfter <= 0 || buf.Len() != 0 {
		t.Fatalf("a members export beside two running: %v, wrote %q; want ErrBusy with a retry delay", err, buf.String())
	}
	if err := r.WriteCSV(t.Context(), domain.HistoryQuery{}, io.Discard); !errors.Is(err, domain.ErrBusy) {
		t.Fatalf("a history export beside two running: %v, want ErrBusy", err)
	}
	close(store.hold)
	running.Wait()
	store.entered = nil
	if err := r.WriteCSV(t.Context(), domain.HistoryQuery{}, &buf); err != nil || buf.String() != store.csv {
		t.Fatalf("an export after the others ended: %q, %v", buf.String(), err)
	}
}

func TestUserHistoryPages(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var events []domain.HistoryEvent
	for i := range 5 {
		// Two events share each instant: the id orders them.
		events = append(events, domain.HistoryEvent{ID: int64(i + 1), At: t0.Add(time.Duration(i/2) * time.Second)})
	}
	r := service.NewReports(&fakeHistory{events: events}, &downloads{}, []byte("a secret of at least 32 bytes, for tests"), time.Hour, 4, time.Now)
	var (
		got   []int64
		after domain.HistoryCursor
	)
	for range 10 {
		page, err := r.UserHistory(t.Context(), 1, t0, t0.Add(time.Hour), after, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Events {
			got = append(got, e.ID)
		}
		if page.Next == nil {
			break
		}
		after = *page.Next
	}
	if diff := cmp.Diff([]int64{1, 2, 3, 4, 5}, got); diff != "" {
		t.Errorf("events over all pages (-want +got):\n%s", diff)
	}
}

// TestRolloutsRunAtTheirRate: with a rate, the batches start no faster
// than it allows (the first at once), and a run whose context ends while
// it waits stops there, claiming nothing more.
func TestRolloutsRunAtTheirRate(t *testing.T) {
	running := domain.Rollout{Status: domain.RolloutRunning, Total: 30}
	done := domain.Rollout{Status: domain.RolloutDone, Total: 30, Assigned: 30}
	// 10 batches of 100 users at 5,000 users a second: 9 waits of 20 ms.
	store := &fakeRollouts{prepare: running, batches: 10, finish: done}
	r := service.NewRollouts(store, queued{}, service.RolloutSettings{Workers: 1, Batch: 100, Rate: 5000}, zap.NewNop())
	start := time.Now()
	if err := r.Run(t.Context(), 7); err != nil {
		t.Fatal(err)
	}
	if took, least := time.Since(start), 9*20*time.Millisecond; took < least {
		t.Errorf("10 batches took %s, less than the rate allows (%s)", took, least)
	}
	if store.batches != 0 {
		t.Errorf("%d batches left unclaimed", store.batches)
	}

	// 100 users a second: the second batch waits a second; the run ends
	// first.
	store = &fakeRollouts{prepare: running, batches: 10, finish: done}
	r = service.NewRollouts(store, queued{}, service.RolloutSettings{Workers: 1, Batch: 100, Rate: 100}, zap.NewNop())
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := r.Run(ctx, 7); err == nil {
		t.Fatal("a run cut short while waiting reported no error")
	}
	if store.batches != 9 {
		t.Errorf("%d batches claimed, want 1", 10-store.batches)
	}
}
