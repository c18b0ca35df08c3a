package service_test

import (
	"testing"
	"time"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/service"
)

func BenchmarkReportLinkAndOpen(b *testing.B) {
	r := service.NewReports(nil, service.NopRecorder{}, []byte("a benchmark secret of 32 bytes!!"), time.Hour, 4, time.Now)
	q := domain.HistoryQuery{Period: domain.Period{Year: 2026, Month: 11}, UserID: 1000}
	b.ReportAllocs()
	for b.Loop() {
		token, _ := r.Link(q)
		if _, err := r.Open(token); err != nil {
			b.Fatal(err)
		}
	}
}
