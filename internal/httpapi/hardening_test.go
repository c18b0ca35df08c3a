package httpapi_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestBadBytesAreRejectedWith4xx sends strings PostgreSQL refuses (NUL,
// bytes that are not UTF-8) in the path, the query and the body: each is a
// 4xx problem, never a 500, and changes nothing.
func TestBadBytesAreRejectedWith4xx(t *testing.T) {
	a := newAPI(t)
	a.createSegment("A")
	tests := []struct {
		method, path string
		body         any
		status       int
	}{
		{"GET", "/api/v1/segments/%00", nil, http.StatusBadRequest},
		{"GET", "/api/v1/segments/%FF", nil, http.StatusBadRequest},
		{"DELETE", "/api/v1/segments/%00", nil, http.StatusBadRequest},
		{"DELETE", "/api/v1/segments/A%C3", nil, http.StatusBadRequest},
		{"GET", "/api/v1/segments?after=%E9", nil, http.StatusBadRequest},
		{"GET", "/api/v1/segments?after=a%00b", nil, http.StatusBadRequest},
		{"GET", "/api/v1/users/1/history?after=%FF", nil, http.StatusBadRequest},
		{"GET", "/api/v1/reports/history/%00", nil, http.StatusBadRequest},
		{"POST", "/api/v1/segments", `{"slug":"B","description":"a\u0000b"}`, http.StatusUnprocessableEntity},
		{"POST", "/api/v1/users/1/segments", `{"add":["A\u0000"]}`, http.StatusUnprocessableEntity},
		{"POST", "/api/v1/reports/history", `{"period":"2023-0\u0000"}`, http.StatusUnprocessableEntity},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			p := a.do(tc.method, tc.path, tc.body).problem(t, tc.status)
			if tc.status == http.StatusBadRequest && !strings.Contains(p.Detail, "UTF-8") {
				t.Errorf("detail %q does not say what is wrong", p.Detail)
			}
		})
	}
	if n := a.scalar(`SELECT count(*) FROM segments`); n != 1 {
		t.Errorf("%d segments after bad requests, want 1", n)
	}
	if n := a.scalar(`SELECT count(*) FROM users`); n != 0 {
		t.Errorf("%d users after bad requests, want 0", n)
	}
}

func TestRootLeadsToTheAPIDocs(t *testing.T) {
	a := newAPI(t)
	r := a.do("GET", "/", nil)
	if r.status != http.StatusFound || r.header.Get("Location") != "/swagger/index.html" {
		t.Errorf("GET /: %d, Location %q", r.status, r.header.Get("Location"))
	}
}

// TestHeadAnswersLikeGet runs the router behind a real HTTP server: HEAD on
// every GET route gives GET's status and headers and no body.
func TestHeadAnswersLikeGet(t *testing.T) {
	a := newAPI(t)
	a.createSegment("A")
	srv := httptest.NewServer(a.h)
	defer srv.Close()
	for _, path := range []string{
		"/healthz", "/readyz", "/api/v1/segments", "/api/v1/segments/A", "/api/v1/segments/NOPE",
		"/api/v1/users/7/segments", "/api/v1/users/7/history", "/api/v1/users/x/segments", "/swagger/doc.json",
	} {
		get, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, get.Body)
		get.Body.Close()
		head, err := http.Head(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(head.Body)
		head.Body.Close()
		if head.StatusCode != get.StatusCode || head.Header.Get("Content-Type") != get.Header.Get("Content-Type") || len(body) != 0 {
			t.Errorf("HEAD %s: %d %q with %d bytes; GET: %d %q", path, head.StatusCode, head.Header.Get("Content-Type"), len(body),
				get.StatusCode, get.Header.Get("Content-Type"))
		}
	}
}
