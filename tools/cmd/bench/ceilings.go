package main

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/segments-service/segments/tools/loadgen"
	"github.com/segments-service/segments/tools/localserver"
)

// runPgbench runs a pgbench script (prepared statements, o.conns clients,
// o.duration) against dbURL and returns its transactions per second. The
// script finds the population in the variable users (-D users=N).
func runPgbench(ctx context.Context, o options, dbURL, script string) (float64, error) {
	bin, err := localserver.FindBinary("pgbench")
	if err != nil {
		return 0, err
	}
	cmd := exec.CommandContext(ctx, bin, "-n", "-M", "prepared", "-c", strconv.Itoa(o.conns), "-j", "2",
		"-T", strconv.Itoa(o.seconds()), "-D", "users="+strconv.Itoa(o.users), "-f", script, dbURL)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("pgbench %s: %w\n%s", script, err, out)
	}
	for line := range strings.Lines(string(out)) {
		if rest, ok := strings.CutPrefix(line, "tps = "); ok {
			tps, _, _ := strings.Cut(rest, " ")
			return strconv.ParseFloat(tps, 64)
		}
	}
	return 0, fmt.Errorf("pgbench %s printed no tps:\n%s", script, out)
}

// wrkResult is what wrk reported.
type wrkResult struct {
	requests, errors int
	rate             float64
	p50, p99         time.Duration
}

// distribution is how reads draw their users from 1..N, the same in
// pgbench, wrk and the Go load generator.
type distribution struct {
	name string
	// pgbench and wrk are the scripts that draw so.
	pgbench, wrk string
	// next is the Go load generator's source of such reads.
	next func(base string, users int64) loadgen.Request
}

// zipfExponent is the skew of the zipf distribution, as the scripts have it.
const zipfExponent = 1.1

var (
	// uniform reads every user as often.
	uniform = distribution{name: "uniform",
		pgbench: "tools/cmd/bench/pgbench/user_segments.sql", wrk: "tools/cmd/bench/wrk/user_segments.lua",
		next: loadgen.UserSegments}
	// zipf reads user k with probability proportional to k^-1.1.
	zipf = distribution{name: "zipf",
		pgbench: "tools/cmd/bench/pgbench/user_segments_zipf.sql", wrk: "tools/cmd/bench/wrk/user_segments_zipf.lua",
		next: func(base string, users int64) loadgen.Request {
			return loadgen.UserSegmentsZipf(base, users, zipfExponent)
		}}
)

// readLoad sends reads of users 1..users, drawn as d says, to base for
// o.duration: with wrk (d's script) if it is on PATH, else with the Go
// load generator.
func readLoad(ctx context.Context, o options, client *http.Client, cfg loadgen.Config, base string, users int64, d distribution) (*wrkResult, loadgen.Result, error) {
	bin, err := exec.LookPath("wrk")
	if err != nil {
		res, err := loadgen.Run(ctx, client, cfg, d.next(base, users))
		return nil, res, err
	}
	args := []string{"-t2", fmt.Sprintf("-c%d", o.conns), fmt.Sprintf("-d%ds", o.seconds()), "--latency"}
	if o.auth {
		args = append(args, "-H", "Authorization: Bearer "+o.token)
	}
	args = append(args, "-s", d.wrk, base, "--", strconv.FormatInt(users, 10))
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return nil, loadgen.Result{}, fmt.Errorf("wrk: %w\n%s", err, out)
	}
	w, err := parseWrk(string(out))
	return &w, loadgen.Result{}, err
}

// parseWrk reads wrk's summary (run with --latency).
func parseWrk(out string) (wrkResult, error) {
	var w wrkResult
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "Requests/sec:":
			w.rate, _ = strconv.ParseFloat(f[1], 64)
		case len(f) >= 2 && f[1] == "requests" && len(f) > 2 && f[2] == "in":
			w.requests, _ = strconv.Atoi(f[0])
		case len(f) == 2 && f[0] == "50%":
			w.p50, _ = time.ParseDuration(f[1])
		case len(f) == 2 && f[0] == "99%":
			w.p99, _ = time.ParseDuration(f[1])
		case len(f) == 5 && f[0] == "Non-2xx":
			n, _ := strconv.Atoi(f[4])
			w.errors += n
		case len(f) > 1 && f[0] == "Socket" && f[1] == "errors:":
			for i := 2; i+1 < len(f); i += 2 {
				n, _ := strconv.Atoi(strings.TrimSuffix(f[i+1], ","))
				w.errors += n
			}
		}
	}
	if w.rate == 0 || w.requests == 0 {
		return w, fmt.Errorf("wrk printed no figures:\n%s", out)
	}
	return w, nil
}
