package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"segments/internal/httpapi"
	"segments/internal/postgres"
	"segments/internal/service"
	"segments/internal/testenv"
	"segments/internal/worker"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Run(m, &env) }

// testAPI is the real router on a database of the test's own.
type testAPI struct {
	t    *testing.T
	h    http.Handler
	pool *pgxpool.Pool
	// skew moves the reports' clock (nanoseconds), to expire links.
	skew atomic.Int64
}

func newAPI(t *testing.T) *testAPI {
	t.Helper()
	pool := env.NewPool(t)
	opt, err := redis.ParseURL(env.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { rdb.Close() })
	tasks := worker.NewClient(rdb, "httpapi-test")
	a := &testAPI{t: t, pool: pool}
	clock := func() time.Time { return time.Now().Add(time.Duration(a.skew.Load())) }
	a.h = httpapi.NewRouter(httpapi.Options{
		Segments: service.NewSegments(postgres.NewSegmentRepo(pool), tasks, service.NopRecorder{}, zap.NewNop()),
		Users:    service.NewUsers(postgres.NewUserRepo(pool), tasks, service.NopRecorder{}, time.Now, zap.NewNop()),
		Reports:  service.NewReports(postgres.NewHistoryRepo(pool, time.Minute), service.NopRecorder{}, []byte(testSecret), 24*time.Hour, clock),
		Checks: []httpapi.Check{
			{Name: "postgres", Ping: pool.Ping},
			{Name: "redis", Ping: func(ctx context.Context) error { return rdb.Ping(ctx).Err() }},
		},
		Log:            zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		RequestTimeout: 30 * time.Second,
		ReportTimeout:  time.Minute,
	})
	return a
}

const testSecret = "a test secret of at least 32 bytes, not a real one"

// response is a recorded response with its body.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request through the router. A string body is sent as is; any
// other non-nil body is encoded as JSON. JSON bodies get the JSON content
// type unless header sets another.
func (a *testAPI) do(method, path string, body any, header ...string) response {
	a.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			a.t.Fatal(err)
		}
		rd = bytes.NewReader(enc)
	}
	req := httptest.NewRequest(method, path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		if header[i] == "Host" {
			req.Host = header[i+1]
			continue
		}
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	a.h.ServeHTTP(rec, req)
	return response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
}

// mustDo is do that fails the test unless the status is want, and decodes
// the body into out (if not nil).
func (a *testAPI) mustDo(want int, method, path string, body, out any) response {
	a.t.Helper()
	r := a.do(method, path, body)
	if r.status != want {
		a.t.Fatalf("%s %s: status %d, want %d; body: %s", method, path, r.status, want, r.body)
	}
	if out != nil {
		if err := json.Unmarshal(r.body, out); err != nil {
			a.t.Fatalf("%s %s: decode %s: %v", method, path, r.body, err)
		}
	}
	return r
}

// problem decodes r as a problem, failing the test unless the status and
// content type are right.
func (r response) problem(t *testing.T, wantStatus int) httpapi.Problem {
	t.Helper()
	if r.status != wantStatus {
		t.Fatalf("status %d, want %d; body: %s", r.status, wantStatus, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q, want application/problem+json", ct)
	}
	var p httpapi.Problem
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("decode problem %s: %v", r.body, err)
	}
	if p.Status != wantStatus || p.Title == "" || p.Type == "" || p.Detail == "" || p.RequestID == "" {
		t.Fatalf("incomplete problem: %s", r.body)
	}
	return p
}

func (a *testAPI) createSegment(slug string) {
	a.t.Helper()
	a.mustDo(http.StatusCreated, "POST", "/api/v1/segments", map[string]any{"slug": slug}, nil)
}

// column runs a SQL query and returns its single text column.
func (a *testAPI) column(sql string, args ...any) []string {
	a.t.Helper()
	rows, _ := a.pool.Query(context.Background(), sql, args...)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		a.t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// scalar runs a SQL query returning one value.
func (a *testAPI) scalar(sql string, args ...any) int64 {
	a.t.Helper()
	var n int64
	if err := a.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		a.t.Fatalf("%s: %v", sql, err)
	}
	return n
}
