package httpapi_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/internal/postgres"
)

// historyRows is the size of the month the export tests download: enough
// (about 24 MB of CSV) that a client that stops reading holds its export
// on the server.
const historyRows = 400_000

// seedMonth writes historyRows history events at the start of the current
// month (straight into the table: a fixture, not a change) and returns
// the month's all-users report link.
func seedMonth(t *testing.T, a *testAPI) string {
	t.Helper()
	const q = `
		INSERT INTO membership_history (user_id, segment_id, slug, operation, reason, at)
		SELECT g, 1, 'EXPORTED_SEGMENT', 'add', 'manual', date_trunc('month', now()) + g * interval '1 microsecond'
		FROM generate_series(1, $1) AS g`
	if _, err := a.pool.Exec(context.Background(), q, historyRows); err != nil {
		t.Fatal(err)
	}
	var link httpapi.ReportLink
	a.mustDo(http.StatusCreated, "POST", "/api/v1/reports/history", map[string]any{"period": time.Now().UTC().Format("2006-01")}, &link)
	return link.URL
}

// exportsRunning counts the export sessions on the test's database.
func exportsRunning(t *testing.T, a *testAPI) int64 {
	t.Helper()
	return a.scalar(`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1`, postgres.ExportName)
}

// Many downloads that hang on a slow client, and many HEADs of the same
// link: at most REPORT_CONCURRENCY (4) exports run, the rest are refused
// at once with 429 and Retry-After, a HEAD answers the headers without
// exporting anything, and meanwhile /readyz stays 200 and reads of new
// users keep answering (exports hold connections of their own, never the
// pool's).
func TestDownloadsLeaveTheServiceReady(t *testing.T) {
	a := newAPI(t)
	link := seedMonth(t, a)
	srv := httptest.NewServer(a.h)
	defer srv.Close()
	client := &http.Client{Timeout: 30 * time.Second}

	// Four downloads start and then stop reading.
	var open []*http.Response
	defer func() {
		for _, resp := range open {
			resp.Body.Close()
		}
	}()
	for i := range 4 {
		resp, err := client.Get(srv.URL + link)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, resp)
		head, err := bufio.NewReader(resp.Body).ReadString('\n')
		if resp.StatusCode != http.StatusOK || err != nil || head != "user_id;segment;operation;datetime;reason\n" {
			t.Fatalf("download %d: %d, first line %q, %v", i, resp.StatusCode, head, err)
		}
	}
	// The next ones are refused at once, and tell when to come back.
	for i := range 4 {
		r := get(t, client, srv.URL+link)
		if r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") == "" ||
			!strings.Contains(string(r.body), `"type":"urn:segments:problem:too-many-exports"`) {
			t.Fatalf("download %d beyond the limit: %d, Retry-After %q, %s", 5+i, r.status, r.header.Get("Retry-After"), r.body)
		}
	}

	// Forty HEADs at once, while readiness and new users' reads are asked
	// all along.
	var wg sync.WaitGroup
	heads := make(chan string, 40)
	for range 40 {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodHead, srv.URL+link, nil)
			resp, err := client.Do(req)
			if err != nil {
				heads <- err.Error()
				return
			}
			defer resp.Body.Close()
			n, _ := io.Copy(io.Discard, resp.Body)
			heads <- fmt.Sprintf("%d %s %t %d", resp.StatusCode, resp.Header.Get("Content-Type"),
				strings.HasPrefix(resp.Header.Get("Content-Disposition"), "attachment; filename="), n)
		})
	}
	for i := range 20 {
		if r := get(t, client, srv.URL+"/readyz"); r.status != http.StatusOK {
			t.Fatalf("readiness %d during the downloads: %d %s", i, r.status, r.body)
		}
		if r := get(t, client, fmt.Sprintf("%s/api/v1/users/%d/segments", srv.URL, 5_000_000+i)); r.status != http.StatusOK {
			t.Fatalf("read of a new user during the downloads: %d %s", r.status, r.body)
		}
		if n := exportsRunning(t, a); n != 4 {
			t.Fatalf("%d exports run, want the 4 downloads", n)
		}
	}
	wg.Wait()
	close(heads)
	for h := range heads {
		if h != "200 text/csv; charset=utf-8 true 0" {
			t.Fatalf("a HEAD answered %q, want 200, the CSV's headers and no body", h)
		}
	}

	// Once the slow clients go, a download streams the whole month.
	for _, resp := range open {
		resp.Body.Close()
	}
	open = nil
	deadline := time.Now().Add(10 * time.Second)
	for exportsRunning(t, a) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if lines := downloadLines(t, client, srv.URL+link, 0); lines != historyRows+1 {
		t.Fatalf("a download after the others: %d lines, want %d", lines, historyRows+1)
	}
}

// A download may take the report timeout: the server's write timeout
// (HTTP_WRITE_TIMEOUT, here 1 s) does not cut it.
func TestDownloadOutlastsTheWriteTimeout(t *testing.T) {
	a := newAPI(t)
	link := seedMonth(t, a)
	srv := httptest.NewUnstartedServer(a.h)
	srv.Config.WriteTimeout = time.Second
	srv.Start()
	defer srv.Close()
	start := time.Now()
	lines := downloadLines(t, &http.Client{}, srv.URL+link, 5*time.Millisecond)
	if took := time.Since(start); took < 2*time.Second {
		t.Fatalf("the slow download took only %s: it does not test the write timeout", took)
	}
	if lines != historyRows+1 {
		t.Fatalf("a download slower than the write timeout got %d lines, want %d", lines, historyRows+1)
	}
}

// downloadLines downloads url, pausing pause after every 64 KiB, and
// counts the lines of the CSV; it fails the test on an error or a status
// other than 200.
func downloadLines(t *testing.T, client *http.Client, url string, pause time.Duration) int {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("download: %d %s", resp.StatusCode, b)
	}
	lines := 0
	buf := make([]byte, 64<<10)
	for {
		n, err := resp.Body.Read(buf)
		lines += strings.Count(string(buf[:n]), "\n")
		if err == io.EOF {
			return lines
		}
		if err != nil {
			t.Fatalf("download cut after %d lines: %v", lines, err)
		}
		time.Sleep(pause)
	}
}

// get sends a GET with client and reads the whole answer.
func get(t *testing.T, client *http.Client, url string) response {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}
