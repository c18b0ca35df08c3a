package deploytest

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"sigs.k8s.io/yaml"
)

// readmeServices returns the services the operations guide
// (docs/operations.md) says the compose file runs: the backquoted names on
// its line "The compose file runs: …".
func readmeServices(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "The compose file runs: "); ok {
			var names []string
			for _, m := range regexp.MustCompile("`([a-z-]+)`").FindAllStringSubmatch(rest, -1) {
				names = append(names, m[1])
			}
			slices.Sort(names)
			return names
		}
	}
	t.Fatal(`docs/operations.md has no line "The compose file runs: …"`)
	return nil
}

func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{"../../docker-compose.yml"},
		cli.WithWorkingDirectory("../.."), cli.WithName("segments"), cli.WithResolvedPaths(true))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(t.Context())
	if err != nil {
		t.Fatalf("docker-compose.yml does not load: %v", err)
	}
	return p
}

func TestComposeRunsTheWholeStack(t *testing.T) {
	p := loadCompose(t)
	names := p.ServiceNames()
	slices.Sort(names)
	if want := readmeServices(t); !slices.Equal(names, want) {
		t.Errorf("compose services %v, docs/operations.md names %v", names, want)
	}
	known := envKeys(t)
	for _, name := range names {
		s := p.Services[name]
		oneShot := s.Restart == "no"
		switch {
		case oneShot && name != "migrate":
			t.Errorf("%s: only migrate runs once", name)
		case !oneShot && (s.HealthCheck == nil || s.HealthCheck.Disable || len(s.HealthCheck.Test) == 0):
			t.Errorf("%s: a long-running service needs a healthcheck", name)
		}
		for dep, d := range s.DependsOn {
			want := types.ServiceConditionHealthy
			if p.Services[dep].Restart == "no" {
				want = types.ServiceConditionCompletedSuccessfully
			}
			if d.Condition != want {
				t.Errorf("%s depends on %s with condition %q, want %q", name, dep, d.Condition, want)
			}
		}
		if s.Image == "segments:local" {
			if len(s.DependsOn) == 0 {
				t.Errorf("%s: the service must wait for its database", name)
			}
			for k := range s.Environment {
				if !known[k] {
					t.Errorf("%s: environment %s is not a setting in .env.example", name, k)
				}
			}
		}
	}
	for _, app := range []string{"api", "worker"} {
		if hc := p.Services[app].HealthCheck; hc == nil || !slices.Contains(hc.Test, "probe") {
			t.Errorf("%s: health must come from `segments probe` (the image has no shell)", app)
		}
	}
}

// TestPrometheusAndGrafanaFitTheStack checks that Prometheus scrapes the
// compose services on the port they listen on, and that Grafana's
// provisioning points at that Prometheus and at a dashboard that exists.
func TestPrometheusAndGrafanaFitTheStack(t *testing.T) {
	p := loadCompose(t)
	_, port, _ := strings.Cut(*p.Services["api"].Environment["HTTP_ADDR"], ":")

	var prom struct {
		ScrapeConfigs []struct {
			JobName       string `json:"job_name"`
			MetricsPath   string `json:"metrics_path"`
			StaticConfigs []struct {
				Targets []string `json:"targets"`
			} `json:"static_configs"`
		} `json:"scrape_configs"`
	}
	readYAML(t, "../prometheus/prometheus.yml", &prom)
	var targets []string
	for _, sc := range prom.ScrapeConfigs {
		if sc.MetricsPath != "/metrics" {
			t.Errorf("job %s scrapes %s", sc.JobName, sc.MetricsPath)
		}
		for _, s := range sc.StaticConfigs {
			targets = append(targets, s.Targets...)
		}
	}
	slices.Sort(targets)
	if want := []string{"api:" + port, "worker:" + port}; !slices.Equal(targets, want) {
		t.Errorf("Prometheus scrapes %v, want %v", targets, want)
	}

	var ds struct {
		Datasources []struct {
			UID, Type, URL string
		}
	}
	readYAML(t, "../grafana/provisioning/datasources/prometheus.yml", &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].URL != "http://prometheus:9090" {
		t.Fatalf("Grafana data sources: %+v", ds)
	}
	b, err := os.ReadFile("../grafana/dashboards/segments.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title      string
			Datasource struct{ UID string }
			Targets    []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	titles := ""
	for _, panel := range dash.Panels {
		titles += panel.Title + "\n"
		if panel.Datasource.UID != ds.Datasources[0].UID || len(panel.Targets) == 0 {
			t.Errorf("panel %q: data source %q, %d queries", panel.Title, panel.Datasource.UID, len(panel.Targets))
		}
	}
	for _, want := range []string{"Request rate", "Error rate", "Latency p50", "Latency p99", "queue depth", "TTL removals", "Rollout progress"} {
		if !strings.Contains(strings.ToLower(titles), strings.ToLower(want)) {
			t.Errorf("the dashboard has no %q panel", want)
		}
	}
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
