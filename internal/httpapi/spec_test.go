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

// TestSpecMatchesRoutes checks that docs/swagger.json documents exactly
// the /api/v1 routes the router serves: a handler without annotations, or
// an endpoint gone from either side, fails here.
func TestSpecMatchesRoutes(t *testing.T) {
	raw, err := os.ReadFile("../../docs/swagger.json")
	if err != nil {
		t.Fatal(err)
	}
	var spec struct {
		BasePath string                                `json:"basePath"`
		Paths    map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(raw, &spec); err != nil {
		t.Fatal(err)
	}
	var documented []string
	for path, ops := range spec.Paths {
		for method := range ops {
			documented = append(documented, strings.ToUpper(method)+" "+spec.BasePath+path)
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
		t.Errorf("routes served (-) versus documented in docs/swagger.json (+):\n%s", diff)
	}
	if len(served) != 10 {
		t.Errorf("%d routes under /api/v1, the contract has 10: %v", len(served), served)
	}
}
