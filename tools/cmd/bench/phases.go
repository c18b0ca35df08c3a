package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/tools/loadgen"
)

// bench is what the phases share: the options, the running service, a pool
// on its database, the client the load goes through, and the report they
// fill, a row or more each.
type bench struct {
	o      options
	svc    *service
	pool   *pgxpool.Pool
	dbURL  string
	client *http.Client
	rep    *report
	log    func(string, ...any)
}

// phases runs the load, in order, and fills the report: with -only, one
// phase; else the reads, the changes, a rollout under reads, the reports
// and what downloads cost the reads.
func (b *bench) phases(ctx context.Context) error {
	switch b.o.only {
	case "changes":
		return b.changePhase(ctx)
	case "percent":
		return b.percentPhase(ctx)
	case "members":
		return b.membersPhase(ctx)
	case "events":
		return b.eventsPhase(ctx)
	case "exports":
		return b.exportsPhase(ctx)
	case "population":
		return b.populationPhase(ctx)
	case "imports":
		return b.importsPhase(ctx)
	case "layers":
		return b.layersPhase(ctx)
	}
	for _, phase := range []func(context.Context) error{b.readPhase, b.changePhase, b.rolloutPhase, b.reportPhase, b.exportsPhase} {
		if err := phase(ctx); err != nil {
			return err
		}
	}
	return nil
}

// readPhase runs pgbench on the read's SQL, then reads through the API
// with the cache cold, warm and off.
//
// Each closed-loop phase runs right after pgbench sends the same SQL with
// as many connections straight to PostgreSQL: the ceiling that an HTTP
// round trip plus a database round trip cannot pass.
func (b *bench) readPhase(ctx context.Context) error {
	b.log("phase: pgbench, the read's SQL")
	readCeiling, err := runPgbench(ctx, b.o, b.dbURL, uniform.pgbench)
	if err != nil {
		return err
	}
	b.rep.add("pgbench: the read's SQL", loadgen.Result{}, 0, fmt.Sprintf("%.0f tps", readCeiling))
	// Reads go through wrk if it is installed: at tens of thousands of
	// requests per second the Go load generator would take a core of its
	// own from the service on a small machine.
	// The cache starts empty: the first run fills it as it goes, the
	// second shows it warm.
	for _, target := range []struct{ name, base string }{
		{"GET /users/{id}/segments, cache on, cold", b.svc.base},
		{"GET /users/{id}/segments, cache on, warm", b.svc.base},
		{"GET /users/{id}/segments, cache off", b.svc.uncached},
	} {
		r, err := b.closedReads(ctx, target.name, target.base, uniform, readCeiling)
		if err != nil {
			return err
		}
		b.rep.rows = append(b.rep.rows, r)
	}
	return nil
}

// closedReads sends reads of users drawn as d says to base, closed loop,
// and returns them as a row named name: throughput and latency, the ratio
// to ceiling (pgbench's tps on the same SQL) and, for the API with the
// cache on, the share of reads it answered from memory.
func (b *bench) closedReads(ctx context.Context, name, base string, d distribution, ceiling float64) (row, error) {
	b.log("phase: %s (closed loop)", name)
	before, err := cacheLookups(base)
	if err != nil {
		return row{}, err
	}
	w, res, err := readLoad(ctx, b.o, b.client, b.o.closedLoop(), base, int64(b.o.users), d)
	if err != nil {
		return row{}, err
	}
	after, err := cacheLookups(base)
	if err != nil {
		return row{}, err
	}
	rate := res.Throughput()
	if w != nil {
		rate = w.rate
	}
	detail := fmt.Sprintf("%.2f× pgbench", rate/ceiling)
	if hits, all := after.hits-before.hits, after.all-before.all; base == b.svc.base && all > 0 {
		detail += fmt.Sprintf("; %.1f %% hits", 100*hits/all)
	}
	return row{name: name, res: res, detail: detail, wrk: w}, nil
}

// changePhase runs pgbench on the change's SQL, then changes through the
// API (each with an Idempotency-Key of its own if o.keys).
func (b *bench) changePhase(ctx context.Context) error {
	b.log("phase: pgbench, the change's SQL")
	changeCeiling, err := runPgbench(ctx, b.o, b.dbURL, "tools/cmd/bench/pgbench/change.sql")
	if err != nil {
		return err
	}
	b.rep.add("pgbench: the change's SQL", loadgen.Result{}, 0, fmt.Sprintf("%.0f tps", changeCeiling))
	b.log("phase: changes, add 2 remove 1 (closed loop)")
	next := loadgen.ChangeSegments(b.svc.base, int64(b.o.users), b.o.segments)
	name := "POST /users/{id}/segments"
	if b.o.keys {
		next = loadgen.WithIdempotencyKeys(next, fmt.Sprintf("bench-%d", time.Now().UnixNano()))
		name += ", Idempotency-Key"
	}
	if b.o.auth {
		name += ", bearer token"
	}
	res, err := loadgen.Run(ctx, b.client, b.o.closedLoop(), next)
	if err != nil {
		return err
	}
	b.rep.add(name, res, 0, fmt.Sprintf("%.2f× pgbench", res.Throughput()/changeCeiling))
	return nil
}

// lookups counts the read cache's lookups of one API process, with the
// cache's size when they were read.
type lookups struct{ hits, all, entries, bytes float64 }

// cacheLookups reads segments_cache_lookups_total, segments_cache_entries
// and segments_cache_bytes from base's metrics.
func cacheLookups(base string) (lookups, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return lookups{}, err
	}
	defer resp.Body.Close()
	var l lookups
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if name, value, ok := strings.Cut(sc.Text(), " "); ok && (name == "segments_cache_entries" || name == "segments_cache_bytes") {
			n, _ := strconv.ParseFloat(value, 64)
			if name == "segments_cache_entries" {
				l.entries = n
			} else {
				l.bytes = n
			}
			continue
		}
		rest, ok := strings.CutPrefix(sc.Text(), "segments_cache_lookups_total{")
		if !ok {
			continue
		}
		labels, value, _ := strings.Cut(rest, "} ")
		n, _ := strconv.ParseFloat(value, 64)
		l.all += n
		if labels == `result="hit"` {
			l.hits += n
		}
	}
	return l, sc.Err()
}
