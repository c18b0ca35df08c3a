package httpapi_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/tools/apitest"
)

// PATCH /segments/{slug} as a JSON merge patch: named fields change, the
// others stay, null clears or cancels; bad patches change nothing.
func TestPatchSegment(t *testing.T) {
	a := newAPI(t)
	a.mustDo(http.StatusCreated, "POST", "/api/v1/segments", map[string]any{"slug": "PATCHED", "description": "first"}, nil)
	a.mustDo(http.StatusCreated, "POST", "/api/v1/segments", map[string]any{"slug": "PATCHED_PCT", "auto_percent": 25}, nil)
	patch := func(slug string, body string, contentType string) response {
		t.Helper()
		return responseOf(apitest.Do(t, a.h, "PATCH", "/api/v1/segments/"+slug, body, "Content-Type", contentType))
	}
	segment := func(r response) httpapi.Segment {
		t.Helper()
		if r.status != http.StatusOK {
			t.Fatalf("%d %s", r.status, r.body)
		}
		var s httpapi.Segment
		if err := json.Unmarshal(r.body, &s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	when := time.Now().Add(time.Hour).UTC().Truncate(time.Second)

	s := segment(patch("PATCHED", `{"delete_at":"`+when.Format(time.RFC3339)+`"}`, "application/merge-patch+json"))
	if s.Description != "first" || s.DeleteAt == nil || !s.DeleteAt.Equal(when) {
		t.Fatalf("after setting delete_at: %+v", s)
	}
	s = segment(patch("PATCHED", `{"description":"second"}`, "application/json"))
	if s.Description != "second" || s.DeleteAt == nil || !s.DeleteAt.Equal(when) {
		t.Fatalf("after changing the description: %+v (delete_at must stay)", s)
	}
	s = segment(patch("PATCHED", `{"description":null,"delete_at":null}`, "application/merge-patch+json"))
	if s.Description != "" || s.DeleteAt != nil {
		t.Fatalf("after nulls: %+v", s)
	}
	s = segment(patch("PATCHED", `{}`, "application/json"))
	if s.Slug != "PATCHED" {
		t.Fatalf("empty patch: %+v", s)
	}
	s = segment(patch("PATCHED_PCT", `{"auto_percent":25,"description":"same share"}`, "application/json"))
	if s.AutoPercent == nil || *s.AutoPercent != 25 || s.Description != "same share" {
		t.Fatalf("same share: %+v", s)
	}

	for _, tc := range []struct {
		name, slug, body, contentType string
		status                        int
		detail                        string
	}{
		{"past delete_at", "PATCHED", `{"description":"x","delete_at":"2020-01-01T00:00:00Z"}`, "application/json", 422, "delete_at"},
		{"delete_at not RFC 3339", "PATCHED", `{"delete_at":"tomorrow"}`, "application/json", 400, "RFC 3339"},
		{"description not a string", "PATCHED", `{"description":5}`, "application/json", 400, "description"},
		{"description too long", "PATCHED", `{"description":"` + strings.Repeat("d", 1001) + `"}`, "application/json", 422, "description"},
		{"unknown field", "PATCHED", `{"slug":"RENAMED"}`, "application/json", 400, "slug"},
		{"not an object", "PATCHED", `[]`, "application/json", 400, "object"},
		{"auto_percent on a manual segment", "PATCHED", `{"auto_percent":10}`, "application/json", 422, "manual"},
		{"null auto_percent on a percent segment", "PATCHED_PCT", `{"auto_percent":null}`, "application/json", 422, "manual"},
		{"auto_percent out of range", "PATCHED_PCT", `{"auto_percent":101}`, "application/json", 422, "auto_percent"},
		{"text/plain", "PATCHED", `{"description":"x"}`, "text/plain", 415, "Content-Type"},
		{"no such segment", "NOPE", `{"description":"x"}`, "application/json", 404, "NOPE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := patch(tc.slug, tc.body, tc.contentType).problem(t, tc.status)
			if !strings.Contains(p.Detail+p.Title+string(mustJSON(p.Errors)), tc.detail) {
				t.Errorf("problem %+v does not mention %q", p, tc.detail)
			}
		})
	}
	var got httpapi.Segment
	a.mustDo(http.StatusOK, "GET", "/api/v1/segments/PATCHED", nil, &got)
	if got.Description != "" || got.DeleteAt != nil {
		t.Fatalf("a refused patch changed the segment: %+v", got)
	}
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}
