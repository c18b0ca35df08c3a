package httpapi_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/segments-service/segments/internal/app"
	"github.com/segments-service/segments/tools/apitest"
)

// readmeBlock is a shell block of a Markdown file and the output shown
// after it (none for a block that shows none).
type readmeBlock struct {
	file     string // as the reader knows it: README.md, docs/api.md
	line     int
	command  string
	lang     string // json, http, csv, text or ""
	response string
}

// at names the block's place for error messages: README.md:42.
func (b readmeBlock) at() string { return fmt.Sprintf("%s:%d", b.file, b.line) }

// exampleFiles are the Markdown files whose shell examples
// TestREADMEExamples runs, each in a session of its own on a fresh
// database: the README's tour and the API guide. (docs/events.md's
// redis-cli examples are internal/events's TestREADMEConsumer's;
// TestDocsShellBlocksAreRun keeps every other file free of examples that
// nothing runs.)
var exampleFiles = []string{"README.md", "docs/api.md"}

// TestREADMEExamples runs the shell examples of each of exampleFiles as
// written, in order, in one bash session per file (so that a variable one
// example sets is there for the next), against the real router on a real
// port of a fresh database; only localhost:8080 is replaced by that port.
// Each output must be the one the file shows after the block, times,
// request ids and link tokens aside. Blocks that start with make are for
// the reader's machine and are not run; those that start with redis-cli
// read change events, which internal/events's TestREADMEConsumer runs.
func TestREADMEExamples(t *testing.T) {
	for _, file := range exampleFiles {
		t.Run(file, func(t *testing.T) { runExamples(t, file) })
	}
}

// runExamples runs the examples of one file (a path from the repository's
// root) on a database of their own.
func runExamples(t *testing.T, file string) {
	blocks := readmeBlocks(t, file)
	if len(blocks) < 5 {
		t.Fatalf("found only %d shell examples in %s", len(blocks), file)
	}
	// The API and a worker of the session's own, as make run starts them.
	queue := fmt.Sprintf("examples-%d", time.Now().UnixNano())
	proc := apitest.Process(t, env.NewPool(t), env.RedisURL,
		map[string]string{"WORKER_QUEUE": queue, "REPORT_SECRET": testSecret, "SWEEP_INTERVAL": "1h", "EVENTS_ENABLED": "false"},
		time.Now, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), app.Roles{API: true, Worker: true})
	srv := httptest.NewServer(proc.Handler())
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	var script strings.Builder
	for i, b := range blocks {
		fmt.Fprintf(&script, "printf '\\n@@@ %d\\n'\n%s\nprintf '\\n@@@ rc %%d\\n' $?\n", i, strings.ReplaceAll(b.command, "localhost:8080", addr))
	}
	cmd := exec.Command("bash", "-c", script.String())
	cmd.Dir = t.TempDir() // curl -OJ saves files here
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, stderr.String())
	}
	outputs := splitOutputs(t, string(out), len(blocks))
	for i, b := range blocks {
		got := outputs[i]
		if got.rc != 0 {
			t.Errorf("%s: %s\nexited %d; stderr so far:\n%s", b.at(), b.command, got.rc, stderr.String())
			continue
		}
		switch b.lang {
		case "":
			if strings.TrimSpace(got.text) != "" {
				t.Errorf("%s: %s\nprinted %q, but %s shows no output", b.at(), b.command, got.text, b.file)
			}
		case "json":
			if diff := cmp.Diff(normalizeJSON(t, b.response), normalizeJSON(t, got.text)); diff != "" {
				t.Errorf("%s: %s\nresponse differs from %s (-shown +actual):\n%s\nactual: %s", b.at(), b.command, b.file, diff, got.text)
			}
		case "http":
			checkHTTP(t, b, got.text)
		case "csv":
			checkCSV(t, b, got.text)
		case "text":
			if maskMonth(strings.TrimSpace(got.text)) != maskMonth(b.response) {
				t.Errorf("%s: %s\nprinted %q, %s shows %q", b.at(), b.command, strings.TrimSpace(got.text), b.file, b.response)
			}
		}
	}
}

// reportPath is where report links point; the token after it changes with
// every run.
const reportPath = "/api/v1/reports/history/"

// blockOutput is what one block printed and its exit status.
type blockOutput struct {
	text string
	rc   int
}

// splitOutputs cuts bash's output at the markers the script prints.
func splitOutputs(t *testing.T, out string, n int) []blockOutput {
	t.Helper()
	outputs := make([]blockOutput, n)
	parts := strings.Split(out, "\n@@@ ")
	cur := -1
	for _, p := range parts[1:] {
		head, rest, _ := strings.Cut(p, "\n")
		if rc, ok := strings.CutPrefix(head, "rc "); ok && cur >= 0 {
			outputs[cur].rc, _ = strconv.Atoi(rc)
			continue
		}
		i, err := strconv.Atoi(head)
		if err != nil || i >= n {
			t.Fatalf("bad marker %q in the script's output", head)
		}
		cur = i
		outputs[i].text = rest
	}
	return outputs
}

// monthPattern matches the YYYY-MM of the month a report covers, which the
// examples compute with date.
var monthPattern = regexp.MustCompile(`[0-9]{4}-[0-9]{2}`)

func maskMonth(s string) string { return monthPattern.ReplaceAllString(s, "<month>") }

// checkCSV compares a CSV body row by row; the datetime column varies and
// must only be RFC 3339 UTC.
func checkCSV(t *testing.T, b readmeBlock, got string) {
	t.Helper()
	mask := func(s string) []string {
		var rows []string
		for i, line := range strings.Split(strings.TrimSpace(s), "\n") {
			cols := strings.Split(line, ";")
			if i > 0 && len(cols) == 5 {
				if _, err := time.Parse(time.RFC3339Nano, cols[3]); err != nil || !strings.HasSuffix(cols[3], "Z") {
					t.Errorf("%s: datetime %q is not RFC 3339 UTC", b.at(), cols[3])
				}
				cols[3] = "<datetime>"
			}
			if i > 0 && len(cols) == 4 { // a member list: added_at, expires_at (empty if permanent)
				for _, c := range []int{1, 2} {
					if cols[c] == "" && c == 2 {
						continue
					}
					if _, err := time.Parse(time.RFC3339Nano, cols[c]); err != nil || !strings.HasSuffix(cols[c], "Z") {
						t.Errorf("%s: time %q is not RFC 3339 UTC", b.at(), cols[c])
					}
					cols[c] = "<time>"
				}
			}
			rows = append(rows, strings.Join(cols, ";"))
		}
		return rows
	}
	if diff := cmp.Diff(mask(b.response), mask(got)); diff != "" {
		t.Errorf("%s: CSV differs from %s (-shown +actual):\n%s", b.at(), b.file, diff)
	}
}

// checkHTTP compares what curl -i printed with the status line, the
// headers (Date and X-Request-Id vary) and the body the file shows.
func checkHTTP(t *testing.T, b readmeBlock, got string) {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(strings.TrimLeft(got, "\n"))), nil)
	if err != nil {
		t.Errorf("%s: curl printed no HTTP response: %v\n%s", b.at(), err, got)
		return
	}
	defer resp.Body.Close()
	head, body, _ := strings.Cut(b.response, "\n\n")
	lines := strings.Split(head, "\n")
	fields := strings.Fields(lines[0])
	if len(fields) < 2 {
		t.Fatalf("%s: bad status line %q", b.at(), lines[0])
	}
	if want, _ := strconv.Atoi(fields[1]); resp.StatusCode != want {
		t.Errorf("%s: status %d, %s shows %d", b.at(), resp.StatusCode, b.file, want)
	}
	for _, h := range lines[1:] {
		k, v, _ := strings.Cut(h, ": ")
		if k == "Date" || k == "X-Request-Id" {
			continue
		}
		if got := resp.Header.Get(k); maskMonth(got) != maskMonth(v) {
			t.Errorf("%s: header %s is %q, %s shows %q", b.at(), k, got, b.file, v)
		}
	}
	var actual strings.Builder
	if _, err := bufio.NewReader(resp.Body).WriteTo(&actual); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(body) != "" || strings.TrimSpace(actual.String()) != "" {
		if diff := cmp.Diff(normalizeJSON(t, body), normalizeJSON(t, actual.String())); diff != "" {
			t.Errorf("%s: body differs from %s (-shown +actual):\n%s", b.at(), b.file, diff)
		}
	}
}

// volatile fields differ on every run; a shown value and an actual value
// match if both are present (or both null).
var volatile = map[string]bool{"created_at": true, "added_at": true, "expires_at": true, "finished_at": true, "at": true, "request_id": true}

// historyCursor is the shape of a history page's next_after, which holds a
// time and varies too.
var historyCursor = regexp.MustCompile(`^[0-9]+-[0-9]+$`)

func normalizeJSON(t *testing.T, s string) any {
	t.Helper()
	s = strings.TrimSpace(s)
	if s == "" {
		return nil
	}
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("not JSON: %s: %v", s, err)
	}
	var walk func(any) any
	walk = func(v any) any {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if volatile[k] && e != nil {
					x[k] = "<" + k + ">"
					continue
				}
				// A report link matches up to its token, which changes
				// with every run.
				if c, ok := e.(string); ok && k == "url" && strings.Contains(c, reportPath) {
					x[k] = c[:strings.Index(c, reportPath)+len(reportPath)] + "<token>"
					continue
				}
				if c, ok := e.(string); ok && k == "next_after" && historyCursor.MatchString(c) {
					x[k] = "<cursor>"
					continue
				}
				x[k] = walk(e)
			}
		case []any:
			for i, e := range x {
				x[i] = walk(e)
			}
		}
		return v
	}
	return walk(v)
}

// readmeBlocks finds each ```sh block of file (a path from the
// repository's root) to run (all but those that start with make or
// redis-cli) and the ```json, ```http, ```csv or ```text block right after
// it, if any.
func readmeBlocks(t *testing.T, file string) []readmeBlock {
	t.Helper()
	all := apitest.Fences(t, filepath.Join("..", "..", filepath.FromSlash(file)))
	var out []readmeBlock
	for i, b := range all {
		if b.Lang != "sh" || strings.HasPrefix(b.Text, "make ") || strings.HasPrefix(b.Text, "redis-cli ") {
			continue
		}
		rb := readmeBlock{file: file, line: b.Line, command: strings.TrimSpace(b.Text)}
		// The output is the next block, if nothing but a blank line stands
		// between them.
		if i+1 < len(all) && all[i+1].Line == b.End+2 {
			switch next := all[i+1]; next.Lang {
			case "json", "http", "csv", "text":
				rb.lang, rb.response = next.Lang, strings.TrimSpace(next.Text)
			}
		}
		out = append(out, rb)
	}
	return out
}
