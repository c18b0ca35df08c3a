package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segments-service/segments/tools/localserver"
	"github.com/segments-service/segments/tools/testenv"
)

// TestDashboardQueriesReturnData runs a real Prometheus with the shipped
// deploy/prometheus/prometheus.yml (targets pointed at a running API and
// worker, scraped every second), drives traffic, an expiry and a rollout,
// and then evaluates every PromQL expression of the Grafana dashboard
// through Prometheus's HTTP API: each must return data.
func TestDashboardQueriesReturnData(t *testing.T) {
	prometheus, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus is not installed (Debian: apt-get install prometheus); .ci/run installs it")
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is not installed (it comes with Debian's prometheus package)")
	}
	const shipped = "../../deploy/prometheus/prometheus.yml"
	if out, err := exec.Command(promtool, "check", "config", shipped).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config %s: %v\n%s", shipped, err, out)
	}

	vars := map[string]string{
		"DATABASE_URL":   env.NewDatabase(t),
		"REDIS_URL":      env.RedisURL,
		"WORKER_QUEUE":   fmt.Sprintf("prometheus-%d", time.Now().UnixNano()),
		"SWEEP_INTERVAL": "1s",
	}
	api, _ := startService(t, "serve", maps.Clone(vars))
	wrk, _ := startService(t, "worker", maps.Clone(vars))

	cfg, err := os.ReadFile(shipped)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rewritten := strings.NewReplacer(
		`"api:8080"`, `"`+strings.TrimPrefix(api, "http://")+`"`,
		`"worker:8080"`, `"`+strings.TrimPrefix(wrk, "http://")+`"`,
		"scrape_interval: 15s", "scrape_interval: 1s",
		"evaluation_interval: 15s", "evaluation_interval: 1s",
	).Replace(string(cfg))
	if rewritten == string(cfg) || strings.Contains(rewritten, ":8080\"") && !strings.Contains(rewritten, "127.0.0.1") {
		t.Fatalf("the shipped config no longer has the targets this test rewrites:\n%s", cfg)
	}
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(rewritten), 0o644); err != nil {
		t.Fatal(err)
	}
	port, err := localserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	prom := exec.Command(prometheus, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port))
	logFile, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	prom.Stdout, prom.Stderr = logFile, logFile
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = prom.Process.Kill()
		_ = prom.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			t.Logf("prometheus log (end):\n%s", tail(string(b), 3000))
		}
	})
	promURL := fmt.Sprintf("http://127.0.0.1:%d", port)
	testenv.Eventually(t, 30*time.Second, "prometheus did not become ready", func() bool {
		resp, err := http.Get(promURL + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	// Traffic of every kind the dashboard shows: reads, changes, errors,
	// an expiry (task and sweep), a rollout, a report download.
	for _, body := range []string{`{"slug":"M"}`, `{"slug":"AUTO","auto_percent":50}`} {
		if code := post(t, api+"/api/v1/segments", body); code != 201 {
			t.Fatalf("create %s: %d", body, code)
		}
	}
	if code := post(t, api+"/api/v1/users", `{"user_ids":[1,2,3,4,5,6,7,8,9,10]}`); code != 200 {
		t.Fatalf("register: %d", code)
	}
	deadline := time.Now().Add(8 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		post(t, fmt.Sprintf("%s/api/v1/users/%d/segments", api, 100+i), `{"add":["M"],"ttl_seconds":1}`)
		get(t, fmt.Sprintf("%s/api/v1/users/%d/segments", api, 100+i))
		get(t, api+"/api/v1/segments/NOPE")
		var link struct{ URL string }
		resp, err := http.Post(api+"/api/v1/reports/history", "application/json", strings.NewReader(`{"period":"2023-08"}`))
		if err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&link)
			resp.Body.Close()
			get(t, api+link.URL)
		}
		time.Sleep(200 * time.Millisecond)
	}

	dash, err := os.ReadFile("../../deploy/grafana/dashboards/segments.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(dash, &d); err != nil {
		t.Fatal(err)
	}
	queries := 0
	for _, p := range d.Panels {
		for _, target := range p.Targets {
			expr := strings.ReplaceAll(target.Expr, "$__rate_interval", "30s")
			queries++
			var res struct {
				Status string
				Error  string
				Data   struct{ Result []json.RawMessage }
			}
			testenv.Eventually(t, 20*time.Second, fmt.Sprintf("panel %q: %s returned no data", p.Title, target.Expr), func() bool {
				resp, err := http.Get(promURL + "/api/v1/query?query=" + url.QueryEscape(expr))
				if err != nil {
					return false
				}
				defer resp.Body.Close()
				if err := json.NewDecoder(resp.Body).Decode(&res); err != nil || res.Status != "success" {
					return false
				}
				return len(res.Data.Result) > 0
			})
		}
	}
	if queries < 10 {
		t.Fatalf("only %d queries in the dashboard", queries)
	}
	t.Logf("%d dashboard queries, each returned data", queries)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
