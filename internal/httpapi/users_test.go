package httpapi_test

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/segments-service/segments/internal/httpapi"
)

func slugsOf(ms []httpapi.Membership) []string {
	out := []string{}
	for _, m := range ms {
		out = append(out, m.Slug)
	}
	return out
}

func TestRegisterUsers(t *testing.T) {
	a := newAPI(t)
	var res httpapi.RegisterUsersResponse
	a.mustDo(http.StatusOK, "POST", "/api/v1/users", map[string]any{"user_ids": []int64{3, 1, 2, 2, 9223372036854775807}}, &res)
	if res.Registered != 4 {
		t.Errorf("registered = %d, want 4 (one id repeated)", res.Registered)
	}
	a.mustDo(http.StatusOK, "POST", "/api/v1/users", map[string]any{"user_ids": []int64{1, 2, 4}}, &res)
	if res.Registered != 1 {
		t.Errorf("registered = %d, want 1 (only 4 is new)", res.Registered)
	}
	if n := a.scalar(`SELECT count(*) FROM users`); n != 5 {
		t.Errorf("%d users, want 5", n)
	}

	ids := make([]int64, 10000)
	for i := range ids {
		ids[i] = int64(1000 + i)
	}
	a.mustDo(http.StatusOK, "POST", "/api/v1/users", map[string]any{"user_ids": ids}, &res)
	if res.Registered != 10000 {
		t.Errorf("registered = %d, want 10000", res.Registered)
	}
}

func TestRegisterUsersRejectsBadInput(t *testing.T) {
	a := newAPI(t)
	tooMany := make([]int64, 10001)
	for i := range tooMany {
		tooMany[i] = int64(i + 1)
	}
	tests := []struct {
		name    string
		body    any
		status  int
		pointer string
	}{
		{"no user_ids", `{}`, 422, "#/user_ids"},
		{"null user_ids", `{"user_ids":null}`, 422, "#/user_ids"},
		{"empty list", `{"user_ids":[]}`, 422, "#/user_ids"},
		{"zero id", `{"user_ids":[1,0]}`, 422, "#/user_ids/1"},
		{"negative id", `{"user_ids":[-5]}`, 422, "#/user_ids/0"},
		{"more than 10,000", map[string]any{"user_ids": tooMany}, 422, "#/user_ids"},
		{"id beyond int64", `{"user_ids":[9223372036854775808]}`, 400, ""},
		{"fractional id", `{"user_ids":[1.5]}`, 400, ""},
		{"string id", `{"user_ids":["1"]}`, 400, ""},
		{"not a list", `{"user_ids":1}`, 400, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := a.do("POST", "/api/v1/users", tc.body).problem(t, tc.status)
			if tc.pointer != "" && (len(p.Errors) != 1 || p.Errors[0].Pointer != tc.pointer) {
				t.Errorf("errors = %+v, want one for %s", p.Errors, tc.pointer)
			}
		})
	}
	if n := a.scalar(`SELECT count(*) FROM users`); n != 0 {
		t.Errorf("%d users registered by bad requests", n)
	}
}

func TestGetUserSegmentsRegistersUnknownUser(t *testing.T) {
	a := newAPI(t)
	r := a.mustDo(http.StatusOK, "GET", "/api/v1/users/1000/segments", nil, nil)
	if got, want := strings.TrimSpace(string(r.body)), `{"user_id":1000,"segments":[]}`; got != want {
		t.Errorf("body = %s, want %s", got, want)
	}
	if n := a.scalar(`SELECT count(*) FROM users WHERE id = 1000`); n != 1 {
		t.Errorf("user 1000 registered %d times, want once", n)
	}
	a.mustDo(http.StatusOK, "GET", "/api/v1/users/1000/segments", nil, nil)
	if n := a.scalar(`SELECT count(*) FROM users`); n != 1 {
		t.Errorf("%d users after two reads, want 1", n)
	}
}

func TestGetUserSegmentsRejectsBadIDs(t *testing.T) {
	a := newAPI(t)
	for _, id := range []string{"0", "-1", "abc", "1.5", "9223372036854775808", "99999999999999999999", "1e3", "%20"} {
		t.Run(id, func(t *testing.T) {
			p := a.do("GET", "/api/v1/users/"+id+"/segments", nil).problem(t, http.StatusBadRequest)
			if !strings.Contains(p.Detail, "user_id") {
				t.Errorf("detail %q does not name user_id", p.Detail)
			}
			a.do("POST", "/api/v1/users/"+id+"/segments", map[string]any{"add": []string{"A"}}).problem(t, http.StatusBadRequest)
		})
	}
	if n := a.scalar(`SELECT count(*) FROM users`); n != 0 {
		t.Errorf("%d users registered by bad ids", n)
	}
}

func TestChangeUserSegments(t *testing.T) {
	a := newAPI(t)
	for _, s := range []string{"a", "B", "C", "D"} {
		a.createSegment(s)
	}

	var res httpapi.ChangeSegmentsResponse
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/7/segments", map[string]any{"add": []string{"a", "B", "C"}}, &res)
	if diff := cmp.Diff([]string{"B", "C", "a"}, res.Added); diff != "" {
		t.Errorf("added (-want +got):\n%s", diff)
	}
	if len(res.Removed) != 0 || res.UserID != 7 {
		t.Errorf("response = %+v", res)
	}
	if diff := cmp.Diff([]string{"B", "C", "a"}, slugsOf(res.Segments)); diff != "" {
		t.Errorf("segments (-want +got):\n%s", diff)
	}
	for _, m := range res.Segments {
		if m.Source != "manual" || m.ExpiresAt != nil || m.AddedAt.IsZero() {
			t.Errorf("membership %+v", m)
		}
	}
	addedAt := res.Segments[0].AddedAt

	// Re-adding a held segment changes nothing; removing one not held is a
	// no-op; D is new.
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/7/segments",
		map[string]any{"add": []string{"B", "D"}, "remove": []string{"C", "C", "a"}}, &res)
	if diff := cmp.Diff(httpapi.ChangeSegmentsResponse{
		UserID:  7,
		Added:   []string{"D"},
		Removed: []string{"C", "a"},
	}, res, cmpIgnoreSegments); diff != "" {
		t.Errorf("second change (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"B", "D"}, slugsOf(res.Segments)); diff != "" {
		t.Errorf("segments (-want +got):\n%s", diff)
	}
	if !res.Segments[0].AddedAt.Equal(addedAt) {
		t.Errorf("re-add moved added_at from %v to %v", addedAt, res.Segments[0].AddedAt)
	}
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/7/segments", map[string]any{"remove": []string{"C"}}, &res)
	if len(res.Added)+len(res.Removed) != 0 {
		t.Errorf("no-op change reported %+v", res)
	}

	// GET returns exactly what the change returned.
	var got httpapi.UserSegments
	a.mustDo(http.StatusOK, "GET", "/api/v1/users/7/segments", nil, &got)
	if diff := cmp.Diff(res.Segments, got.Segments); diff != "" {
		t.Errorf("GET differs from the change's segments (-change +get):\n%s", diff)
	}

	// History: one row per membership that appeared or disappeared.
	if n := a.scalar(`SELECT count(*) FROM membership_history WHERE user_id = 7 AND reason = 'manual'`); n != 6 {
		t.Errorf("%d history rows, want 6 (4 adds, 2 removes)", n)
	}
}

var cmpIgnoreSegments = cmp.FilterPath(func(p cmp.Path) bool { return p.String() == "Segments" }, cmp.Ignore())

func TestChangeUserSegmentsExpiry(t *testing.T) {
	a := newAPI(t)
	a.createSegment("DISCOUNT")
	a.createSegment("OTHER")

	var res httpapi.ChangeSegmentsResponse
	start := time.Now()
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/5/segments", map[string]any{"add": []string{"DISCOUNT"}, "ttl_seconds": 172800}, &res)
	exp := res.Segments[0].ExpiresAt
	if exp == nil || exp.Sub(start) < 172800*time.Second || exp.Sub(start) > 172810*time.Second {
		t.Fatalf("expires_at = %v, want two days from %v", exp, start)
	}
	addedAt := res.Segments[0].AddedAt

	// The same expiry again: nothing changes.
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/5/segments", map[string]any{"add": []string{"DISCOUNT"}, "expires_at": exp.Format(time.RFC3339Nano)}, &res)
	if len(res.Added) != 0 {
		t.Errorf("same expiry reported as added: %+v", res.Added)
	}

	// A new expiry replaces the old one and counts as added; added_at stays.
	at := time.Date(2031, 1, 2, 15, 4, 5, 0, time.UTC)
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/5/segments", map[string]any{"add": []string{"DISCOUNT", "OTHER"}, "expires_at": "2031-01-02T18:04:05+03:00"}, &res)
	if diff := cmp.Diff([]string{"DISCOUNT", "OTHER"}, res.Added); diff != "" {
		t.Errorf("added (-want +got):\n%s", diff)
	}
	for _, m := range res.Segments {
		if m.ExpiresAt == nil || !m.ExpiresAt.Equal(at) {
			t.Errorf("%s expires_at = %v, want %v", m.Slug, m.ExpiresAt, at)
		}
	}
	if !res.Segments[0].AddedAt.Equal(addedAt) {
		t.Errorf("added_at moved from %v to %v", addedAt, res.Segments[0].AddedAt)
	}

	// Re-adding without an expiry makes it permanent.
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/5/segments", map[string]any{"add": []string{"DISCOUNT"}}, &res)
	if diff := cmp.Diff([]string{"DISCOUNT"}, res.Added); diff != "" {
		t.Errorf("added (-want +got):\n%s", diff)
	}
	if res.Segments[0].ExpiresAt != nil || res.Segments[1].ExpiresAt == nil {
		t.Errorf("segments = %+v, want DISCOUNT permanent and OTHER still expiring", res.Segments)
	}
	if n := a.scalar(`SELECT count(*) FROM membership_history WHERE user_id = 5`); n != 2 {
		t.Errorf("%d history rows, want 2: expiry changes are not membership changes", n)
	}
}

func TestChangeUserSegmentsRejectsBadInput(t *testing.T) {
	a := newAPI(t)
	a.createSegment("A")
	a.createSegment("B")
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/1/segments", map[string]any{"add": []string{"A"}}, nil)

	many := func(n int, prefix string) []string {
		s := make([]string, n)
		for i := range s {
			s[i] = fmt.Sprintf("%s%d", prefix, i)
		}
		return s
	}
	tests := []struct {
		name     string
		body     any
		status   int
		pointers []string
		unknown  []string
	}{
		{"unknown in add and remove", map[string]any{"add": []string{"B", "NOPE", "ALSO_NOPE"}, "remove": []string{"A", "GONE"}},
			404, nil, []string{"ALSO_NOPE", "GONE", "NOPE"}},
		{"slug in both lists", map[string]any{"add": []string{"A", "B"}, "remove": []string{"B"}}, 422, []string{"#/remove/0"}, nil},
		{"both expiry forms", map[string]any{"add": []string{"B"}, "ttl_seconds": 60, "expires_at": "2031-01-01T00:00:00Z"}, 422, []string{"#/expires_at"}, nil},
		{"expiry in the past", map[string]any{"add": []string{"B"}, "expires_at": "2020-01-01T00:00:00Z"}, 422, []string{"#/expires_at"}, nil},
		{"zero ttl", map[string]any{"add": []string{"B"}, "ttl_seconds": 0}, 422, []string{"#/ttl_seconds"}, nil},
		{"negative ttl", map[string]any{"add": []string{"B"}, "ttl_seconds": -1}, 422, []string{"#/ttl_seconds"}, nil},
		{"ttl over a century", map[string]any{"add": []string{"B"}, "ttl_seconds": 3153600001}, 422, []string{"#/ttl_seconds"}, nil},
		{"both lists empty", map[string]any{"add": []string{}, "remove": []string{}}, 422, []string{"#/add"}, nil},
		{"no lists", map[string]any{}, 422, []string{"#/add"}, nil},
		{"bad slugs", map[string]any{"add": []string{"B", "no spaces", "B"}, "remove": []string{"-x"}}, 422, []string{"#/add/1", "#/remove/0"}, nil},
		{"1,001 slugs to add", map[string]any{"add": many(1001, "S")}, 422, []string{"#/add"}, nil},
		{"600 + 600 slugs", map[string]any{"add": many(600, "S"), "remove": many(600, "R")}, 422, []string{"#/add"}, nil},
		{"5,000 slugs", map[string]any{"add": many(5000, "S")}, 422, []string{"#/add"}, nil},
		{"expires_at not RFC 3339", map[string]any{"add": []string{"B"}, "expires_at": "tomorrow"}, 400, nil, nil},
		{"expires_at a number", map[string]any{"add": []string{"B"}, "expires_at": 1700000000}, 400, nil, nil},
		{"ttl a string", map[string]any{"add": []string{"B"}, "ttl_seconds": "60"}, 400, nil, nil},
		{"add a string", map[string]any{"add": "B"}, 400, nil, nil},
		{"add holds a number", map[string]any{"add": []any{1}}, 400, nil, nil},
		{"unknown field", map[string]any{"add": []string{"B"}, "ttl": 60}, 400, nil, nil},
		{"truncated", `{"add":["B"`, 400, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := a.do("POST", "/api/v1/users/1/segments", tc.body).problem(t, tc.status)
			var pointers []string
			for _, e := range p.Errors {
				pointers = append(pointers, e.Pointer)
			}
			if diff := cmp.Diff(tc.pointers, pointers); diff != "" {
				t.Errorf("error pointers (-want +got):\n%s\n%+v", diff, p)
			}
			if diff := cmp.Diff(tc.unknown, p.UnknownSlugs); diff != "" {
				t.Errorf("unknown_slugs (-want +got):\n%s", diff)
			}
			if tc.unknown != nil && p.Type != "urn:segments:problem:unknown-segments" {
				t.Errorf("type = %q", p.Type)
			}
		})
	}

	// Nothing changed: user 1 still holds exactly A, and history has only
	// the first add.
	var us httpapi.UserSegments
	a.mustDo(http.StatusOK, "GET", "/api/v1/users/1/segments", nil, &us)
	if diff := cmp.Diff([]string{"A"}, slugsOf(us.Segments)); diff != "" {
		t.Errorf("segments after bad requests (-want +got):\n%s", diff)
	}
	if n := a.scalar(`SELECT count(*) FROM membership_history`); n != 1 {
		t.Errorf("%d history rows, want 1", n)
	}
	// An unknown slug for a new user does not register the user.
	a.do("POST", "/api/v1/users/2/segments", map[string]any{"add": []string{"NOPE"}}).problem(t, http.StatusNotFound)
	if n := a.scalar(`SELECT count(*) FROM users WHERE id = 2`); n != 0 {
		t.Errorf("user 2 registered by a failed change")
	}
}

func TestUserSegmentsSortedByBytesAndNeverExpired(t *testing.T) {
	a := newAPI(t)
	slugs := []string{"b", "B", "a.1", "a-1", "a_1", "A", "0"}
	for _, s := range slugs {
		a.createSegment(s)
	}
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/9/segments", map[string]any{"add": slugs}, nil)
	// Let "b" expire.
	if _, err := a.pool.Exec(t.Context(), `UPDATE memberships m SET expires_at = m.added_at + interval '1 microsecond' FROM segments s WHERE s.id = m.segment_id AND s.slug = 'b'`); err != nil {
		t.Fatal(err)
	}
	var us httpapi.UserSegments
	a.mustDo(http.StatusOK, "GET", "/api/v1/users/9/segments", nil, &us)
	want := []string{"0", "A", "B", "a-1", "a.1", "a_1"}
	if diff := cmp.Diff(want, slugsOf(us.Segments)); diff != "" {
		t.Errorf("segments (-want +got):\n%s", diff)
	}
	if !slices.IsSorted(slugsOf(us.Segments)) {
		t.Error("not in byte order")
	}

	// The next write for the user removes the expired membership first,
	// recorded as a TTL removal at its expiry; re-adding it is a new add.
	var res httpapi.ChangeSegmentsResponse
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/9/segments", map[string]any{"add": []string{"b"}}, &res)
	if diff := cmp.Diff([]string{"b"}, res.Added); diff != "" {
		t.Errorf("re-add after expiry: added (-want +got):\n%s", diff)
	}
	ops := a.column(`SELECT operation || '/' || reason FROM membership_history WHERE user_id = 9 AND slug = 'b' ORDER BY at, id`)
	if diff := cmp.Diff([]string{"add/manual", "remove/ttl", "add/manual"}, ops); diff != "" {
		t.Errorf("history of b (-want +got):\n%s", diff)
	}
}

func TestRoutingProblems(t *testing.T) {
	a := newAPI(t)
	a.do("GET", "/api/v1/nope", nil).problem(t, http.StatusNotFound)
	a.do("GET", "/nope", nil).problem(t, http.StatusNotFound)
	for _, tc := range []struct{ method, path, allow string }{
		{"PUT", "/api/v1/segments", "GET, HEAD, POST"},
		{"PATCH", "/api/v1/users/1/segments", "GET, HEAD, POST"},
		{"DELETE", "/api/v1/users/1/segments", "GET, HEAD, POST"},
		{"POST", "/api/v1/segments/A", "GET, HEAD, PATCH, DELETE"},
	} {
		r := a.do(tc.method, tc.path, nil)
		r.problem(t, http.StatusMethodNotAllowed)
		if got := r.header.Get("Allow"); got != tc.allow {
			t.Errorf("%s %s: Allow %q, want %q", tc.method, tc.path, got, tc.allow)
		}
	}
}

func TestRequestID(t *testing.T) {
	a := newAPI(t)
	r := a.do("GET", "/healthz", nil, "X-Request-ID", "abc-123")
	if got := r.header.Get("X-Request-ID"); got != "abc-123" {
		t.Errorf("echoed request id %q", got)
	}
	r = a.do("GET", "/healthz", nil, "X-Request-ID", strings.Repeat("x", 65))
	if got := r.header.Get("X-Request-ID"); len(got) != 16 {
		t.Errorf("overlong caller id not replaced: %q", got)
	}
	p := a.do("GET", "/api/v1/segments/NOPE", nil, "X-Request-ID", "trace-1").problem(t, http.StatusNotFound)
	if p.RequestID != "trace-1" {
		t.Errorf("problem request_id = %q", p.RequestID)
	}
}

func TestHealth(t *testing.T) {
	a := newAPI(t)
	var h httpapi.Health
	a.mustDo(http.StatusOK, "GET", "/healthz", nil, &h)
	if h.Status != "ok" {
		t.Errorf("healthz = %+v", h)
	}
	a.mustDo(http.StatusOK, "GET", "/readyz", nil, &h)
	if diff := cmp.Diff(httpapi.Health{Status: "ok", Checks: map[string]string{"postgres": "ok", "redis": "ok"}}, h); diff != "" {
		t.Errorf("readyz (-want +got):\n%s", diff)
	}
}
