package httpapi_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/tools/apitest"
)

// scopeTableHeader is the header row of the API guide's route and scope
// table (docs/api.md, "Authentication").
const scopeTableHeader = "| method | route | scope |"

// docRoute is a row of the scope table and the line it stands on.
type docRoute struct {
	httpapi.Route
	line int
}

// scopeTable reads the route and scope table of the Markdown file at path:
// one row per route, the method and route in backquotes, the scope in
// backquotes or "none …" for a route that needs no token.
func scopeTable(t *testing.T, path string) []docRoute {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	start := slices.Index(lines, scopeTableHeader)
	if start < 0 {
		t.Fatalf("%s has no table headed %q", path, scopeTableHeader)
	}
	var rows []docRoute
	for n := start + 2; n < len(lines) && strings.HasPrefix(lines[n], "|"); n++ {
		cells := strings.Split(strings.Trim(lines[n], "|"), "|")
		if len(cells) != 3 {
			t.Errorf("%s:%d: want 3 cells, got %d: %s", path, n+1, len(cells), lines[n])
			continue
		}
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		scope := strings.Trim(cells[2], "`")
		if strings.HasPrefix(cells[2], "none") {
			scope = ""
		} else if !strings.HasPrefix(cells[2], "`") || strings.Count(cells[2], "`") != 2 {
			t.Errorf("%s:%d: scope %q is neither a `scope` nor \"none\"", path, n+1, cells[2])
		}
		rows = append(rows, docRoute{
			Route: httpapi.Route{Method: strings.Trim(cells[0], "`"), Pattern: strings.Trim(cells[1], "`"), Scope: scope},
			line:  n + 1,
		})
	}
	return rows
}

func scopeName(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// TestDocsScopeTable holds the API guide's route and scope table to the
// router's: every route under /api/v1 is listed once, with the scope the
// router checks, and nothing else is.
func TestDocsScopeTable(t *testing.T) {
	const path = "../../docs/api.md"
	documented := map[string]docRoute{}
	for _, r := range scopeTable(t, path) {
		key := r.Method + " " + r.Pattern
		if prev, ok := documented[key]; ok {
			t.Errorf("docs/api.md:%d: %s is listed again (first at line %d)", r.line, key, prev.line)
		}
		documented[key] = r
	}
	routes := httpapi.Routes()
	if len(routes) == 0 {
		t.Fatal("httpapi.Routes() lists no route")
	}
	served := map[string]bool{}
	for _, r := range routes {
		key := r.Method + " " + r.Pattern
		served[key] = true
		d, ok := documented[key]
		switch {
		case !ok:
			t.Errorf("docs/api.md's scope table lacks %s (scope %s): add a row | `%s` | `%s` | %s |",
				key, scopeName(r.Scope), r.Method, r.Pattern, scopeName(r.Scope))
		case d.Scope != r.Scope:
			t.Errorf("docs/api.md:%d: %s needs scope %s, the table says %s", d.line, key, scopeName(r.Scope), scopeName(d.Scope))
		}
	}
	for key, d := range documented {
		if !served[key] {
			t.Errorf("docs/api.md:%d: the scope table lists %s, which is no route under /api/v1", d.line, key)
		}
	}
}

// TestDocsShellBlocksAreRun keeps the docs honest: every ```sh block of
// the README and the guides under docs/ is run by a test, or is one of the
// kinds that are for the reader's machine. TestREADMEExamples runs those of
// its exampleFiles; internal/events's TestREADMEConsumer runs the redis-cli
// examples of docs/events.md. Anywhere else a ```sh block may only start
// with make or kubectl; show other commands in ```text blocks.
func TestDocsShellBlocksAreRun(t *testing.T) {
	files := []string{"README.md"}
	guides, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range guides {
		files = append(files, "docs/"+filepath.Base(g))
	}
	if len(files) < 5 {
		t.Fatalf("found only %v; want the README and the guides", files)
	}
	for _, file := range files {
		for _, b := range apitest.Fences(t, filepath.Join("..", "..", filepath.FromSlash(file))) {
			if b.Lang != "sh" {
				continue
			}
			first, _, _ := strings.Cut(strings.TrimSpace(b.Text), " ")
			switch {
			case first == "make" || first == "kubectl":
				// For the reader's machine.
			case first == "redis-cli":
				if file != "docs/events.md" {
					t.Errorf("%s:%d: a redis-cli example outside docs/events.md, whose examples internal/events's TestREADMEConsumer runs", file, b.Line)
				}
			case slices.Contains(exampleFiles, file):
				// TestREADMEExamples runs it.
			default:
				t.Errorf("%s:%d: no test runs this ```sh block (%s…): move it to %s, or make it a ```text block",
					file, b.Line, first, strings.Join(exampleFiles, " or "))
			}
		}
	}
}
