package httpapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/readcache"
	"github.com/segments-service/segments/internal/service"
)

// BenchmarkDecodeChangeRequest decodes and validates a typical change: two
// slugs to add, one to remove, a TTL.
func BenchmarkDecodeChangeRequest(b *testing.B) {
	v := newValidator()
	body := `{"add":["AVITO_VOICE_MESSAGES","AVITO_DISCOUNT_30"],"remove":["AVITO_PERFORMANCE_VAS"],"ttl_seconds":172800}`
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest(http.MethodPost, "/api/v1/users/1000/segments", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		var req ChangeSegmentsRequest
		if !decode(httptest.NewRecorder(), r, v, &req) {
			b.Fatal("decode failed")
		}
	}
}

// csvStore streams a fixed CSV in 64 KiB chunks, as pgx's CopyTo does.
type csvStore struct{ data []byte }

func (s csvStore) CopyHistoryCSV(_ context.Context, _ domain.HistoryQuery, w io.Writer) error {
	for rest := s.data; len(rest) > 0; {
		n := min(len(rest), 64<<10)
		if _, err := w.Write(rest[:n]); err != nil {
			return err
		}
		rest = rest[n:]
	}
	return nil
}

func (csvStore) CopyMembersCSV(context.Context, int64, io.Writer) error { return nil }

func (csvStore) SegmentExists(context.Context, int64) (bool, error) { return true, nil }

func (csvStore) UserHistory(context.Context, int64, time.Time, time.Time, domain.HistoryCursor, int) ([]domain.HistoryEvent, error) {
	return nil, nil
}

// BenchmarkReportDownload runs the CSV download handler over a 10,000-row
// report: token check, headers, and the copy to the response.
func BenchmarkReportDownload(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("user_id;segment;operation;datetime;reason\n")
	for range 10000 {
		sb.WriteString("1000;AVITO_VOICE_MESSAGES;add;2026-11-22T08:12:59.710810Z;manual\n")
	}
	reports := service.NewReports(csvStore{[]byte(sb.String())}, service.NopRecorder{}, []byte("a benchmark secret of 32 bytes!!"), time.Hour, 4, time.Now)
	h := &handler{reports: reports}
	token, _ := reports.Link(domain.HistoryQuery{Period: domain.Period{Year: 2026, Month: 11}, UserID: 1000})
	rctx := chi.NewRouteContext()
	rctx.URLParams.Add("token", token)
	b.SetBytes(int64(sb.Len()))
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest(http.MethodGet, "/api/v1/reports/history/"+token, nil)
		r = r.WithContext(context.WithValue(r.Context(), chi.RouteCtxKey, rctx))
		w := httptest.NewRecorder()
		h.downloadReport(w, r)
		if w.Code != http.StatusOK {
			b.Fatalf("status %d", w.Code)
		}
	}
}

// nopRecorder counts nothing.
type nopRecorder struct{}

func (nopRecorder) CacheLookup(readcache.Status)                      {}
func (nopRecorder) CacheInvalidated(string, int)                      {}
func (nopRecorder) CacheFlushed(string)                               {}
func (nopRecorder) CacheFillRefused()                                 {}
func (nopRecorder) ObserveRequest(string, string, int, time.Duration) {}

// BenchmarkCachedRead serves GET /users/{id}/segments from the read cache
// through the whole router and its middleware (no network): the service's
// own cost of a cache hit.
func BenchmarkCachedRead(b *testing.B) {
	c := readcache.New(64<<20, time.Now, nopRecorder{})
	c.Listening(true)
	at := time.Date(2026, 11, 23, 8, 0, 0, 123456000, time.UTC)
	for id := int64(1); id <= 1000; id++ {
		_, t, _ := c.Get(id, nil)
		var ms []domain.Membership
		for i := range 5 { // a user with 5 segments, as the benchmarks seed
			ms = append(ms, domain.Membership{SegmentID: int64(3 * i), Slug: fmt.Sprintf("SEG_%d", 3*i), AddedAt: at.Add(time.Duration(i) * time.Hour), Source: domain.SourceManual})
		}
		c.Fill(id, t, cacheForm(nil, ms))
	}
	h := NewRouter(Options{
		Segments: service.NewSegments(nil, nil, time.Now, zap.NewNop()),
		Users:    service.NewUsers(nil, nil, time.Now, zap.NewNop()),
		Cache:    c, Observer: nopRecorder{}, RequestTimeout: 30 * time.Second,
	})
	reqs := make([]*http.Request, 1000)
	for i := range reqs {
		reqs[i] = httptest.NewRequest(http.MethodGet, fmt.Sprintf("/api/v1/users/%d/segments", i+1), nil)
	}
	b.ReportAllocs()
	w := &discardWriter{h: http.Header{}}
	i := 0
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, reqs[i%len(reqs)])
		if w.status != http.StatusOK {
			b.Fatalf("status %d", w.status)
		}
		i++
	}
}

type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(s int)           { w.status = s }

// BenchmarkCacheHitBody is what a hit costs beyond the router: reading a
// user of 5 memberships from the read cache and encoding the body (the
// cache keeps memberships compactly, not the body).
func BenchmarkCacheHitBody(b *testing.B) {
	c := readcache.New(64<<20, time.Now, nopRecorder{})
	c.Listening(true)
	at := time.Date(2026, 11, 23, 8, 0, 0, 123456000, time.UTC)
	var ms []domain.Membership
	for i := range 5 {
		ms = append(ms, domain.Membership{SegmentID: int64(3 * i), Slug: fmt.Sprintf("SEG_%d", 3*i), AddedAt: at.Add(time.Duration(i) * time.Hour), Source: domain.SourceManual})
	}
	_, t, _ := c.Get(1, nil)
	c.Fill(1, t, cacheForm(nil, ms))
	var buf [16]readcache.Membership
	body := make([]byte, 0, 2048)
	b.ReportAllocs()
	for b.Loop() {
		got, _, st := c.Get(1, buf[:0])
		if st != readcache.Hit {
			b.Fatal(st)
		}
		body = appendUserSegments(body[:0], 1, got)
	}
}
