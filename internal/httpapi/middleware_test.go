package httpapi

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestPanicBecomesLoggedProblem(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	log := zap.New(core)
	h := requestContext(log)(accessLog(log, nil)(recoverer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic("boom")
	}))))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/x", nil))

	if rec.Code != http.StatusInternalServerError || rec.Header().Get("Content-Type") != "application/problem+json" {
		t.Fatalf("status %d, content type %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	var p Problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || p.RequestID == "" || p.Status != 500 {
		t.Fatalf("problem %s: %v", rec.Body, err)
	}
	panics := logs.FilterMessage("panic").All()
	if len(panics) != 1 || panics[0].ContextMap()["request_id"] != p.RequestID {
		t.Errorf("panic logs: %+v", panics)
	}
	access := logs.FilterMessage("request").All()
	if len(access) != 1 || access[0].ContextMap()["status"] != int64(500) {
		t.Errorf("access logs: %+v", access)
	}
}
