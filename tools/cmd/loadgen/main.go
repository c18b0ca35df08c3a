// Command loadgen sends bounded load to a running segments service and
// prints throughput and latency percentiles. See BENCHMARKS.md.
//
//	loadgen -scenario get -conns 32 -duration 30s
//	loadgen -scenario change -rate 1000 -duration 30s
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"time"

	"github.com/segments-service/segments/tools/loadgen"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	base := fs.String("url", "http://127.0.0.1:8080", "the service, on loopback")
	scenario := fs.String("scenario", "get", "get (a user's segments) or change (add 2, remove 1)")
	users := fs.Int64("users", 100000, "users 1..N to pick from")
	segments := fs.Int("segments", 20, "segments SEG_1..SEG_N to pick from (change)")
	conns := fs.Int("conns", 32, "connections")
	duration := fs.Duration("duration", 10*time.Second, "how long to run (at most 10m)")
	requests := fs.Int("requests", 1000000, "how many requests to send at most")
	rate := fs.Float64("rate", 0, "requests per second (open loop); 0 sends as fast as answered (closed loop)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	u, err := url.Parse(*base)
	if err != nil || (u.Hostname() != "127.0.0.1" && u.Hostname() != "localhost" && u.Hostname() != "::1") {
		return fmt.Errorf("-url must be a loopback address, not %q", *base)
	}
	if *duration <= 0 || *duration > 10*time.Minute || *requests <= 0 {
		return fmt.Errorf("-duration must be in (0, 10m] and -requests positive")
	}
	var next loadgen.Request
	switch *scenario {
	case "get":
		next = loadgen.UserSegments(*base, *users)
	case "change":
		next = loadgen.ChangeSegments(*base, *users, *segments)
	default:
		return fmt.Errorf("unknown scenario %q", *scenario)
	}
	res, err := loadgen.Run(ctx, loadgen.NewClient(*conns), loadgen.Config{Conns: *conns, Duration: *duration, Requests: *requests, Rate: *rate}, next)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: %d requests in %s, %.0f/s, p50 %s, p90 %s, p99 %s, max %s, errors %d\n",
		*scenario, res.Requests, res.Elapsed.Round(time.Millisecond), res.Throughput(),
		res.Percentile(50).Round(10*time.Microsecond), res.Percentile(90).Round(10*time.Microsecond),
		res.Percentile(99).Round(10*time.Microsecond), res.Percentile(100).Round(10*time.Microsecond), res.Errors)
	if res.FirstError != "" {
		fmt.Fprintln(out, "first error:", res.FirstError)
	}
	return nil
}
