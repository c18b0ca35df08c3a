// Command schema writes the schema of a freshly migrated database to a
// file (docs/schema.sql), so that the current body of every table,
// function and trigger can be read in one place; the migrations stay the
// history. `make docs` runs it; `make docs-check` runs it with -check,
// which fails if the file is not what the migrations make.
//
//	go run ./tools/cmd/schema [-check] docs/schema.sql
//
// It migrates a new database on TEST_DATABASE_URL's server if that is set,
// else on a throwaway PostgreSQL started from the local binaries, and
// dumps it with that server's pg_dump --schema-only, normalised so that the
// output depends on the migrations only (no versions, no SET lines, no
// owners, no pg_dump \restrict keys).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/segments-service/segments/internal/postgres"
	"github.com/segments-service/segments/tools/localserver"
	"github.com/segments-service/segments/tools/testenv"
)

const header = `-- The schema of a database migrated to the newest version: every table,
-- index, function and trigger as it stands now. Generated from migrations/
-- by make docs (go run ./tools/cmd/schema docs/schema.sql); make docs-check
-- fails when it is out of date. Do not edit: write a migration.
`

func main() {
	check := flag.Bool("check", false, "compare with the file instead of writing it; exit 1 if they differ")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: schema [-check] docs/schema.sql")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := run(ctx, flag.Arg(0), *check); err != nil {
		fmt.Fprintln(os.Stderr, "schema:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, path string, check bool) error {
	dump, err := dumpMigrated(ctx)
	if err != nil {
		return err
	}
	if !check {
		return os.WriteFile(path, dump, 0o644)
	}
	have, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !bytes.Equal(have, dump) {
		return fmt.Errorf("%s is not what the migrations make: run make docs\n%s", path, firstDifference(have, dump))
	}
	fmt.Printf("%s is up to date\n", path)
	return nil
}

// dumpMigrated migrates a new database and returns its normalised schema.
func dumpMigrated(ctx context.Context) ([]byte, error) {
	admin := os.Getenv("TEST_DATABASE_URL")
	if admin == "" {
		dir, err := os.MkdirTemp("", "segments-schema-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		if err := os.Chmod(dir, 0o755); err != nil { // the postgres user, when run as root, must reach it
			return nil, err
		}
		pg, err := localserver.StartPostgres(ctx, localserver.PostgresOptions{Dir: filepath.Join(dir, "pg"), Throwaway: true})
		if err != nil {
			return nil, err
		}
		defer pg.Stop()
		admin = pg.URL("postgres")
	}
	name := fmt.Sprintf("segments_schema_%d", os.Getpid())
	if err := testenv.Exec(ctx, admin, "CREATE DATABASE "+name); err != nil {
		return nil, err
	}
	defer testenv.Exec(context.WithoutCancel(ctx), admin, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	dbURL := testenv.WithDatabase(admin, name)
	if _, _, err := postgres.Migrate(dbURL, "up"); err != nil {
		return nil, err
	}
	pgDump, err := localserver.FindBinary("pg_dump")
	if err != nil {
		return nil, err
	}
	out, err := exec.CommandContext(ctx, pgDump, "--schema-only", "--no-owner", "--no-privileges",
		"--exclude-table=schema_migrations", "--dbname="+dbURL).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		return nil, fmt.Errorf("pg_dump: %w\n%s", err, stderr)
	}
	return normalise(out), nil
}

var (
	// Lines that change with the server, the client or the run.
	unstable   = regexp.MustCompile(`^(-- Dumped (from|by) .*|SET .*|SELECT pg_catalog\.set_config.*|\\(un)?restrict .*)$`)
	blankLines = regexp.MustCompile(`\n{3,}`)
)

// normalise drops what varies between servers and runs, and gathers the
// dump's runs of blank lines.
func normalise(dump []byte) []byte {
	var b strings.Builder
	b.WriteString(header)
	for line := range strings.SplitSeq(string(dump), "\n") {
		if unstable.MatchString(line) {
			continue
		}
		b.WriteString(strings.TrimRight(line, " \t"))
		b.WriteByte('\n')
	}
	s := blankLines.ReplaceAllString(b.String(), "\n\n")
	return []byte(strings.TrimRight(s, "\n") + "\n")
}

// firstDifference shows the first line where have and want differ.
func firstDifference(have, want []byte) string {
	h, w := strings.Split(string(have), "\n"), strings.Split(string(want), "\n")
	for i := 0; i < max(len(h), len(w)); i++ {
		var hl, wl string
		if i < len(h) {
			hl = h[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if hl != wl {
			return fmt.Sprintf("line %d:\n  file:       %q\n  migrations: %q", i+1, hl, wl)
		}
	}
	return ""
}
