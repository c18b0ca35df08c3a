package metrics_test

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/segments-service/segments/internal/metrics"
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
