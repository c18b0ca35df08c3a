package httpapi

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestPanicBecomesLoggedProblem(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	log := zap.New(core)
	h := requestContext(log)(accessLog(log, "errors", nil)(recoverer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
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

func TestAccessLogModes(t *testing.T) {
	statuses := []int{200, 201, 404, 422, 500}
	for _, tc := range []struct {
		which string
		want  []int64
	}{
		{"errors", []int64{404, 422, 500}},
		{"", []int64{404, 422, 500}},
		{"all", []int64{200, 201, 404, 422, 500}},
		{"none", nil},
	} {
		core, logs := observer.New(zap.InfoLevel)
		counted := 0
		h := accessLog(zap.New(core), tc.which, observerFunc(func() { counted++ }))(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			code, _ := strconv.Atoi(r.URL.Query().Get("status"))
			w.WriteHeader(code)
		}))
		for _, s := range statuses {
			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/x?status="+strconv.Itoa(s), nil))
		}
		var got []int64
		for _, e := range logs.FilterMessage("request").All() {
			got = append(got, e.ContextMap()["status"].(int64))
		}
		if !slices.Equal(got, tc.want) || counted != len(statuses) {
			t.Errorf("LOG_REQUESTS=%q: logged %v, want %v; observed %d of %d", tc.which, got, tc.want, counted, len(statuses))
		}
	}
}

// observerFunc counts observed requests.
type observerFunc func()

func (f observerFunc) ObserveRequest(string, string, int, time.Duration) { f() }
