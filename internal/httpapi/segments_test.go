package httpapi_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/segments-service/segments/internal/httpapi"
)

func TestCreateAndGetSegment(t *testing.T) {
	a := newAPI(t)
	before := time.Now().Add(-time.Second)

	var created httpapi.Segment
	r := a.mustDo(http.StatusCreated, "POST", "/api/v1/segments",
		map[string]any{"slug": "AVITO_VOICE_MESSAGES", "description": "Voice messages"}, &created)
	if loc := r.header.Get("Location"); loc != "/api/v1/segments/AVITO_VOICE_MESSAGES" {
		t.Errorf("Location = %q", loc)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	want := httpapi.Segment{Slug: "AVITO_VOICE_MESSAGES", Description: "Voice messages", CreatedAt: created.CreatedAt, AutoPercentSchedule: []httpapi.ScheduleStep{}}
	if diff := cmp.Diff(want, created); diff != "" {
		t.Errorf("created segment (-want +got):\n%s", diff)
	}
	if created.CreatedAt.Before(before) || created.CreatedAt.Location() != time.UTC {
		t.Errorf("created_at = %v, want a UTC time after %v", created.CreatedAt, before)
	}
	// The JSON carries the nullable fields explicitly.
	for _, field := range []string{`"auto_percent":null`, `"rollout":null`, `"member_count":0`} {
		if !strings.Contains(string(r.body), field) {
			t.Errorf("body %s lacks %s", r.body, field)
		}
	}

	var got httpapi.Segment
	a.mustDo(http.StatusOK, "GET", "/api/v1/segments/AVITO_VOICE_MESSAGES", nil, &got)
	if diff := cmp.Diff(created, got); diff != "" {
		t.Errorf("GET differs from POST (-post +get):\n%s", diff)
	}

	p := a.do("POST", "/api/v1/segments", map[string]any{"slug": "AVITO_VOICE_MESSAGES"}).problem(t, http.StatusConflict)
	if p.Type != "urn:segments:problem:conflict" || !strings.Contains(p.Detail, "AVITO_VOICE_MESSAGES") {
		t.Errorf("conflict problem = %+v", p)
	}
	a.do("GET", "/api/v1/segments/NOPE", nil).problem(t, http.StatusNotFound)
	a.do("GET", "/api/v1/segments/bad%20slug", nil).problem(t, http.StatusNotFound)
}

func TestCreateSegmentRejectsBadInput(t *testing.T) {
	a := newAPI(t)
	tests := []struct {
		name        string
		body        any
		contentType string
		status      int
		pointer     string // for 422: the field blamed
		detail      string // a part of the detail
	}{
		{"missing slug", `{}`, "", 422, "#/slug", ""},
		{"empty slug", `{"slug":""}`, "", 422, "#/slug", ""},
		{"slug starts with underscore", `{"slug":"_X"}`, "", 422, "#/slug", ""},
		{"slug with space", `{"slug":"A B"}`, "", 422, "#/slug", ""},
		{"slug with slash", `{"slug":"A/B"}`, "", 422, "#/slug", ""},
		{"non-ASCII slug", `{"slug":"СЕГМЕНТ"}`, "", 422, "#/slug", ""},
		{"slug of 101 characters", `{"slug":"` + strings.Repeat("A", 101) + `"}`, "", 422, "#/slug", ""},
		{"description too long", `{"slug":"OK","description":"` + strings.Repeat("д", 1001) + `"}`, "", 422, "#/description", ""},
		{"malformed JSON", `{"slug":}`, "", 400, "", "not valid JSON"},
		{"truncated JSON", `{"slug":"A`, "", 400, "", "truncated"},
		{"unknown field", `{"slug":"A","colour":"red"}`, "", 400, "", `"colour"`},
		{"wrong type", `{"slug":42}`, "", 400, "", `"slug" must be a string`},
		{"array body", `["A"]`, "", 400, "", "JSON object"},
		{"empty body", ``, "", 400, "", "empty"},
		{"two objects", `{"slug":"A"} {"slug":"B"}`, "", 400, "", "single JSON object"},
		{"text content type", `{"slug":"A"}`, "text/plain", 415, "", "application/json"},
		{"form content type", `slug=A`, "application/x-www-form-urlencoded", 415, "", "application/json"},
		{"body over 1 MiB", `{"slug":"A","description":"` + strings.Repeat("x", 1<<20) + `"}`, "", 413, "", "larger than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var header []string
			if tc.contentType != "" {
				header = []string{"Content-Type", tc.contentType}
			}
			p := a.do("POST", "/api/v1/segments", tc.body, header...).problem(t, tc.status)
			if tc.pointer != "" && (len(p.Errors) != 1 || p.Errors[0].Pointer != tc.pointer) {
				t.Errorf("errors = %+v, want one for %s", p.Errors, tc.pointer)
			}
			if !strings.Contains(p.Detail, tc.detail) {
				t.Errorf("detail %q lacks %q", p.Detail, tc.detail)
			}
		})
	}
	if n := a.scalar(`SELECT count(*) FROM segments`); n != 0 {
		t.Errorf("%d segments exist after bad requests only", n)
	}
}

func TestCreateSegmentAcceptsContentTypeWithCharset(t *testing.T) {
	a := newAPI(t)
	r := a.do("POST", "/api/v1/segments", `{"slug":"A.b-1_2"}`, "Content-Type", "application/json; charset=utf-8")
	if r.status != http.StatusCreated {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
}

func TestListSegmentsPagesInByteOrder(t *testing.T) {
	a := newAPI(t)
	for _, s := range []string{"b", "B", "a", "A1", "Z", "9"} {
		a.createSegment(s)
	}
	want := []string{"9", "A1", "B", "Z", "a", "b"} // byte order: digits, upper, lower

	var got []string
	after := ""
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("paging does not end")
		}
		var page httpapi.SegmentList
		a.mustDo(http.StatusOK, "GET", "/api/v1/segments?limit=4&after="+after, nil, &page)
		for _, s := range page.Segments {
			got = append(got, s.Slug)
		}
		if page.NextAfter == nil {
			break
		}
		if len(page.Segments) != 4 || *page.NextAfter != page.Segments[3].Slug {
			t.Fatalf("page of %d ends at %q, next_after %q", len(page.Segments), page.Segments[len(page.Segments)-1].Slug, *page.NextAfter)
		}
		after = *page.NextAfter
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("slugs (-want +got):\n%s", diff)
	}

	var all httpapi.SegmentList
	r := a.mustDo(http.StatusOK, "GET", "/api/v1/segments", nil, &all)
	if len(all.Segments) != 6 || all.NextAfter != nil || !strings.Contains(string(r.body), `"next_after":null`) {
		t.Errorf("default page: %s", r.body)
	}
	var empty httpapi.SegmentList
	r = a.mustDo(http.StatusOK, "GET", "/api/v1/segments?after=zzz", nil, &empty)
	if !strings.Contains(string(r.body), `"segments":[]`) {
		t.Errorf("past the end: %s, want an empty array", r.body)
	}

	for _, limit := range []string{"0", "-1", "1001", "x", "1.5"} {
		a.do("GET", "/api/v1/segments?limit="+limit, nil).problem(t, http.StatusBadRequest)
	}
}

func TestMemberCountCountsActiveMemberships(t *testing.T) {
	a := newAPI(t)
	a.createSegment("S")
	for _, user := range []string{"1", "2", "3"} {
		a.mustDo(http.StatusOK, "POST", "/api/v1/users/"+user+"/segments", map[string]any{"add": []string{"S"}}, nil)
	}
	// Let user 3's membership expire without anyone removing it.
	if _, err := a.pool.Exec(t.Context(), `UPDATE memberships SET expires_at = added_at + interval '1 microsecond' WHERE user_id = 3`); err != nil {
		t.Fatal(err)
	}
	var seg httpapi.Segment
	a.mustDo(http.StatusOK, "GET", "/api/v1/segments/S", nil, &seg)
	if seg.MemberCount != 2 {
		t.Errorf("member_count = %d, want 2 (one of 3 expired)", seg.MemberCount)
	}
	var list httpapi.SegmentList
	a.mustDo(http.StatusOK, "GET", "/api/v1/segments", nil, &list)
	if list.Segments[0].MemberCount != 2 {
		t.Errorf("listed member_count = %d, want 2", list.Segments[0].MemberCount)
	}
}

func TestDeleteSegment(t *testing.T) {
	a := newAPI(t)
	a.createSegment("GONE")
	a.createSegment("STAYS")
	for _, user := range []string{"1", "2"} {
		a.mustDo(http.StatusOK, "POST", "/api/v1/users/"+user+"/segments", map[string]any{"add": []string{"GONE", "STAYS"}}, nil)
	}

	r := a.do("DELETE", "/api/v1/segments/GONE", nil)
	if r.status != http.StatusNoContent || len(r.body) != 0 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	a.do("GET", "/api/v1/segments/GONE", nil).problem(t, http.StatusNotFound)
	a.do("DELETE", "/api/v1/segments/GONE", nil).problem(t, http.StatusNotFound)

	var us httpapi.UserSegments
	a.mustDo(http.StatusOK, "GET", "/api/v1/users/1/segments", nil, &us)
	if len(us.Segments) != 1 || us.Segments[0].Slug != "STAYS" {
		t.Errorf("user 1 after delete: %+v", us.Segments)
	}
	if n := a.scalar(`SELECT count(*) FROM membership_history WHERE slug = 'GONE' AND operation = 'remove' AND reason = 'segment_deleted'`); n != 2 {
		t.Errorf("%d segment_deleted history rows, want 2", n)
	}

	// The slug is free again, for a new segment with no members.
	a.createSegment("GONE")
	var seg httpapi.Segment
	a.mustDo(http.StatusOK, "GET", "/api/v1/segments/GONE", nil, &seg)
	if seg.MemberCount != 0 {
		t.Errorf("recreated segment has %d members", seg.MemberCount)
	}
	a.mustDo(http.StatusOK, "GET", "/api/v1/users/2/segments", nil, &us)
	if len(us.Segments) != 1 || us.Segments[0].Slug != "STAYS" {
		t.Errorf("user 2 after recreate: %+v", us.Segments)
	}
}
