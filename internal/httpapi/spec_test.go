package httpapi_test

import (
	"encoding/json"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/google/go-cmp/cmp"

	"segments/internal/httpapi"
	"segments/internal/service"
)

// TestSpecMatchesRoutes checks that docs/openapi.json documents exactly
// the /api/v1 routes the router serves: a handler without annotations, or
// an endpoint gone from either side, fails here.
func TestSpecMatchesRoutes(t *testing.T) {
	raw, err := os.ReadFile("../../docs/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var spec struct {
		Servers []struct{ URL string }                `json:"servers"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(raw, &spec); err != nil {
		t.Fatal(err)
	}
	if len(spec.Servers) != 1 || spec.Servers[0].URL != "/api/v1" {
		t.Fatalf("servers %v, want the one /api/v1", spec.Servers)
	}
	var documented []string
	for path, ops := range spec.Paths {
		for method := range ops {
			documented = append(documented, strings.ToUpper(method)+" "+spec.Servers[0].URL+path)
		}
	}
	slices.Sort(documented)

	// Services are never called here; they only switch the API routes on.
	router := httpapi.NewRouter(httpapi.Options{Segments: &service.Segments{}}).(chi.Routes)
	var served []string
	err = chi.Walk(router, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if strings.HasPrefix(route, "/api/v1/") {
			served = append(served, method+" "+route)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(served)
	if diff := cmp.Diff(served, documented); diff != "" {
		t.Errorf("routes served (-) versus documented in docs/openapi.json (+):\n%s", diff)
	}
	if len(served) != 10 {
		t.Errorf("%d routes under /api/v1, the contract has 10: %v", len(served), served)
	}
}
