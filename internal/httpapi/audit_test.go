package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/segments-service/segments/internal/auth"
	"github.com/segments-service/segments/internal/httpapi"
)

// auditEntry is an entry as a test compares it: what it says, without
// its id and time.
type auditEntry struct {
	Actor, Action, Kind, Slug, Changes, Error, RequestID string
}

func auditEntries(t *testing.T, list httpapi.AuditList) []auditEntry {
	t.Helper()
	out := []auditEntry{}
	for _, e := range list.Entries {
		changes, err := json.Marshal(e.Changes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, auditEntry{Actor: deref(e.Actor), Action: e.Action, Kind: e.Target.Kind, Slug: e.Target.Slug,
			Changes: string(changes), Error: deref(e.Error), RequestID: deref(e.RequestID)})
	}
	return out
}

func deref(s *string) string {
	if s == nil {
		return "<null>"
	}
	return *s
}

// TestAuditLogOfASegmentsLife: through an authenticated API, a segment's
// creation, changes and deletion, a layer's and a second segment of the
// same slug are recorded with the token's subject, the request's id and
// each changed field's from and to, newest first; a refused request, a
// PATCH that changes nothing and a replayed Idempotency-Key add nothing.
func TestAuditLogOfASegmentsLife(t *testing.T) {
	v, err := auth.New(context.Background(), auth.Config{Secret: []byte(testSecret)})
	if err != nil {
		t.Fatal(err)
	}
	a := newAPI(t, func(o *httpapi.Options) { o.Auth = v })
	mint := func(sub string, scopes ...string) string {
		tok, err := auth.Mint([]byte(testSecret), sub, scopes, time.Hour, "", "", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return "Bearer " + tok
	}
	alice, bob, reader := mint("alice", auth.ScopeAdmin, auth.ScopeRead), mint("bob", auth.ScopeAdmin), mint("reader", auth.ScopeRead)
	send := func(want int, token, id, method, path string, body any, header ...string) {
		t.Helper()
		r := a.do(method, path, body, append([]string{"Authorization", token, "X-Request-Id", id}, header...)...)
		if r.status != want {
			t.Fatalf("%s %s: %d %s, want %d", method, path, r.status, r.body, want)
		}
	}
	send(http.StatusCreated, alice, "req-layer", "POST", "/api/v1/layers", map[string]any{"slug": "CHECKOUT", "description": "Checkout tests"})
	send(http.StatusCreated, alice, "req-create", "POST", "/api/v1/segments",
		map[string]any{"slug": "RAMP", "description": "Ramp", "auto_percent": 10, "layer": "CHECKOUT",
			"auto_percent_schedule": []map[string]any{{"at": "2030-01-07T09:00:00Z", "auto_percent": 20}}})
	send(http.StatusOK, bob, "req-patch", "PATCH", "/api/v1/segments/RAMP",
		map[string]any{"description": "Ramp to 30", "auto_percent": 30, "delete_at": "2031-02-03T04:05:06.5Z", "auto_percent_schedule": nil})
	// Refused, or changing nothing: no entry.
	send(http.StatusForbidden, reader, "req-refused", "PATCH", "/api/v1/segments/RAMP", map[string]any{"description": "no"})
	send(http.StatusUnprocessableEntity, bob, "req-invalid", "PATCH", "/api/v1/segments/RAMP", map[string]any{"delete_at": "2001-01-01T00:00:00Z"})
	send(http.StatusCreated, alice, "req-fill", "POST", "/api/v1/segments", map[string]any{"slug": "FILL", "auto_percent": 70, "layer": "CHECKOUT"})
	send(http.StatusConflict, bob, "req-full", "PATCH", "/api/v1/segments/RAMP", map[string]any{"auto_percent": 40})
	send(http.StatusUnprocessableEntity, bob, "req-manual", "POST", "/api/v1/segments",
		map[string]any{"slug": "MANUAL", "auto_percent_schedule": []map[string]any{{"at": "2030-01-07T09:00:00Z", "auto_percent": 20}}})
	send(http.StatusOK, bob, "req-same", "PATCH", "/api/v1/segments/RAMP", map[string]any{"description": "Ramp to 30"})
	// A keyed delete and its replay: one entry.
	send(http.StatusNoContent, bob, "req-delete", "DELETE", "/api/v1/segments/RAMP", nil, "Idempotency-Key", "delete-ramp")
	send(http.StatusNoContent, bob, "req-replay", "DELETE", "/api/v1/segments/RAMP", nil, "Idempotency-Key", "delete-ramp")
	send(http.StatusCreated, alice, "req-again", "POST", "/api/v1/segments", map[string]any{"slug": "RAMP"})
	send(http.StatusNoContent, alice, "req-unfill", "DELETE", "/api/v1/segments/FILL", nil)
	send(http.StatusNoContent, alice, "req-other", "DELETE", "/api/v1/layers/CHECKOUT", nil)

	var list httpapi.AuditList
	r := a.do("GET", "/api/v1/segments/RAMP/audit", nil, "Authorization", reader)
	if r.status != http.StatusOK {
		t.Fatalf("GET audit: %d %s", r.status, r.body)
	}
	if err := json.Unmarshal(r.body, &list); err != nil {
		t.Fatal(err)
	}
	want := []auditEntry{
		{"alice", "create", "segment", "RAMP", `{"slug":{"from":null,"to":"RAMP"}}`, "<null>", "req-again"},
		{"bob", "delete", "segment", "RAMP", `{}`, "<null>", "req-delete"},
		{"bob", "update", "segment", "RAMP", `{"auto_percent":{"from":10,"to":30},` +
			`"auto_percent_schedule":{"from":[{"at":"2030-01-07T09:00:00Z","auto_percent":20}],"to":[]},` +
			`"delete_at":{"from":null,"to":"2031-02-03T04:05:06.5Z"},"description":{"from":"Ramp","to":"Ramp to 30"}}`, "<null>", "req-patch"},
		{"alice", "create", "segment", "RAMP", `{"auto_percent":{"from":null,"to":10},` +
			`"auto_percent_schedule":{"from":null,"to":[{"at":"2030-01-07T09:00:00Z","auto_percent":20}]},` +
			`"description":{"from":null,"to":"Ramp"},"layer":{"from":null,"to":"CHECKOUT"},"slug":{"from":null,"to":"RAMP"}}`, "<null>", "req-create"},
	}
	if diff := cmp.Diff(want, auditEntries(t, list)); diff != "" {
		t.Fatalf("RAMP's audit log (-want +got):\n%s", diff)
	}
	if list.NextAfter != nil {
		t.Fatalf("one page holds them all, yet next_after is %q", *list.NextAfter)
	}

	// Every entry, a page of two at a time, newest first.
	var all []auditEntry
	path := "/api/v1/audit?limit=2"
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("the pages do not end")
		}
		var page httpapi.AuditList
		r := a.do("GET", path, nil, "Authorization", reader)
		if r.status != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, r.status, r.body)
		}
		if err := json.Unmarshal(r.body, &page); err != nil {
			t.Fatal(err)
		}
		if len(page.Entries) > 2 {
			t.Fatalf("a page of %d entries with limit=2", len(page.Entries))
		}
		all = append(all, auditEntries(t, page)...)
		if page.NextAfter == nil {
			break
		}
		path = "/api/v1/audit?limit=2&after=" + *page.NextAfter
	}
	layerCreated := auditEntry{"alice", "create", "layer", "CHECKOUT", `{"description":{"from":null,"to":"Checkout tests"},"slug":{"from":null,"to":"CHECKOUT"}}`, "<null>", "req-layer"}
	layerDeleted := auditEntry{"alice", "delete", "layer", "CHECKOUT", `{}`, "<null>", "req-other"}
	fillCreated := auditEntry{"alice", "create", "segment", "FILL", `{"auto_percent":{"from":null,"to":70},"layer":{"from":null,"to":"CHECKOUT"},"slug":{"from":null,"to":"FILL"}}`, "<null>", "req-fill"}
	fillDeleted := auditEntry{"alice", "delete", "segment", "FILL", `{}`, "<null>", "req-unfill"}
	wantAll := []auditEntry{layerDeleted, fillDeleted, want[0], want[1], fillCreated, want[2], want[3], layerCreated}
	if diff := cmp.Diff(wantAll, all); diff != "" {
		t.Fatalf("the whole audit log, by pages (-want +got):\n%s", diff)
	}
	if n := a.scalar(`SELECT count(*) FROM audit_log`); n != int64(len(wantAll)) {
		t.Fatalf("%d entries stored, want %d", n, len(wantAll))
	}

	// A cursor that is not one, or a bad limit: 400.
	for _, q := range []string{"after=abc", "after=0", "after=-3", "limit=0", "limit=1001"} {
		a.do("GET", "/api/v1/audit?"+q, nil, "Authorization", reader).problem(t, http.StatusBadRequest)
	}
	if r := a.do("GET", "/api/v1/segments/NEVER_WAS/audit", nil, "Authorization", reader); r.status != http.StatusOK ||
		string(r.body) != `{"entries":[],"next_after":null}`+"\n" {
		t.Fatalf("a slug that never was: %d %s", r.status, r.body)
	}
}

// With authentication off, the actor is null; the request id is the one
// the service gave the request when the caller sent none.
func TestAuditActorWithoutAuthentication(t *testing.T) {
	a := newAPI(t)
	r := a.mustDo(http.StatusCreated, "POST", "/api/v1/segments", map[string]any{"slug": "OPEN"}, nil)
	var list httpapi.AuditList
	a.mustDo(http.StatusOK, "GET", "/api/v1/audit", nil, &list)
	want := []auditEntry{{"<null>", "create", "segment", "OPEN", `{"slug":{"from":null,"to":"OPEN"}}`, "<null>", r.header.Get("X-Request-Id")}}
	if diff := cmp.Diff(want, auditEntries(t, list)); diff != "" || r.header.Get("X-Request-Id") == "" {
		t.Fatalf("entries (-want +got):\n%s", diff)
	}
}

// A schedule's steps are checked: at most 20, in the future, strictly
// increasing, percents as auto_percent's, on a percent segment; each
// refusal a 4xx that changes nothing.
func TestScheduleInput(t *testing.T) {
	a := newAPI(t)
	a.mustDo(http.StatusCreated, "POST", "/api/v1/segments", map[string]any{"slug": "P", "auto_percent": 10}, nil)
	a.mustDo(http.StatusCreated, "POST", "/api/v1/segments", map[string]any{"slug": "M"}, nil)
	future := time.Now().Add(time.Hour).UTC()
	step := func(at time.Time, p any) map[string]any {
		return map[string]any{"at": at.Format(time.RFC3339Nano), "auto_percent": p}
	}
	many := []map[string]any{}
	for i := range 21 {
		many = append(many, step(future.Add(time.Duration(i)*time.Minute), 10))
	}
	before := a.scalar(`SELECT count(*) FROM audit_log`)
	for _, tc := range []struct {
		name, path string
		body       any
		status     int
		field      string
	}{
		{"past", "/api/v1/segments/P", []map[string]any{step(time.Now().Add(-time.Minute), 20)}, 422, "/auto_percent_schedule/0/at"},
		{"not increasing", "/api/v1/segments/P", []map[string]any{step(future, 20), step(future, 30)}, 422, "/auto_percent_schedule/1/at"},
		{"too many", "/api/v1/segments/P", many, 422, "/auto_percent_schedule"},
		{"percent over 100", "/api/v1/segments/P", []map[string]any{step(future, 100.01)}, 422, "/auto_percent_schedule/0/auto_percent"},
		{"three decimals", "/api/v1/segments/P", []map[string]any{step(future, 10.005)}, 422, "/auto_percent_schedule/0/auto_percent"},
		{"no percent", "/api/v1/segments/P", []map[string]any{{"at": future.Format(time.RFC3339)}}, 422, "/auto_percent_schedule/0/auto_percent"},
		{"manual", "/api/v1/segments/M", []map[string]any{step(future, 20)}, 422, "/auto_percent_schedule"},
		{"not a time", "/api/v1/segments/P", []map[string]any{{"at": "Monday", "auto_percent": 20}}, 400, ""},
		{"unknown member", "/api/v1/segments/P", []map[string]any{{"at": future.Format(time.RFC3339), "auto_percent": 20, "percent": 1}}, 400, ""},
		{"member in another case", "/api/v1/segments/P", []map[string]any{{"AT": future.Format(time.RFC3339), "auto_percent": 20}}, 400, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := a.do("PATCH", tc.path, map[string]any{"auto_percent_schedule": tc.body}).problem(t, tc.status)
			if tc.field != "" && (len(p.Errors) == 0 || p.Errors[0].Pointer != "#"+tc.field) {
				t.Fatalf("errors %+v, want one naming %s", p.Errors, tc.field)
			}
		})
	}
	if n := a.scalar(`SELECT count(*) FROM audit_log`) - before; n != 0 {
		t.Fatalf("refused schedules left %d audit entries", n)
	}
	if n := a.scalar(`SELECT count(*) FROM segments WHERE auto_percent_schedule <> '[]' OR next_step_at IS NOT NULL`); n != 0 {
		t.Fatalf("refused schedules were stored on %d segments", n)
	}

	// A plan is stored to the microsecond, in UTC, and shown as stored.
	at := time.Date(2030, 1, 7, 9, 0, 0, 123456789, time.FixedZone("", 3*3600))
	var seg httpapi.Segment
	a.mustDo(http.StatusOK, "PATCH", "/api/v1/segments/P", map[string]any{"auto_percent_schedule": []map[string]any{step(at, 12.5)}}, &seg)
	want := []httpapi.ScheduleStep{{At: time.Date(2030, 1, 7, 6, 0, 0, 123456000, time.UTC), AutoPercent: 12.5}}
	if diff := cmp.Diff(want, seg.AutoPercentSchedule); diff != "" {
		t.Fatalf("stored plan (-want +got):\n%s", diff)
	}
	a.mustDo(http.StatusOK, "GET", "/api/v1/segments/P", nil, &seg)
	if diff := cmp.Diff(want, seg.AutoPercentSchedule); diff != "" {
		t.Fatalf("plan read back (-want +got):\n%s", diff)
	}
	if got := a.scalar(`SELECT extract(epoch FROM next_step_at)::bigint FROM segments WHERE slug = 'P'`); got != want[0].At.Unix() {
		t.Fatalf("next_step_at %d, want %d", got, want[0].At.Unix())
	}
	// [] and null clear it.
	for _, clear := range []any{[]any{}, nil} {
		a.mustDo(http.StatusOK, "PATCH", "/api/v1/segments/P", map[string]any{"auto_percent_schedule": []map[string]any{step(at, 20)}}, nil)
		a.mustDo(http.StatusOK, "PATCH", "/api/v1/segments/P", map[string]any{"auto_percent_schedule": clear}, &seg)
		if len(seg.AutoPercentSchedule) != 0 || seg.AutoPercentSchedule == nil {
			t.Fatalf("after clearing with %v: %#v", clear, seg.AutoPercentSchedule)
		}
		if n := a.scalar(`SELECT count(*) FROM segments WHERE next_step_at IS NOT NULL`); n != 0 {
			t.Fatal(fmt.Sprintf("clearing with %v left next_step_at", clear))
		}
	}
}
