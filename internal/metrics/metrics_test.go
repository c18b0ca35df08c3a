package metrics_test

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/metrics"
	"github.com/segments-service/segments/internal/supervise"
	"go.uber.org/zap"
)

func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

func TestLabelsStayBounded(t *testing.T) {
	m := metrics.New()
	m.ObserveRequest("", "BREW", 405, time.Millisecond)
	m.ObserveRequest("/api/v1/segments/{slug}", "GET", 200, time.Millisecond)
	m.MembershipsChanged("add", "manual", 0) // zero adds nothing
	m.MembershipsChanged("remove", "ttl", 3)
	m.ReportDownloaded(true, false)
	m.ObserveTask("membership:sweep", "success", time.Second)
	out := scrape(t, m)
	for _, want := range []string{
		`segments_http_requests_total{method="other",route="unmatched",status="405"} 1`,
		`segments_http_requests_total{method="GET",route="/api/v1/segments/{slug}",status="200"} 1`,
		`segments_membership_changes_total{operation="add",reason="manual"} 0`,
		`segments_membership_changes_total{operation="remove",reason="ttl"} 3`,
		`segments_report_downloads_total{outcome="error",scope="all"} 1`,
		`segments_tasks_processed_total{outcome="success",type="membership:sweep"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(out, "BREW") {
		t.Error("an arbitrary method became a label value")
	}
}

// Scrapes read memory only: the figures that live in PostgreSQL and Redis
// (segments, rollouts, queue sizes) are refreshed in the background, so
// that no number of scrapes reaches either.
func TestScrapesDoNotQueryTheDatabase(t *testing.T) {
	m := metrics.New()
	var statsCalls, queueCalls atomic.Int64
	loop := m.FiguresLoop(func(context.Context) (map[string]int, error) {
		queueCalls.Add(1)
		return map[string]int{"pending": 3}, nil
	}, func(context.Context) (domain.SegmentStats, error) {
		statsCalls.Add(1)
		return domain.SegmentStats{Segments: 7, Rollouts: map[domain.RolloutStatus]int64{domain.RolloutRunning: 1}, RolloutUsersLeft: 42,
			LayerBuckets: map[string]int64{"CHECKOUT": 3000}}, nil
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { supervise.Run(ctx, loop, m, zap.NewNop()); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(5 * time.Second)
	for statsCalls.Load() == 0 || queueCalls.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the figures were never refreshed")
		}
		time.Sleep(time.Millisecond)
	}
	var out string
	for range 200 {
		out = scrape(t, m)
	}
	if s, q := statsCalls.Load(), queueCalls.Load(); s > 2 || q > 2 {
		t.Fatalf("200 scrapes read the business figures %d times and the queue %d times", s, q)
	}
	for _, want := range []string{
		"segments_segments 7", `segments_rollouts{status="running"} 1`, `segments_rollouts{status="done"} 0`,
		"segments_rollout_users_left 42", `segments_task_queue_tasks{state="pending"} 3`,
		`segments_layer_buckets_used{layer="CHECKOUT"} 3000`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
