package httpapi_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/tools/apitest"
	"github.com/segments-service/segments/tools/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Run(m, &env) }

// testAPI is the real router on a database of the test's own.
type testAPI struct {
	t    testing.TB
	h    http.Handler
	pool *pgxpool.Pool
	// skew moves the services' clock (nanoseconds), to expire links.
	skew atomic.Int64
}

// newAPI builds the router; each option may change its Options.
func newAPI(t testing.TB, options ...func(*httpapi.Options)) *testAPI {
	t.Helper()
	pool := env.NewPool(t)
	a := &testAPI{t: t, pool: pool}
	// Every test runs with the read cache on, as the service does.
	o := apitest.RouterOptions(t, pool, env.RedisURL,
		map[string]string{"WORKER_QUEUE": "httpapi-test", "REPORT_SECRET": testSecret, "REPORT_TIMEOUT": "1m"},
		func() time.Time { return time.Now().Add(time.Duration(a.skew.Load())) },
		zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	for _, f := range options {
		f(&o)
	}
	a.h = httpapi.NewRouter(o)
	return a
}

const testSecret = "a test secret of at least 32 bytes, not a real one"

// response is a recorded response with its body.
type response struct {
	status int
	header http.Header
	body   []byte
}

func responseOf(r apitest.Response) response {
	return response{status: r.Status, header: r.Header, body: r.Body}
}

// do sends a request through the router (see apitest.Do).
func (a *testAPI) do(method, path string, body any, header ...string) response {
	a.t.Helper()
	return responseOf(apitest.Do(a.t, a.h, method, path, body, header...))
}

// mustDo is do that fails the test unless the status is want, and decodes
// the body into out (if not nil).
func (a *testAPI) mustDo(want int, method, path string, body, out any) response {
	a.t.Helper()
	return responseOf(apitest.MustDo(a.t, a.h, want, method, path, body, out))
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
	return apitest.Column(a.t, a.pool, sql, args...)
}

// scalar runs a SQL query returning one value.
func (a *testAPI) scalar(sql string, args ...any) int64 {
	a.t.Helper()
	return apitest.Scalar(a.t, a.pool, sql, args...)
}
