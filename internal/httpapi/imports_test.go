package httpapi_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/segments-service/segments/internal/httpapi"
)

// upload posts body as an import into slug with query, as text/csv unless
// header says otherwise.
func (a *testAPI) upload(slug, query, body string, header ...string) response {
	a.t.Helper()
	return a.do("POST", "/api/v1/segments/"+slug+"/imports?"+query, body, append([]string{"Content-Type", "text/csv"}, header...)...)
}

// nothingStored fails the test if any import or upload is stored.
func (a *testAPI) nothingStored() {
	a.t.Helper()
	if n := a.scalar(`SELECT (SELECT count(*) FROM imports) + (SELECT count(*) FROM import_uploads)`); n != 0 {
		a.t.Fatalf("%d import rows stored for a refused upload", n)
	}
}

// A list with bad lines is refused whole: 422 invalid-list with every bad
// line (numbered from 1, header and blank lines counted), the value and
// why; nothing is stored.
func TestImportBadLines(t *testing.T) {
	a := newAPI(t)
	a.createSegment("LIST")
	body := "user_id\r\n17\r\n\r\n12a\n  42  \n0\n-5\n9223372036854775808\n+3\nuser_id\n" + strings.Repeat("9", 5000) + "\n" + strings.Repeat("7", 70000) + "\n18"
	r := a.upload("LIST", "mode=add", body)
	if r.status != http.StatusUnprocessableEntity || r.header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("status %d %q: %s", r.status, r.header.Get("Content-Type"), r.body)
	}
	var p httpapi.ListProblem
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		t.Fatal(err)
	}
	const notID = "is not a user id (a whole number from 1 to 9223372036854775807)"
	want := []httpapi.LineProblem{
		{Line: 4, Value: "12a", Detail: notID},
		{Line: 6, Value: "0", Detail: "is not a user id: ids start at 1"},
		{Line: 7, Value: "-5", Detail: notID},
		{Line: 8, Value: "9223372036854775808", Detail: notID},
		{Line: 9, Value: "+3", Detail: notID},
		{Line: 10, Value: "user_id", Detail: notID},
		{Line: 11, Value: strings.Repeat("9", 40) + "…", Detail: notID},
		{Line: 12, Value: strings.Repeat("7", 40) + "…", Detail: "is too long to be a user id"},
	}
	if p.Type != "urn:segments:problem:invalid-list" || p.Status != 422 || p.MoreErrors || p.RequestID == "" ||
		!strings.Contains(p.Detail, "8 bad lines; line 4: \"12a\" is not a user id") || !cmp.Equal(p.Errors, want) {
		t.Fatalf("problem %+v\n%s", p, cmp.Diff(want, p.Errors))
	}
	a.nothingStored()

	// More than 100 bad lines: the first 100, and more_errors.
	r = a.upload("LIST", "mode=add", strings.Repeat("x\n", 250))
	p = httpapi.ListProblem{}
	if err := json.Unmarshal(r.body, &p); err != nil || r.status != 422 || len(p.Errors) != 100 || !p.MoreErrors || p.Errors[99].Line != 100 {
		t.Fatalf("250 bad lines: %d, %d listed, more %v", r.status, len(p.Errors), p.MoreErrors)
	}
	a.nothingStored()
}

// What the upload refuses before reading the list, and GET's answers.
func TestImportRefusals(t *testing.T) {
	a := newAPI(t)
	a.createSegment("LIST")
	a.mustDo(http.StatusCreated, "POST", "/api/v1/segments", map[string]any{"slug": "PCT", "auto_percent": 10}, nil)
	for _, c := range []struct {
		name, slug, query, ct string
		status                int
		pointer               string
	}{
		{"JSON", "LIST", "mode=add", "application/json", 415, ""},
		{"no content type", "LIST", "mode=add", "", 415, ""},
		{"no segment", "NOPE", "mode=add", "text/plain", 404, ""},
		{"no mode", "LIST", "", "text/csv", 422, "#/mode"},
		{"unknown mode", "LIST", "mode=merge", "text/csv", 422, "#/mode"},
		{"replace on a percent segment", "PCT", "mode=replace", "text/csv", 422, "#/mode"},
		{"both expiry forms", "LIST", "mode=add&ttl_seconds=60&expires_at=2099-01-01T00:00:00Z", "text/csv", 422, "#/expires_at"},
		{"expiry in the past", "LIST", "mode=add&expires_at=2001-01-01T00:00:00Z", "text/csv", 422, "#/expires_at"},
		{"expiry with remove", "LIST", "mode=remove&ttl_seconds=60", "text/csv", 422, "#/mode"},
		{"bad ttl", "LIST", "mode=add&ttl_seconds=0", "text/csv", 422, "#/ttl_seconds"},
		{"bad time", "LIST", "mode=add&expires_at=tomorrow", "text/csv", 422, "#/expires_at"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := a.upload(c.slug, c.query, "1\n2\n", "Content-Type", c.ct).problem(t, c.status)
			if c.pointer != "" && (len(p.Errors) != 1 || p.Errors[0].Pointer != c.pointer) {
				t.Fatalf("errors %+v, want one at %s", p.Errors, c.pointer)
			}
			a.nothingStored()
		})
	}
	a.do("GET", "/api/v1/imports/0", nil).problem(t, http.StatusBadRequest)
	a.do("GET", "/api/v1/imports/x", nil).problem(t, http.StatusBadRequest)
	a.do("GET", "/api/v1/imports/12345", nil).problem(t, http.StatusNotFound)
}

// An upload with an Idempotency-Key answers its retry with the same 202
// and stores one import; the key with another list is refused.
func TestImportIdempotencyKey(t *testing.T) {
	a := newAPI(t)
	a.createSegment("LIST")
	list := "1\n2\n3\n3\n"
	first := a.upload("LIST", "mode=add", list, "Idempotency-Key", "upload-1")
	again := a.upload("LIST", "mode=add", list, "Idempotency-Key", "upload-1")
	if first.status != http.StatusAccepted || again.status != http.StatusAccepted || !bytes.Equal(first.body, again.body) ||
		again.header.Get("Idempotent-Replayed") != "true" || again.header.Get("Location") != first.header.Get("Location") {
		t.Fatalf("first %d %s; retry %d %s %v", first.status, first.body, again.status, again.body, again.header)
	}
	var imp httpapi.Import
	if err := json.Unmarshal(first.body, &imp); err != nil || imp.Listed != 4 || imp.Status != "pending" {
		t.Fatalf("202 %s", first.body)
	}
	if n := a.scalar(`SELECT count(*) FROM imports`); n != 1 {
		t.Fatalf("%d imports stored, want 1", n)
	}
	if n := a.scalar(`SELECT count(*) FROM import_uploads`); n != 1 {
		t.Fatalf("%d upload rows, want 1", n)
	}
	p := a.upload("LIST", "mode=add", "1\n2\n", "Idempotency-Key", "upload-1").problem(t, http.StatusUnprocessableEntity)
	if p.Type != "urn:segments:problem:idempotency-key-reused" {
		t.Fatalf("another list under the key: %+v", p)
	}
	var got httpapi.Import
	a.mustDo(http.StatusOK, "GET", fmt.Sprintf("/api/v1/imports/%d", imp.ID), nil, &got)
	if got.ID != imp.ID || got.Segment != "LIST" || got.Mode != "add" || got.Received != nil {
		t.Fatalf("GET %+v", got)
	}
}
