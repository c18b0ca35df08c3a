package deploytest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/segments-service/segments/internal/config"
	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/internal/service"
)

// envKeys returns the configuration keys .env.example documents.
func envKeys(t *testing.T) map[string]bool {
	t.Helper()
	f, err := os.Open("../../.env.example")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, _, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			keys[k] = true
		}
	}
	if len(keys) < 10 {
		t.Fatalf(".env.example has only %d keys", len(keys))
	}
	return keys
}

// strict decodes JSON into v, failing on any field v's type lacks.
func strict(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// manifests holds the decoded documents of deploy/k8s.
type manifests struct {
	namespaces  []corev1.Namespace
	configMaps  []corev1.ConfigMap
	secrets     []corev1.Secret
	services    []corev1.Service
	deployments []appsv1.Deployment
	jobs        []batchv1.Job
}

func loadManifests(t *testing.T) (manifests, []string) {
	t.Helper()
	var m manifests
	files, err := filepath.Glob("../k8s/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	var names []string
	for _, file := range files {
		names = append(names, filepath.Base(file))
		if filepath.Base(file) == "kustomization.yaml" {
			continue
		}
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range bytes.Split(b, []byte("\n---\n")) {
			raw, err := yaml.YAMLToJSON(doc)
			if err != nil {
				t.Fatalf("%s document %d: %v", file, i, err)
			}
			var head struct{ APIVersion, Kind string }
			if err := json.Unmarshal(raw, &head); err != nil {
				t.Fatalf("%s document %d: %v", file, i, err)
			}
			where := fmt.Sprintf("%s document %d (%s %s)", file, i, head.APIVersion, head.Kind)
			var target any
			switch head.APIVersion + " " + head.Kind {
			case "v1 Namespace":
				m.namespaces = append(m.namespaces, corev1.Namespace{})
				target = &m.namespaces[len(m.namespaces)-1]
			case "v1 ConfigMap":
				m.configMaps = append(m.configMaps, corev1.ConfigMap{})
				target = &m.configMaps[len(m.configMaps)-1]
			case "v1 Secret":
				m.secrets = append(m.secrets, corev1.Secret{})
				target = &m.secrets[len(m.secrets)-1]
			case "v1 Service":
				m.services = append(m.services, corev1.Service{})
				target = &m.services[len(m.services)-1]
			case "apps/v1 Deployment":
				m.deployments = append(m.deployments, appsv1.Deployment{})
				target = &m.deployments[len(m.deployments)-1]
			case "batch/v1 Job":
				m.jobs = append(m.jobs, batchv1.Job{})
				target = &m.jobs[len(m.jobs)-1]
			default:
				t.Fatalf("%s: a kind this test does not know", where)
			}
			if err := strict(raw, target); err != nil {
				t.Fatalf("%s does not decode strictly: %v", where, err)
			}
		}
	}
	return m, names
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	b, err := os.ReadFile("../k8s/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := yaml.YAMLToJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Namespace  string   `json:"namespace"`
		Resources  []string `json:"resources"`
	}
	if err := strict(raw, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	_, files := loadManifests(t)
	for _, f := range files {
		if f != "kustomization.yaml" && f != "secret.example.yaml" && !slices.Contains(k.Resources, f) {
			t.Errorf("kustomization.yaml does not list %s", f)
		}
	}
	for _, r := range k.Resources {
		if !slices.Contains(files, r) {
			t.Errorf("kustomization.yaml lists %s, which does not exist", r)
		}
	}
}

// routers are the HTTP handlers of `segments serve` and `segments worker`;
// the services are never called, only the routes matter.
func routers() map[string]http.Handler {
	return map[string]http.Handler{
		"serve":  httpapi.NewRouter(httpapi.Options{Segments: &service.Segments{}}),
		"worker": httpapi.NewRouter(httpapi.Options{}),
	}
}

func TestManifestsDecodeAndProbeRealEndpoints(t *testing.T) {
	m, _ := loadManifests(t)
	if len(m.deployments) != 2 || len(m.jobs) != 1 || len(m.services) != 1 || len(m.configMaps) != 1 || len(m.secrets) != 1 {
		t.Fatalf("manifests: %d deployments, %d jobs, %d services, %d config maps, %d secrets",
			len(m.deployments), len(m.jobs), len(m.services), len(m.configMaps), len(m.secrets))
	}
	known := envKeys(t)
	cm := m.configMaps[0]
	for k := range cm.Data {
		if !known[k] {
			t.Errorf("ConfigMap key %s is not a setting in .env.example", k)
		}
	}
	for k := range m.secrets[0].StringData {
		if !known[k] {
			t.Errorf("Secret key %s is not a setting in .env.example", k)
		}
	}
	// The settings a pod gets are a valid configuration, with
	// authentication on (the JWT secret comes from the Secret).
	settings := map[string]string{}
	maps.Copy(settings, cm.Data)
	maps.Copy(settings, m.secrets[0].StringData)
	cfg, err := config.Load(func(k string) string { return settings[k] })
	if err != nil {
		t.Errorf("the pods' settings: %v", err)
	}
	if !cfg.Auth.Enabled() || m.secrets[0].StringData["AUTH_JWT_SECRET"] == "" {
		t.Errorf("the manifests leave authentication off: set AUTH_JWT_SECRET in the Secret")
	}
	_, port, _ := strings.Cut(cm.Data["HTTP_ADDR"], ":")

	handlers := routers()
	checkPod := func(name string, spec corev1.PodSpec, wantProbes bool) {
		if spec.SecurityContext == nil || spec.SecurityContext.RunAsNonRoot == nil || !*spec.SecurityContext.RunAsNonRoot {
			t.Errorf("%s: pods must run as non-root", name)
		}
		for _, c := range spec.Containers {
			where := name + "/" + c.Name
			if len(c.Args) == 0 {
				t.Fatalf("%s: no command", where)
			}
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
				t.Errorf("%s: set cpu and memory requests and a memory limit", where)
			}
			var froms []string
			for _, e := range c.EnvFrom {
				switch {
				case e.ConfigMapRef != nil:
					froms = append(froms, "configmap/"+e.ConfigMapRef.Name)
				case e.SecretRef != nil:
					froms = append(froms, "secret/"+e.SecretRef.Name)
				}
			}
			if !slices.Equal(froms, []string{"configmap/" + cm.Name, "secret/" + m.secrets[0].Name}) {
				t.Errorf("%s: takes its settings from %v", where, froms)
			}
			if !wantProbes {
				continue
			}
			handler, ok := handlers[c.Args[0]]
			if !ok {
				t.Fatalf("%s runs %q, which serves no HTTP", where, c.Args)
			}
			ports := map[string]int32{}
			for _, p := range c.Ports {
				ports[p.Name] = p.ContainerPort
			}
			if fmt.Sprint(ports["http"]) != port {
				t.Errorf("%s: container port http is %d, HTTP_ADDR listens on %s", where, ports["http"], port)
			}
			for kind, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
				if p == nil || p.HTTPGet == nil {
					t.Errorf("%s: no HTTP %s probe", where, kind)
					continue
				}
				if _, ok := ports[p.HTTPGet.Port.String()]; !ok {
					t.Errorf("%s: %s probe port %s is not a container port", where, kind, p.HTTPGet.Port.String())
				}
				rec := httptest.NewRecorder()
				handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, p.HTTPGet.Path, nil))
				if rec.Code != http.StatusOK {
					t.Errorf("%s: %s probe GET %s answers %d from `segments %s`", where, kind, p.HTTPGet.Path, rec.Code, c.Args[0])
				}
			}
			if c.LivenessProbe != nil && c.ReadinessProbe != nil && c.LivenessProbe.HTTPGet.Path == c.ReadinessProbe.HTTPGet.Path {
				t.Errorf("%s: liveness must not depend on Postgres and Redis (use /healthz, and /readyz for readiness)", where)
			}
		}
	}
	for _, d := range m.deployments {
		checkPod("deployment/"+d.Name, d.Spec.Template.Spec, true)
		if !matches(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
			t.Errorf("deployment/%s: its selector does not match its pods", d.Name)
		}
	}
	for _, j := range m.jobs {
		checkPod("job/"+j.Name, j.Spec.Template.Spec, false)
		if !slices.Equal(j.Spec.Template.Spec.Containers[0].Args, []string{"migrate", "up"}) {
			t.Errorf("job/%s runs %v", j.Name, j.Spec.Template.Spec.Containers[0].Args)
		}
	}
	// The Service reaches the API's pods on their http port.
	svc := m.services[0]
	var api *appsv1.Deployment
	for i, d := range m.deployments {
		if d.Spec.Template.Spec.Containers[0].Args[0] == "serve" {
			api = &m.deployments[i]
		}
	}
	if api == nil || !matches(svc.Spec.Selector, api.Spec.Template.Labels) {
		t.Fatalf("service/%s selects no API pods", svc.Name)
	}
	if svc.Spec.Ports[0].TargetPort.String() != "http" {
		t.Errorf("service/%s targets port %s", svc.Name, svc.Spec.Ports[0].TargetPort.String())
	}
}

// matches reports whether every label of selector is on labels.
func matches(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// The overlay for the service beyond one server (deploy/k8s/beyond-one-server)
// builds on the base and patches its ConfigMap; the patch and its example
// Secret decode strictly, name only documented settings, and with the
// base's settings make a valid configuration with a pooler, a direct URL,
// a standby and Sentinel.
func TestBeyondOneServerOverlay(t *testing.T) {
	const dir = "../k8s/beyond-one-server/"
	read := func(name string, v any) {
		t.Helper()
		b, err := os.ReadFile(dir + name)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := yaml.YAMLToJSON(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := strict(raw, v); err != nil {
			t.Fatalf("%s does not decode strictly: %v", name, err)
		}
	}
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
		Patches    []struct {
			Path string `json:"path"`
		} `json:"patches"`
	}
	read("kustomization.yaml", &k)
	if !slices.Equal(k.Resources, []string{"../"}) || len(k.Patches) != 1 || k.Patches[0].Path != "configmap.yaml" {
		t.Fatalf("the overlay should build on ../ and patch configmap.yaml: %+v", k)
	}
	var patch corev1.ConfigMap
	read("configmap.yaml", &patch)
	var secret corev1.Secret
	read("secret.example.yaml", &secret)
	base, _ := loadManifests(t)
	if patch.Name != base.configMaps[0].Name {
		t.Fatalf("the patch names ConfigMap %q, the base's is %q", patch.Name, base.configMaps[0].Name)
	}
	known := envKeys(t)
	settings := map[string]string{}
	maps.Copy(settings, base.configMaps[0].Data)
	for _, kv := range []map[string]string{patch.Data, secret.StringData} {
		for key, v := range kv {
			if !known[key] {
				t.Errorf("%s is not a setting in .env.example", key)
			}
			settings[key] = v
		}
	}
	cfg, err := config.Load(func(key string) string { return settings[key] })
	if err != nil {
		t.Fatalf("the overlay's settings: %v", err)
	}
	if cfg.Postgres.DirectURL == cfg.Postgres.URL || cfg.Postgres.ReplicaURL == "" || cfg.Postgres.ExecMode == "cache_statement" ||
		cfg.Redis.SentinelMaster == "" || len(cfg.Redis.SentinelAddrs) != 3 || cfg.Events.WaitReplicas != 1 || !cfg.Auth.Enabled() {
		t.Fatalf("the overlay's configuration: %+v", cfg.Redacted())
	}
}
