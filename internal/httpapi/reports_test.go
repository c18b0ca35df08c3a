package httpapi_test

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/segments-service/segments/internal/httpapi"
)

// reportLink asks for a report and returns the link's path and query.
func (a *testAPI) reportLink(body any) string {
	a.t.Helper()
	var link httpapi.ReportLink
	r := a.mustDo(http.StatusCreated, "POST", "/api/v1/reports/history", body, &link)
	u, err := url.Parse(link.URL)
	if err != nil || u.IsAbs() || !strings.HasPrefix(link.URL, "/api/v1/reports/history/") || r.header.Get("Location") != link.URL {
		a.t.Fatalf("link %q (Location %q): %v", link.URL, r.header.Get("Location"), err)
	}
	if d := time.Until(link.ExpiresAt); d < 23*time.Hour || d > 24*time.Hour {
		a.t.Errorf("link expires at %v, want in 24 h", link.ExpiresAt)
	}
	return u.EscapedPath()
}

// download fetches a report the way a browser does and parses the CSV.
func (a *testAPI) download(path string) (filename string, rows [][]string) {
	a.t.Helper()
	r := a.do("GET", path, nil,
		"Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
		"User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0 Safari/537.36")
	if r.status != http.StatusOK || r.header.Get("Content-Type") != "text/csv; charset=utf-8" {
		a.t.Fatalf("download: %d %q %s", r.status, r.header.Get("Content-Type"), r.body)
	}
	cd := r.header.Get("Content-Disposition")
	if _, err := fmt.Sscanf(cd, "attachment; filename=%q", &filename); err != nil {
		a.t.Fatalf("Content-Disposition %q: %v", cd, err)
	}
	rd := csv.NewReader(strings.NewReader(string(r.body)))
	rd.Comma = ';'
	rows, err := rd.ReadAll()
	if err != nil {
		a.t.Fatalf("CSV %q: %v", r.body, err)
	}
	if len(rows) == 0 || strings.Join(rows[0], ";") != "user_id;segment;operation;datetime;reason" {
		a.t.Fatalf("CSV header: %v", rows)
	}
	return filename, rows[1:]
}

func TestMonthReportOfOneUser(t *testing.T) {
	a := newAPI(t)
	a.createSegment("MANUAL")
	a.createSegment("GOES_AWAY")
	a.mustDo(http.StatusCreated, "POST", "/api/v1/segments", map[string]any{"slug": "EVERYONE", "auto_percent": 100}, nil)

	// manual add and remove; ttl; auto; segment_deleted — for user 1000,
	// plus user 2000 (auto on registration, then manual).
	a.mustDo(http.StatusOK, "GET", "/api/v1/users/1000/segments", nil, nil) // registered: auto
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/1000/segments", map[string]any{"add": []string{"MANUAL", "GOES_AWAY"}}, nil)
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/2000/segments", map[string]any{"add": []string{"MANUAL"}}, nil)
	expiresAt := time.Now().Add(300 * time.Millisecond)
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/1000/segments", map[string]any{"remove": []string{"MANUAL"}}, nil)
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/1000/segments", map[string]any{"add": []string{"MANUAL"}, "expires_at": expiresAt.Format(time.RFC3339Nano)}, nil)
	time.Sleep(time.Until(expiresAt) + 10*time.Millisecond)
	// The user's next write purges the expired membership (ttl) before
	// anything else; removing what has expired is then a no-op.
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/1000/segments", map[string]any{"remove": []string{"MANUAL"}}, nil)
	a.mustDo(http.StatusNoContent, "DELETE", "/api/v1/segments/GOES_AWAY", nil, nil)

	period := time.Now().UTC().Format("2006-01")
	name, rows := a.download(a.reportLink(map[string]any{"period": period, "user_id": 1000}))
	if name != "segments-history-"+period+"-user-1000.csv" {
		t.Errorf("file name %q", name)
	}
	var got []string
	for _, row := range rows {
		at, err := time.Parse(time.RFC3339Nano, row[3])
		if err != nil || !strings.HasSuffix(row[3], "Z") || at.UTC().Format("2006-01") != period {
			t.Errorf("datetime %q: not RFC 3339 UTC in %s (%v)", row[3], period, err)
		}
		got = append(got, row[0]+" "+row[1]+" "+row[2]+" "+row[4])
	}
	want := []string{
		"1000 EVERYONE add auto",
		"1000 GOES_AWAY add manual",
		"1000 MANUAL add manual",
		"1000 MANUAL remove manual",
		"1000 MANUAL add manual",
		"1000 MANUAL remove ttl",
		"1000 GOES_AWAY remove segment_deleted",
	}
	// The first two adds of one request share a statement; compare sets
	// there and order everywhere else.
	if diff := cmp.Diff(want, got, cmp.Transformer("sortFirstThree", func(s []string) []string {
		if len(s) < 3 {
			return s
		}
		head := append([]string(nil), s[1:3]...)
		if head[0] > head[1] {
			head[0], head[1] = head[1], head[0]
		}
		return append(append([]string{s[0]}, head...), s[3:]...)
	})); diff != "" {
		t.Errorf("report rows (-want +got):\n%s", diff)
	}

	_, all := a.download(a.reportLink(map[string]any{"period": period}))
	users := map[string]int{}
	for _, row := range all {
		users[row[0]]++
	}
	if users["1000"] != len(want) || users["2000"] != 2 || len(users) != 2 {
		t.Errorf("all-users report: rows per user %v", users)
	}
}

func TestMonthBoundariesAreUTC(t *testing.T) {
	a := newAPI(t)
	for _, at := range []string{
		"2023-07-31 23:59:59.999999+00", // out
		"2023-08-01 00:00:00+00",        // in
		"2023-08-01 02:30:00+03",        // in: July 31 23:30 UTC? no: 2023-07-31 23:30 UTC, out
		"2023-08-31 23:59:59.999+00",    // in
		"2023-09-01 00:00:00+00",        // out
		"2023-09-01 01:00:00+02",        // 2023-08-31 23:00 UTC: in
	} {
		if _, err := a.pool.Exec(t.Context(), `INSERT INTO membership_history (user_id, segment_id, slug, operation, reason, at)
			VALUES (7, 1, 'S', 'add', 'manual', $1)`, at); err != nil {
			t.Fatal(err)
		}
	}
	_, rows := a.download(a.reportLink(map[string]any{"period": "2023-08"}))
	var got []string
	for _, row := range rows {
		got = append(got, row[3])
	}
	want := []string{"2023-08-01T00:00:00.000000Z", "2023-08-31T23:00:00.000000Z", "2023-08-31T23:59:59.999000Z"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("August 2023 (-want +got):\n%s", diff)
	}
}

func TestReportLinksCannotBeForged(t *testing.T) {
	a := newAPI(t)
	path := a.reportLink(map[string]any{"period": "2023-08", "user_id": 1000})
	if r := a.do("GET", path, nil); r.status != http.StatusOK {
		t.Fatalf("the link itself: %d %s", r.status, r.body)
	}
	prefix := "/api/v1/reports/history/"
	token := strings.TrimPrefix(path, prefix)
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
	for i := range token {
		c := alphabet[(strings.IndexByte(alphabet, token[i])+1)%len(alphabet)]
		forged := token[:i] + string(c) + token[i+1:]
		if r := a.do("GET", prefix+forged, nil); r.status != http.StatusForbidden {
			t.Fatalf("byte %d changed (%q): status %d", i, forged, r.status)
		}
	}
	for _, bad := range []string{token[:len(token)-1], token[:len(token)/2], strings.SplitN(token, ".", 2)[0], "x", token + "A"} {
		p := a.do("GET", prefix+bad, nil).problem(t, http.StatusForbidden)
		if p.Type != "urn:segments:problem:forbidden" {
			t.Errorf("type %q", p.Type)
		}
	}
	// A day later the link has expired.
	a.skew.Store(int64(24*time.Hour + time.Second))
	p := a.do("GET", path, nil).problem(t, http.StatusForbidden)
	if !strings.Contains(p.Detail, "expired") {
		t.Errorf("expired link: %q", p.Detail)
	}
}

func TestReportRequestsRejectBadInput(t *testing.T) {
	a := newAPI(t)
	for _, tc := range []struct {
		body   string
		status int
	}{
		{`{"period":"2023-13"}`, 422},
		{`{"period":"2023-00"}`, 422},
		{`{"period":"23-08"}`, 422},
		{`{"period":"2023-8"}`, 422},
		{`{"period":""}`, 422},
		{`{}`, 422},
		{`{"period":"0000-01"}`, 422},
		{`{"period":"2023-08","user_id":0}`, 422},
		{`{"period":"2023-08","user_id":-1}`, 422},
		{`{"period":"2023-08","user_id":9223372036854775808}`, 400},
		{`{"period":"2023-08","user_id":"1000"}`, 400},
		{`{"period":202308}`, 400},
	} {
		a.do("POST", "/api/v1/reports/history", tc.body).problem(t, tc.status)
	}
}

func TestUserHistoryPages(t *testing.T) {
	a := newAPI(t)
	a.createSegment("A")
	a.createSegment("B")
	start := time.Now().UTC()
	for range 3 {
		a.mustDo(http.StatusOK, "POST", "/api/v1/users/5/segments", map[string]any{"add": []string{"A"}, "remove": []string{"B"}}, nil)
		a.mustDo(http.StatusOK, "POST", "/api/v1/users/5/segments", map[string]any{"add": []string{"B"}, "remove": []string{"A"}}, nil)
	}
	// 3 adds of A, 3 removes of A, 3 adds of B, 2 removes of B = 11 events.
	var all []httpapi.HistoryEvent
	after := ""
	for pages := 0; ; pages++ {
		var page httpapi.UserHistory
		a.mustDo(http.StatusOK, "GET", "/api/v1/users/5/history?limit=4&after="+url.QueryEscape(after), nil, &page)
		all = append(all, page.Events...)
		if page.NextAfter == nil {
			break
		}
		after = *page.NextAfter
		if pages > 5 {
			t.Fatal("paging does not end")
		}
	}
	if len(all) != 11 {
		t.Fatalf("%d events, want 11: %+v", len(all), all)
	}
	for i := 1; i < len(all); i++ {
		if all[i].At.Before(all[i-1].At) {
			t.Errorf("event %d is before event %d", i, i-1)
		}
	}
	if all[0].Segment != "A" || all[0].Operation != "add" || all[0].Reason != "manual" || all[0].At.Before(start.Add(-time.Second)) {
		t.Errorf("first event %+v", all[0])
	}
	// The time window [from, to): the events of one change share its
	// instant, so the window holds exactly the events at those times.
	var window httpapi.UserHistory
	from, to := all[2].At, all[5].At
	q := url.Values{"from": {from.Format(time.RFC3339Nano)}, "to": {to.Format(time.RFC3339Nano)}}
	a.mustDo(http.StatusOK, "GET", "/api/v1/users/5/history?"+q.Encode(), nil, &window)
	var want []httpapi.HistoryEvent
	for _, e := range all {
		if !e.At.Before(from) && e.At.Before(to) {
			want = append(want, e)
		}
	}
	if diff := cmp.Diff(want, window.Events); diff != "" || len(want) < 3 || window.NextAfter != nil {
		t.Errorf("window [%v, %v): next %v, events (-want +got):\n%s", from, to, window.NextAfter, diff)
	}
	// An unknown user has no history and is not registered.
	r := a.mustDo(http.StatusOK, "GET", "/api/v1/users/6/history", nil, nil)
	if !strings.Contains(string(r.body), `"events":[]`) || a.scalar(`SELECT count(*) FROM users WHERE id = 6`) != 0 {
		t.Errorf("unknown user: %s", r.body)
	}
	for _, bad := range []string{"?from=yesterday", "?to=2023-08", "?limit=0", "?limit=1001", "?after=xyz", "?from=2024-01-01T00:00:00Z&to=2023-01-01T00:00:00Z"} {
		a.do("GET", "/api/v1/users/5/history"+bad, nil).problem(t, http.StatusBadRequest)
	}
	a.do("GET", "/api/v1/users/0/history", nil).problem(t, http.StatusBadRequest)
}

// TestReportLinksDoNotFollowTheHostHeader asks for links with a forged
// Host: without PUBLIC_BASE_URL a link is relative to wherever the client
// called; with it, it starts with that URL.
func TestReportLinksDoNotFollowTheHostHeader(t *testing.T) {
	body := map[string]any{"period": "2023-08"}
	for _, tc := range []struct {
		publicURL, wantPrefix string
	}{
		{"", "/api/v1/reports/history/"},
		{"https://segments.example.com/", "https://segments.example.com/api/v1/reports/history/"},
	} {
		a := newAPI(t, func(o *httpapi.Options) { o.PublicURL = tc.publicURL })
		r := a.do("POST", "/api/v1/reports/history", body, "Host", "evil.example")
		var link httpapi.ReportLink
		if err := json.Unmarshal(r.body, &link); err != nil || r.status != http.StatusCreated {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if !strings.HasPrefix(link.URL, tc.wantPrefix) || strings.Contains(link.URL, "evil") || r.header.Get("Location") != link.URL {
			t.Errorf("PUBLIC_BASE_URL %q: link %q, Location %q", tc.publicURL, link.URL, r.header.Get("Location"))
		}
	}
}
