// Package loadgen sends bounded HTTP load to a running service and
// measures it. It runs closed-loop (a fixed number of connections, each
// sending its next request when the last one is answered: the most the
// service can do) or open-loop (requests at a fixed rate, whatever the
// service does: the latency a client at that rate sees). In open loop a
// request's latency counts from when it was due, not from when a free
// connection took it, so a stalled service cannot hide its queueing.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Request makes request number i (from 0). It is called from many
// goroutines at once.
type Request func(i int) (*http.Request, error)

// Config bounds a run: it ends at Duration or after Requests requests,
// whichever comes first.
type Config struct {
	Conns    int
	Duration time.Duration
	Requests int
	// Rate is requests per second for open loop; zero runs closed loop.
	Rate float64
}

// Result is what a run measured.
type Result struct {
	Requests int
	// Errors counts transport failures and responses of status 400 or more.
	Errors  int
	Elapsed time.Duration
	// Latencies of all requests, sorted.
	Latencies []time.Duration
	// FirstError describes one error, for the report.
	FirstError string
}

// Throughput is requests per second.
func (r Result) Throughput() float64 { return float64(r.Requests) / r.Elapsed.Seconds() }

// Percentile returns the p-th percentile latency (0 < p <= 100).
func (r Result) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(float64(len(r.Latencies))*p/100+0.5) - 1
	return r.Latencies[min(max(i, 0), len(r.Latencies)-1)]
}

// NewClient returns an HTTP client that keeps conns connections open.
func NewClient(conns int) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConns:        conns,
			MaxIdleConnsPerHost: conns,
			MaxConnsPerHost:     conns,
			DisableCompression:  true,
		},
	}
}

// Run sends load as cfg says, with requests made by next, and measures it.
func Run(ctx context.Context, client *http.Client, cfg Config, next Request) (Result, error) {
	if cfg.Conns < 1 || (cfg.Duration <= 0 && cfg.Requests <= 0) {
		return Result{}, errors.New("loadgen: need at least one connection and a bound in time or requests")
	}
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	// due carries each request's number and the time it is due.
	type job struct {
		i   int
		due time.Time
	}
	jobs := make(chan job, cfg.Conns)
	start := time.Now()
	go func() {
		defer close(jobs)
		interval := time.Duration(0)
		if cfg.Rate > 0 {
			interval = time.Duration(float64(time.Second) / cfg.Rate)
		}
		for i := 0; cfg.Requests <= 0 || i < cfg.Requests; i++ {
			due := time.Now()
			if interval > 0 {
				due = start.Add(time.Duration(i) * interval)
				if d := time.Until(due); d > 0 {
					select {
					case <-time.After(d):
					case <-ctx.Done():
						return
					}
				}
			}
			select {
			case jobs <- job{i, due}:
			case <-ctx.Done():
				return
			}
		}
	}()

	var (
		mu  sync.Mutex
		res Result
		wg  sync.WaitGroup
	)
	for range cfg.Conns {
		wg.Go(func() {
			lat := make([]time.Duration, 0, 1024)
			errs, first := 0, ""
			for j := range jobs {
				req, err := next(j.i)
				if err == nil {
					err = do(client, req.WithContext(context.WithoutCancel(ctx)))
				}
				lat = append(lat, time.Since(j.due))
				if err != nil {
					errs++
					if first == "" {
						first = err.Error()
					}
				}
			}
			mu.Lock()
			res.Latencies = append(res.Latencies, lat...)
			res.Errors += errs
			if res.FirstError == "" {
				res.FirstError = first
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Requests = len(res.Latencies)
	slices.Sort(res.Latencies)
	return res, nil
}

// do sends req and reads the whole response; a status of 400 or more is an
// error.
func do(client *http.Client, req *http.Request) error {
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode >= 400 {
		return fmt.Errorf("%s %s: status %d", req.Method, req.URL.Path, resp.StatusCode)
	}
	return nil
}
