package httpapi_test

import (
	"encoding/csv"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/segments-service/segments/internal/httpapi"
)

// membersLink asks for a segment's member list and returns the link's path.
func (a *testAPI) membersLink(slug string) string {
	a.t.Helper()
	var link httpapi.ReportLink
	r := a.mustDo(http.StatusCreated, "POST", "/api/v1/reports/members", map[string]any{"slug": slug}, &link)
	u, err := url.Parse(link.URL)
	if err != nil || !strings.HasPrefix(link.URL, "/api/v1/reports/members/") || r.header.Get("Location") != link.URL {
		a.t.Fatalf("link %q: %v", link.URL, err)
	}
	return u.EscapedPath()
}

// The member list as CSV: the active members in user id order, with the
// instants the JSON shows, a permanent membership's expiry empty.
func TestMembersReport(t *testing.T) {
	a := newAPI(t)
	a.createSegment("EXPORT.V2") // a dot in the slug
	a.createSegment("OTHER")
	until := time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond)
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/3000/segments", map[string]any{"add": []string{"EXPORT.V2"}}, nil)
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/20/segments", map[string]any{"add": []string{"EXPORT.V2"}, "expires_at": until.Format(time.RFC3339Nano)}, nil)
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/100/segments", map[string]any{"add": []string{"EXPORT.V2", "OTHER"}}, nil)
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/5/segments",
		map[string]any{"add": []string{"EXPORT.V2"}, "expires_at": time.Now().Add(200 * time.Millisecond).Format(time.RFC3339Nano)}, nil)
	time.Sleep(300 * time.Millisecond) // user 5's membership expires (not swept)

	path := a.membersLink("EXPORT.V2")
	r := a.do("GET", path, nil)
	if r.status != http.StatusOK || r.header.Get("Content-Type") != "text/csv; charset=utf-8" ||
		r.header.Get("Content-Disposition") != `attachment; filename="segments-members-EXPORT.V2.csv"` {
		t.Fatalf("download: %d %v %s", r.status, r.header, r.body)
	}
	rd := csv.NewReader(strings.NewReader(string(r.body)))
	rd.Comma = ';'
	rows, err := rd.ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	// The expected rows come from the JSON member list.
	var page httpapi.MemberList
	a.mustDo(http.StatusOK, "GET", "/api/v1/segments/EXPORT.V2/members", nil, &page)
	want := [][]string{{"user_id", "added_at", "expires_at", "source"}}
	for _, m := range page.Members {
		exp := ""
		if m.ExpiresAt != nil {
			exp = m.ExpiresAt.Format("2006-01-02T15:04:05.000000Z")
		}
		want = append(want, []string{fmt.Sprint(m.UserID), m.AddedAt.Format("2006-01-02T15:04:05.000000Z"), exp, m.Source})
	}
	if diff := cmp.Diff(want, rows); diff != "" {
		t.Fatalf("CSV against the JSON members (-json +csv):\n%s", diff)
	}
	if len(rows) != 4 || rows[1][0] != "20" || rows[2][0] != "100" || rows[3][0] != "3000" || rows[1][2] != until.Format("2006-01-02T15:04:05.000000Z") {
		t.Fatalf("rows %v", rows)
	}

	// Tampered, cross-kind, expired: 403; a deleted segment: 404.
	token := strings.TrimPrefix(path, "/api/v1/reports/members/")
	a.do("GET", "/api/v1/reports/members/"+token[:len(token)-2]+"xx", nil).problem(t, http.StatusForbidden)
	history := strings.TrimPrefix(a.reportLink(map[string]any{"period": time.Now().UTC().Format("2006-01")}), "/api/v1/reports/history/")
	a.do("GET", "/api/v1/reports/members/"+history, nil).problem(t, http.StatusForbidden)
	a.do("GET", "/api/v1/reports/history/"+token, nil).problem(t, http.StatusForbidden)
	a.mustDo(http.StatusCreated, "POST", "/api/v1/reports/members", map[string]any{"slug": "OTHER"}, nil)
	a.do("POST", "/api/v1/reports/members", map[string]any{"slug": "NOPE"}).problem(t, http.StatusNotFound)
	a.do("POST", "/api/v1/reports/members", map[string]any{"slug": "not a slug"}).problem(t, http.StatusUnprocessableEntity)
	a.mustDo(http.StatusNoContent, "DELETE", "/api/v1/segments/EXPORT.V2", nil, nil)
	a.do("GET", path, nil).problem(t, http.StatusNotFound)
	a.skew.Store(int64(24*time.Hour + time.Second))
	if p := a.do("GET", path, nil).problem(t, http.StatusForbidden); !strings.Contains(p.Detail, "expired") {
		t.Errorf("expired link: %q", p.Detail)
	}
}
