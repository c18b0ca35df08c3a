package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/segments-service/segments/tools/localserver"
)

// service is the API (with its read cache), a second API process with the
// cache off, and the worker, running.
type service struct {
	base, uncached    string
	redisURL          string
	api, apiOff, wrkr *exec.Cmd
}

func (s *service) stop() {
	for _, c := range []*exec.Cmd{s.api, s.apiOff, s.wrkr} {
		if c != nil && c.Process != nil {
			_ = c.Process.Signal(syscall.SIGTERM)
			_ = c.Wait()
		}
	}
}

// startService builds the service binary into o.out and starts the two API
// processes and the worker on free loopback ports, with their logs in
// o.out, and waits until all three are ready.
func startService(ctx context.Context, o options, dbURL, redisURL string, log func(string, ...any)) (*service, error) {
	bin, err := filepath.Abs(filepath.Join(o.out, "segments"))
	if err != nil {
		return nil, err
	}
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./cmd/segments")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build: %w\n%s", err, out)
	}
	var ports [3]int // API, API with the cache off, worker
	for i := range ports {
		if ports[i], err = localserver.FreePort(); err != nil {
			return nil, err
		}
	}
	apiPort, offPort, workerPort := ports[0], ports[1], ports[2]
	env := append(os.Environ(),
		"DATABASE_URL="+dbURL, "REDIS_URL="+redisURL, "LOG_LEVEL=warn",
		"REPORT_SECRET=bench-secret-bench-secret-bench-secret", "WORKER_QUEUE=bench")
	if o.auth {
		env = append(env, "AUTH_JWT_SECRET="+benchJWTSecret)
	}
	start := func(cmd string, port int, extra ...string) (*exec.Cmd, error) {
		c := exec.Command(bin, cmd)
		c.Env = append(append(env, fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", port)), extra...)
		logFile, err := os.Create(filepath.Join(o.out, fmt.Sprintf("%s-%d.log", cmd, port)))
		if err != nil {
			return nil, err
		}
		c.Stdout, c.Stderr = logFile, logFile
		return c, c.Start()
	}
	s := &service{base: fmt.Sprintf("http://127.0.0.1:%d", apiPort), uncached: fmt.Sprintf("http://127.0.0.1:%d", offPort), redisURL: redisURL}
	// Room for every user: the cache library may evict before its bound.
	if s.api, err = start("serve", apiPort, fmt.Sprintf("CACHE_MAX_BYTES=%d", o.cacheBytes)); err != nil {
		return nil, err
	}
	if s.apiOff, err = start("serve", offPort, "CACHE_MAX_BYTES=0"); err != nil {
		s.stop()
		return nil, err
	}
	if s.wrkr, err = start("worker", workerPort, fmt.Sprintf("EVENTS_ENABLED=%t", o.events), "EVENTS_STREAM="+benchStream); err != nil {
		s.stop()
		return nil, err
	}
	for _, base := range []string{s.base, s.uncached, fmt.Sprintf("http://127.0.0.1:%d", workerPort)} {
		if err := waitReady(ctx, base); err != nil {
			s.stop()
			return nil, err
		}
	}
	log("service up: API pid %d at %s (cache on), API pid %d at %s (cache off), worker pid %d",
		s.api.Process.Pid, s.base, s.apiOff.Process.Pid, s.uncached, s.wrkr.Process.Pid)
	return s, nil
}

// waitReady waits until base's /readyz answers 200 (30 seconds at most).
func waitReady(ctx context.Context, base string) error {
	err := waitUntil(ctx, 30*time.Second, 100*time.Millisecond, func() (bool, error) {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if errors.Is(err, errTimedOut) {
		return fmt.Errorf("%s did not become ready", base)
	}
	return err
}

// errTimedOut is waitUntil's error when its limit passes.
var errTimedOut = errors.New("timed out")

// waitUntil calls done, then again every interval, until it reports true
// or an error (which it returns), ctx ends, or limit passes (errTimedOut).
func waitUntil(ctx context.Context, limit, interval time.Duration, done func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	for {
		ok, err := done()
		if ok || err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return errTimedOut
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// callAPI sends body, JSON, to url with method (a PATCH as a JSON merge
// patch) and decodes the JSON answer into out unless out is nil. A status
// of 300 or above is an error carrying the answer.
func callAPI(ctx context.Context, method, url, body string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if method == http.MethodPatch {
		req.Header.Set("Content-Type", "application/merge-patch+json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %d %s", method, req.URL.Path, resp.StatusCode, b)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

// createPercentSegment creates segment slug with auto_percent percent; its
// rollout starts in the worker.
func (s *service) createPercentSegment(ctx context.Context, slug string, percent int) error {
	return callAPI(ctx, http.MethodPost, s.base+"/api/v1/segments", fmt.Sprintf(`{"slug":%q,"auto_percent":%d}`, slug, percent), nil)
}

// rssMB reads a process's resident set (VmRSS) or its peak (VmHWM), in MB.
func rssMB(pid int, field string) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}
