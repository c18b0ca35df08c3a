package config_test

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/segments-service/segments/internal/config"
)

// The three places a configuration key must be: what Load reads, what
// .env.example lists, and the configuration table of the operations guide.
const (
	envExamplePath = "../../.env.example"
	guidePath      = "../../docs/operations.md"
	guideName      = "docs/operations.md's configuration table"
)

// envExampleLine is a KEY=value line of .env.example; a commented-out
// "# KEY=value" line lists an optional key too (its value is an example,
// not a default).
var envExampleLine = regexp.MustCompile(`^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$`)

// envKey is a key as a table cell names it: `KEY`.
var envKey = regexp.MustCompile("`([A-Z][A-Z0-9_]*)`")

// envDefault is a default cell that gives a value: one `value`.
var envDefault = regexp.MustCompile("^`([^`]*)`$")

// documentedKey is a key of the guide's table, with its default (if the
// table shows one) and the line it stands on.
type documentedKey struct {
	line       int
	def        string
	hasDefault bool
}

// readEnvExample returns the keys .env.example lists and the values of
// those it sets (not commented out).
func readEnvExample(t *testing.T) (listed map[string]bool, values map[string]string) {
	t.Helper()
	b, err := os.ReadFile(envExamplePath)
	if err != nil {
		t.Fatal(err)
	}
	listed, values = map[string]bool{}, map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		m := envExampleLine.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		listed[m[2]] = true
		if m[1] == "" {
			values[m[2]] = m[3]
		}
	}
	return listed, values
}

// readGuideTable returns the keys of the first table under the guide's
// "## Configuration" heading; a row may name more than one key
// (`AUTH_JWT_ISSUER`, `AUTH_JWT_AUDIENCE`).
func readGuideTable(t *testing.T) map[string]documentedKey {
	t.Helper()
	b, err := os.ReadFile(guidePath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	start := slices.Index(lines, "## Configuration")
	if start < 0 {
		t.Fatalf("%s has no heading \"## Configuration\"", guidePath)
	}
	n := start + 1
	for n < len(lines) && !strings.HasPrefix(lines[n], "|") && !strings.HasPrefix(lines[n], "## ") {
		n++
	}
	if n == len(lines) || !strings.HasPrefix(lines[n], "| variable | default |") {
		t.Fatalf("%s: no table headed \"| variable | default | …\" under \"## Configuration\"", guidePath)
	}
	keys := map[string]documentedKey{}
	for n += 2; n < len(lines) && strings.HasPrefix(lines[n], "|"); n++ {
		cells := strings.Split(strings.Trim(lines[n], "|"), " | ")
		if len(cells) < 3 {
			t.Errorf("docs/operations.md:%d: want variable, default and meaning: %s", n+1, lines[n])
			continue
		}
		names := envKey.FindAllStringSubmatch(cells[0], -1)
		if len(names) == 0 {
			t.Errorf("docs/operations.md:%d: the first cell names no `KEY`: %s", n+1, lines[n])
		}
		d := documentedKey{line: n + 1}
		if m := envDefault.FindStringSubmatch(strings.TrimSpace(cells[1])); m != nil {
			d.def, d.hasDefault = m[1], true
		}
		for _, name := range names {
			if prev, ok := keys[name[1]]; ok {
				t.Errorf("docs/operations.md:%d: %s is listed again (first at line %d)", n+1, name[1], prev.line)
			}
			keys[name[1]] = d
		}
	}
	return keys
}

// TestConfigurationIsDocumented holds three lists of configuration keys to
// one another: the keys Load reads, the keys .env.example lists, and the
// keys of the configuration table in docs/operations.md. A key missing
// from any of them fails, naming where it is and where it is not; so does
// a default in the table that differs from the value .env.example sets.
func TestConfigurationIsDocumented(t *testing.T) {
	read := map[string]bool{}
	if _, err := config.Load(func(k string) string {
		if _, retired := config.Retired[k]; !retired {
			read[k] = true
		}
		return ""
	}); err != nil {
		t.Fatal(err)
	}
	if len(read) < 10 {
		t.Fatalf("config.Load read only %d keys", len(read))
	}
	listed, values := readEnvExample(t)
	table := readGuideTable(t)

	all := map[string]bool{}
	for _, m := range []map[string]bool{read, listed} {
		for k := range m {
			all[k] = true
		}
	}
	for k := range table {
		all[k] = true
	}
	keys := make([]string, 0, len(all))
	for k := range all {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		_, inTable := table[k]
		var in, missing []string
		for _, place := range []struct {
			name string
			has  bool
		}{{"read by config.Load", read[k]}, {"listed in .env.example", listed[k]}, {"in " + guideName, inTable}} {
			if place.has {
				in = append(in, place.name)
			} else {
				missing = append(missing, place.name)
			}
		}
		if len(missing) > 0 {
			t.Errorf("%s is %s, but not %s", k, strings.Join(in, " and "), strings.Join(missing, " nor "))
		}
	}

	for _, k := range keys {
		d, ok := table[k]
		v, set := values[k]
		if !ok || !d.hasDefault || !set || v == "" {
			continue
		}
		if d.def != v {
			t.Errorf("docs/operations.md:%d: %s's default is `%s` there, %s in .env.example", d.line, k, d.def, v)
		}
	}
}
