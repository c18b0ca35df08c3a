package httpapi_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/segments-service/segments/internal/auth"
	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/tools/localserver"
)

// The holes outside testing found (issue "What outside testing found,
// round 2"), one test each.

// verifier returns an HS256 verifier over testSecret and a function that
// mints a bearer header value for a subject and scopes.
func verifier(t *testing.T) (*auth.Verifier, func(sub string, scopes ...string) string) {
	t.Helper()
	v, err := auth.New(context.Background(), auth.Config{Secret: []byte(testSecret)})
	if err != nil {
		t.Fatal(err)
	}
	return v, func(sub string, scopes ...string) string {
		tok, err := auth.Mint([]byte(testSecret), sub, scopes, time.Hour, "", "", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return "Bearer " + tok
	}
}

// A caller with segments:read alone cannot grow the population that
// percent segments are drawn from by reading made-up ids: its read of an
// unknown user answers that the user holds nothing and registers nobody.
// A caller that may write registers the user on its read, as before; so
// does every reader with READS_REGISTER_USERS=always, and none with never.
func TestReadOnlyCallersRegisterNobody(t *testing.T) {
	v, bearer := verifier(t)
	for _, tc := range []struct {
		policy             string
		readerRegisters    bool
		writerRegisters    bool
		readerSeesTheShare bool
	}{
		{policy: "", readerRegisters: false, writerRegisters: true},
		{policy: httpapi.ReadsRegisterWriteScope, readerRegisters: false, writerRegisters: true},
		{policy: httpapi.ReadsRegisterAlways, readerRegisters: true, writerRegisters: true},
		{policy: httpapi.ReadsRegisterNever, readerRegisters: false, writerRegisters: false},
	} {
		t.Run("policy "+tc.policy, func(t *testing.T) {
			a := newAPI(t, func(o *httpapi.Options) { o.Auth, o.ReadsRegister = v, tc.policy })
			admin, reader, writer := bearer("analyst", auth.ScopeAdmin), bearer("page-views", auth.ScopeRead), bearer("checkout", auth.ScopeRead, auth.ScopeWrite)
			if r := a.do("POST", "/api/v1/segments", map[string]any{"slug": "EVERYONE", "auto_percent": 100}, "Authorization", admin); r.status != http.StatusCreated {
				t.Fatalf("create: %d %s", r.status, r.body)
			}
			read := func(user int64, who string) string {
				t.Helper()
				r := a.do("GET", fmt.Sprintf("/api/v1/users/%d/segments", user), nil, "Authorization", who)
				if r.status != http.StatusOK {
					t.Fatalf("read of %d: %d %s", user, r.status, r.body)
				}
				return strings.TrimSpace(string(r.body))
			}
			registered := func(user int64) bool {
				return a.scalar(`SELECT count(*) FROM users WHERE id = $1`, user) == 1
			}
			for range 2 { // the second read must not come from a cache the first filled
				got := read(777, reader)
				if registered(777) != tc.readerRegisters {
					t.Fatalf("after a read-only read, user 777 registered: %v, want %v", registered(777), tc.readerRegisters)
				}
				if !tc.readerRegisters && got != `{"user_id":777,"segments":[]}` {
					t.Fatalf("a read-only read of an unknown user: %s", got)
				}
			}
			got := read(888, writer)
			if registered(888) != tc.writerRegisters {
				t.Fatalf("after a writer's read, user 888 registered: %v, want %v", registered(888), tc.writerRegisters)
			}
			if tc.writerRegisters != strings.Contains(got, `"slug":"EVERYONE"`) {
				t.Fatalf("a writer's read of a new user: %s", got)
			}
			if !tc.readerRegisters && tc.writerRegisters {
				// The read-only reads left no cached answer that keeps a
				// writer's read from registering the user.
				if got := read(777, writer); !registered(777) || !strings.Contains(got, `"slug":"EVERYONE"`) {
					t.Fatalf("a writer's read after read-only ones: %s, registered %v", got, registered(777))
				}
			}
		})
	}
}

// /readyz says which check failed, never how: the driver's message (with
// the database's host, port, user and name) goes to the log only.
func TestReadinessSaysWhichNotHow(t *testing.T) {
	port, err := localserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(context.Background(), fmt.Sprintf("postgres://secretuser@127.0.0.1:%d/secretdb?connect_timeout=1", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	core, logs := observer.New(zap.InfoLevel)
	a := newAPI(t, func(o *httpapi.Options) {
		o.Log = zap.New(core)
		o.Checks = []httpapi.Check{
			{Name: "postgres", Ping: func(ctx context.Context) error { return postgres.Ready(ctx, pool) }},
			{Name: "redis", Ping: func(context.Context) error { return nil }},
		}
	})
	r := a.do("GET", "/readyz", nil)
	if r.status != http.StatusServiceUnavailable {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	if got, want := strings.TrimSpace(string(r.body)), `{"status":"unavailable","checks":{"postgres":"unavailable","redis":"ok"}}`; got != want {
		t.Fatalf("body %s, want %s", got, want)
	}
	var logged bool
	for _, e := range logs.FilterMessage("not ready").All() {
		logged = logged || strings.Contains(fmt.Sprint(e.ContextMap()), fmt.Sprint(port))
	}
	if !logged {
		t.Error("the log does not say how the check failed")
	}
}

// With authentication on, the task queues UI (which can delete, retry and
// archive tasks and shows their payloads) needs segments:admin.
func TestQueuesUINeedsAdmin(t *testing.T) {
	v, bearer := verifier(t)
	reached := 0
	a := newAPI(t, func(o *httpapi.Options) {
		o.Auth = v
		o.QueuesUI = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { reached++; w.WriteHeader(http.StatusOK) })
	})
	for _, path := range []string{httpapi.QueuesUIPath, httpapi.QueuesUIPath + "/api/queues/segments"} {
		a.do("GET", path, nil).problem(t, http.StatusUnauthorized)
		a.do("DELETE", path, nil, "Authorization", bearer("page-views", auth.ScopeRead, auth.ScopeWrite)).problem(t, http.StatusForbidden)
		if reached != 0 {
			t.Fatalf("%s: the UI was reached without segments:admin", path)
		}
		if r := a.do("GET", path, nil, "Authorization", bearer("operator", auth.ScopeAdmin)); r.status != http.StatusOK || reached != 1 {
			t.Fatalf("%s with segments:admin: %d, reached %d times", path, r.status, reached)
		}
		reached = 0
	}
}

// Idempotency-Keys are kept per subject: a token without one would share
// its keys with every other such token (B's retry would get A's answer),
// so a key with such a token is refused and nothing runs.
func TestKeyWithoutSubjectIsRefused(t *testing.T) {
	v, bearer := verifier(t)
	a := newAPI(t, func(o *httpapi.Options) { o.Auth = v })
	admin := bearer("analyst", auth.ScopeAdmin)
	if r := a.do("POST", "/api/v1/segments", map[string]any{"slug": "KEYED"}, "Authorization", admin); r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	anonymous := bearer("", auth.ScopeWrite)
	p := a.keyed("k-1", "POST", "/api/v1/users/1/segments", map[string]any{"add": []string{"KEYED"}}, "Authorization", anonymous).problem(t, http.StatusBadRequest)
	if !strings.Contains(p.Detail, "sub") {
		t.Errorf("detail %q does not name the sub claim", p.Detail)
	}
	if n := a.scalar(`SELECT count(*) FROM users WHERE id = 1`) + a.scalar(`SELECT count(*) FROM idempotency_keys`); n != 0 {
		t.Fatalf("a refused keyed request left %d rows", n)
	}
	// Without a key the same token works; with a subject, so does the key.
	if r := a.do("POST", "/api/v1/users/1/segments", map[string]any{"add": []string{"KEYED"}}, "Authorization", anonymous); r.status != http.StatusOK {
		t.Fatalf("unkeyed: %d %s", r.status, r.body)
	}
	if r := a.keyed("k-1", "POST", "/api/v1/users/2/segments", map[string]any{"add": []string{"KEYED"}}, "Authorization", bearer("checkout", auth.ScopeWrite)); r.status != http.StatusOK {
		t.Fatalf("keyed with a subject: %d %s", r.status, r.body)
	}
}

// A report link's token is a credential for 24 hours: no log line carries
// it, whatever the answer.
func TestReportTokensStayOutOfLogs(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	a := newAPI(t, func(o *httpapi.Options) { o.Log, o.LogRequests = zap.New(core), "all" })
	a.createSegment("LOGS")
	var link httpapi.ReportLink
	a.mustDo(http.StatusCreated, "POST", "/api/v1/reports/history", map[string]any{"period": "2026-11"}, &link)
	var members httpapi.ReportLink
	a.mustDo(http.StatusCreated, "POST", "/api/v1/reports/members", map[string]any{"slug": "LOGS"}, &members)
	a.do("DELETE", "/api/v1/segments/LOGS", nil)

	token := link.URL[strings.LastIndex(link.URL, "/")+1:]
	membersToken := members.URL[strings.LastIndex(members.URL, "/")+1:]
	for _, path := range []string{
		link.URL,                          // 200
		link.URL[:len(link.URL)-3] + "xx", // 403: tampered
		link.URL + "/more",                // 404
		members.URL,                       // 404: the segment is gone
	} {
		a.do("GET", path, nil)
		a.do("POST", path, nil) // 405
	}
	var lines int
	for _, e := range logs.All() {
		line := e.Message + fmt.Sprint(e.ContextMap())
		for _, secret := range []string{token[:len(token)-3], membersToken[:len(membersToken)-3]} {
			if strings.Contains(line, secret) {
				t.Errorf("a log line carries a report token: %s", line)
			}
		}
		if e.Message == "request" && strings.HasPrefix(fmt.Sprint(e.ContextMap()["path"]), "/api/v1/reports/") {
			lines++
		}
	}
	if lines < 8 {
		t.Fatalf("only %d access log lines for the report paths", lines)
	}
}

// A history page's cursor is one the service gave out or a 400: never a
// value out of PostgreSQL's range (a 500), nor another spelling of one.
func TestHistoryCursorsAreChecked(t *testing.T) {
	a := newAPI(t)
	a.createSegment("PAGED")
	for range 3 {
		a.mustDo(http.StatusOK, "POST", "/api/v1/users/1/segments", map[string]any{"add": []string{"PAGED"}}, nil)
		a.mustDo(http.StatusOK, "POST", "/api/v1/users/1/segments", map[string]any{"remove": []string{"PAGED"}}, nil)
	}
	var page httpapi.UserHistory
	a.mustDo(http.StatusOK, "GET", "/api/v1/users/1/history?limit=2", nil, &page)
	if page.NextAfter == nil {
		t.Fatal("no next page")
	}
	a.mustDo(http.StatusOK, "GET", "/api/v1/users/1/history?limit=2&after="+*page.NextAfter, nil, &page)
	for _, bad := range []string{
		"9223372036854775807-1", // year 294247
		"253402300800000000-1",  // 10000-01-01
		"-1-1", "+1-1", "01-1", "1-+2", "1-02", "1--2", "1-", "-", "1", "1-9223372036854775808",
	} {
		p := a.do("GET", "/api/v1/users/1/history?after="+url.QueryEscape(bad), nil).problem(t, http.StatusBadRequest)
		if !strings.Contains(p.Detail, "not one this service gave out") {
			t.Errorf("after=%s: %s", bad, p.Detail)
		}
	}
}
