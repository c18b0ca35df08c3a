package main

import (
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/segments-service/segments/tools/loadgen"
)

// row is one line of the table.
type row struct {
	name   string
	res    loadgen.Result
	wall   time.Duration
	detail string
	// wrk holds a line measured with wrk instead of the Go load generator.
	wrk *wrkResult
}

// report is the table the phases fill, a row each, in order.
type report struct {
	opts options
	rows []row
}

// add appends a row; a zero res or wall leaves its columns empty.
func (r *report) add(name string, res loadgen.Result, wall time.Duration, detail string) {
	r.rows = append(r.rows, row{name: name, res: res, wall: wall, detail: detail})
}

// print writes the table, headed by the machine, the commit and the data.
func (r *report) print(w io.Writer) {
	commit := "unknown"
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		commit = strings.TrimSpace(string(out))
	}
	fmt.Fprintf(w, "\nSegments benchmark, %s, commit %s, %d CPUs, %s\n", time.Now().UTC().Format(time.RFC3339), commit, runtime.NumCPU(), runtime.Version())
	fmt.Fprintf(w, "data: %d users × %d of %d segments; closed-loop phases: %d connections for %s\n\n",
		r.opts.users, r.opts.perUser, r.opts.segments, r.opts.conns, r.opts.duration)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\trequests\treq/s\tp50\tp99\terrors\twall\t")
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }
	for _, x := range r.rows {
		cols := []string{x.name, "", "", "", "", "", "", x.detail}
		if x.res.Requests > 0 {
			cols[1], cols[2] = strconv.Itoa(x.res.Requests), fmt.Sprintf("%.0f", x.res.Throughput())
			cols[3], cols[4], cols[5] = ms(x.res.Percentile(50)), ms(x.res.Percentile(99)), strconv.Itoa(x.res.Errors)
		}
		if w := x.wrk; w != nil {
			cols[1], cols[2] = strconv.Itoa(w.requests), fmt.Sprintf("%.0f", w.rate)
			cols[3], cols[4], cols[5] = ms(w.p50), ms(w.p99), strconv.Itoa(w.errors)
		}
		if x.wall > 0 {
			cols[6] = fmt.Sprintf("%.2f s", x.wall.Seconds())
		}
		fmt.Fprintln(tw, strings.Join(cols, "\t"))
	}
	tw.Flush()
}
