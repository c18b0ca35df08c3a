package httpapi_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// readmeExample is a curl command from README.md and the response shown
// after it.
type readmeExample struct {
	line     int
	command  string
	lang     string // json or http
	response string
}

// readmeMonth is the month the README's report examples were recorded in;
// the test moves them to the current month, since history is stamped now.
const readmeMonth = "2026-11"

// reportPath is where report links point; a link's token changes with
// every run, so a README example that downloads one gets the token of the
// link the example before it received.
const reportPath = "/api/v1/reports/history/"

// TestREADMEExamples runs every curl example in README.md, in order, on a
// fresh database through the real router, and checks that each response is
// the one the README shows (times, request ids and link tokens aside).
func TestREADMEExamples(t *testing.T) {
	examples := readmeExamples(t, "../../README.md")
	if len(examples) < 10 {
		t.Fatalf("found only %d curl examples in README.md", len(examples))
	}
	a := newAPI(t)
	month := time.Now().UTC().Format("2006-01")
	lastToken := ""
	for _, ex := range examples {
		req, err := parseCurl(strings.ReplaceAll(ex.command, readmeMonth, month))
		if err != nil {
			t.Fatalf("README.md:%d: %v", ex.line, err)
		}
		if strings.HasPrefix(req.target, reportPath) {
			req.target = reportPath + lastToken
		}
		header := []string{"Host", req.host}
		for k, v := range req.header {
			header = append(header, k, v)
		}
		var body any
		if req.data != nil {
			body = *req.data
		}
		r := a.do(req.method, req.target, body, header...)
		want := strings.ReplaceAll(ex.response, readmeMonth, month)

		switch {
		case req.writeOut != "":
			checkSavedFile(t, ex, req, r, want)
			continue
		case ex.lang == "csv":
			checkCSV(t, ex, r, want)
			continue
		case ex.lang == "http":
			want = checkHTTPHead(t, ex, r)
		case r.status >= 300 && !strings.Contains(want, fmt.Sprintf(`"status":%d`, r.status)):
			t.Errorf("README.md:%d: %s answered %d: %s", ex.line, ex.command, r.status, r.body)
			continue
		}
		if diff := cmp.Diff(normalizeJSON(t, want), normalizeJSON(t, string(r.body))); diff != "" {
			t.Errorf("README.md:%d: %s\nresponse differs from README (-readme +actual):\n%s\nactual: %s", ex.line, ex.command, diff, r.body)
		}
		var link struct{ URL string }
		if json.Unmarshal(r.body, &link) == nil && strings.Contains(link.URL, reportPath) {
			lastToken = link.URL[strings.Index(link.URL, reportPath)+len(reportPath):]
		}
	}
}

// checkCSV compares a CSV body row by row; the datetime column varies and
// must only be RFC 3339 UTC.
func checkCSV(t *testing.T, ex readmeExample, r response, want string) {
	t.Helper()
	if r.status != http.StatusOK {
		t.Errorf("README.md:%d: status %d: %s", ex.line, r.status, r.body)
		return
	}
	mask := func(s string) []string {
		var rows []string
		for i, line := range strings.Split(strings.TrimSpace(s), "\n") {
			cols := strings.Split(line, ";")
			if i > 0 && len(cols) == 5 {
				if _, err := time.Parse(time.RFC3339Nano, cols[3]); err != nil || !strings.HasSuffix(cols[3], "Z") {
					t.Errorf("README.md:%d: datetime %q is not RFC 3339 UTC", ex.line, cols[3])
				}
				cols[3] = "<datetime>"
			}
			rows = append(rows, strings.Join(cols, ";"))
		}
		return rows
	}
	if diff := cmp.Diff(mask(want), mask(string(r.body))); diff != "" {
		t.Errorf("README.md:%d: CSV differs from README (-readme +actual):\n%s", ex.line, diff)
	}
}

// checkSavedFile checks `curl -OJ -w '%{filename_effective}'`: the file
// name curl prints is the one Content-Disposition gives.
func checkSavedFile(t *testing.T, ex readmeExample, req curlRequest, r response, want string) {
	t.Helper()
	var name string
	if _, err := fmt.Sscanf(r.header.Get("Content-Disposition"), "attachment; filename=%q", &name); err != nil || r.status != http.StatusOK {
		t.Errorf("README.md:%d: status %d, Content-Disposition %q", ex.line, r.status, r.header.Get("Content-Disposition"))
		return
	}
	if got := strings.ReplaceAll(req.writeOut, "%{filename_effective}", name); strings.TrimSpace(got) != strings.TrimSpace(want) {
		t.Errorf("README.md:%d: curl would print %q, README shows %q", ex.line, got, want)
	}
}

// checkHTTPHead compares the status line and the headers the README shows
// (Date and X-Request-Id vary) and returns the README's body.
func checkHTTPHead(t *testing.T, ex readmeExample, r response) string {
	t.Helper()
	head, body, _ := strings.Cut(ex.response, "\n\n")
	lines := strings.Split(head, "\n")
	fields := strings.Fields(lines[0])
	if len(fields) < 2 {
		t.Fatalf("README.md:%d: bad status line %q", ex.line, lines[0])
	}
	if want, _ := strconv.Atoi(fields[1]); r.status != want {
		t.Errorf("README.md:%d: status %d, README shows %d", ex.line, r.status, want)
	}
	for _, h := range lines[1:] {
		k, v, _ := strings.Cut(h, ": ")
		if k == "Date" || k == "X-Request-Id" {
			continue
		}
		if got := r.header.Get(k); got != v {
			t.Errorf("README.md:%d: header %s is %q, README shows %q", ex.line, k, got, v)
		}
	}
	return body
}

// volatile fields differ on every run; a README value and an actual value
// match if both are present (or both null).
var volatile = map[string]bool{"created_at": true, "added_at": true, "expires_at": true, "at": true, "request_id": true}

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

// readmeExamples finds each ```sh block that runs curl and the ```json or
// ```http block after it.
func readmeExamples(t *testing.T, path string) []readmeExample {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type block struct {
		line       int
		lang, text string
	}
	var (
		blocks []block
		cur    *block
		sc     = bufio.NewScanner(f)
		n      int
	)
	for sc.Scan() {
		n++
		line := sc.Text()
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			cur = &block{line: n, lang: strings.TrimPrefix(line, "```")}
		case cur != nil && line == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.text += line + "\n"
		}
	}
	var out []readmeExample
	for i, b := range blocks {
		if b.lang != "sh" || !strings.HasPrefix(b.text, "curl ") {
			continue
		}
		if i+1 == len(blocks) || !slices.Contains([]string{"json", "http", "csv", "text"}, blocks[i+1].lang) {
			t.Fatalf("README.md:%d: a curl example must be followed by its output (```json, ```http, ```csv or ```text)", b.line)
		}
		out = append(out, readmeExample{
			line:     b.line,
			command:  strings.TrimSpace(strings.ReplaceAll(b.text, "\\\n", " ")),
			lang:     blocks[i+1].lang,
			response: strings.TrimSpace(blocks[i+1].text),
		})
	}
	return out
}

// curlRequest is what a README curl command asks for.
type curlRequest struct {
	method, host, target string
	header               map[string]string
	data                 *string
	// writeOut is -w's format, for a download saved with -OJ.
	writeOut string
}

// parseCurl reads the curl options the README uses: -s, -i, -X, -H, -d,
// and -OJ with -w.
func parseCurl(cmd string) (curlRequest, error) {
	words, err := shellWords(cmd)
	if err != nil {
		return curlRequest{}, err
	}
	req := curlRequest{header: map[string]string{}}
	for i := 1; i < len(words); i++ {
		w := words[i]
		next := func() (string, error) {
			if i+1 >= len(words) {
				return "", fmt.Errorf("%s needs a value", w)
			}
			i++
			return words[i], nil
		}
		switch w {
		case "-s", "-i", "-si", "-OJ", "-sOJ":
		case "-w":
			if req.writeOut, err = next(); err != nil {
				return req, err
			}
			req.writeOut = strings.ReplaceAll(req.writeOut, `\n`, "\n")
		case "-X":
			if req.method, err = next(); err != nil {
				return req, err
			}
		case "-H":
			h, err := next()
			if err != nil {
				return req, err
			}
			k, v, _ := strings.Cut(h, ":")
			req.header[k] = strings.TrimSpace(v)
		case "-d":
			d, err := next()
			if err != nil {
				return req, err
			}
			req.data = &d
		default:
			if strings.HasPrefix(w, "-") {
				return req, fmt.Errorf("curl option %s is not understood by this test", w)
			}
			u, err := url.Parse("http://" + strings.TrimPrefix(w, "http://"))
			if err != nil {
				return req, err
			}
			req.host, req.target = u.Host, u.RequestURI()
		}
	}
	if req.method == "" {
		req.method = "GET"
		if req.data != nil {
			req.method = "POST"
		}
	}
	if req.target == "" {
		return req, fmt.Errorf("no URL in %q", cmd)
	}
	return req, nil
}

// shellWords splits a command line as sh would, for the quoting the README
// uses: single quotes, double quotes and backslashes.
func shellWords(s string) ([]string, error) {
	var (
		words []string
		cur   strings.Builder
		in    bool
		quote rune
	)
	for i := 0; i < len(s); i++ {
		c := rune(s[i])
		switch {
		case quote == '\'':
			if c == '\'' {
				quote = 0
			} else {
				cur.WriteRune(c)
			}
		case quote == '"':
			if c == '"' {
				quote = 0
			} else if c == '\\' && i+1 < len(s) {
				i++
				cur.WriteByte(s[i])
			} else {
				cur.WriteRune(c)
			}
		case c == '\'' || c == '"':
			quote, in = c, true
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			in = true
		case c == ' ' || c == '\t' || c == '\n':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(c)
			in = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unclosed quote in %q", s)
	}
	if in {
		words = append(words, cur.String())
	}
	return words, nil
}
