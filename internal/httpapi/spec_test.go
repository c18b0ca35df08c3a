package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/app"
	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/internal/service"
	"github.com/segments-service/segments/tools/apitest"
	"github.com/segments-service/segments/tools/localserver"
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
	// The contract's first part has 9 routes, its second 6, its third
	// 4 (layers), 2 (imports) and 2 (audit).
	if len(served) != 23 {
		t.Errorf("%d routes under /api/v1, the contract has 23: %v", len(served), served)
	}
}

// TestSpecDeclaresTheStatusesTheServiceProduces sends every operation of
// docs/openapi.json what makes the shared machinery answer — a query that
// is not text, a body of the wrong type or over 1 MiB, a database that
// does not answer — and checks that each status the service produces is
// one the operation declares.
func TestSpecDeclaresTheStatusesTheServiceProduces(t *testing.T) {
	raw, err := os.ReadFile("../../docs/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var spec struct {
		Paths map[string]map[string]struct {
			OperationID string                     `json:"operationId"`
			RequestBody json.RawMessage            `json:"requestBody"`
			Responses   map[string]json.RawMessage `json:"responses"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(raw, &spec); err != nil {
		t.Fatal(err)
	}
	live := newAPI(t)
	live.createSegment("SPEC")
	dead := newAPI(t, func(o *httpapi.Options) {
		// Services on a database nobody listens at.
		port, err := localserver.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		pool, err := pgxpool.New(context.Background(), fmt.Sprintf("postgres://nobody@127.0.0.1:%d/none?connect_timeout=1", port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		broken, err := app.New(t.Context(), apitest.Config(t, map[string]string{"REPORT_SECRET": testSecret}), app.Deps{Pool: pool}, app.Roles{})
		if err != nil {
			t.Fatal(err)
		}
		svc := broken.Services
		o.Segments, o.Users, o.Reports, o.Imports, o.Cache = svc.Segments, svc.Users, svc.Reports, svc.Imports, nil
	})
	bodies := map[string]string{
		"createSegment":       `{"slug":"SPEC_NEW"}`,
		"createLayer":         `{"slug":"SPEC_LAYER"}`,
		"patchSegment":        `{"description":"patched"}`,
		"registerUsers":       `{"user_ids":[1]}`,
		"changeUserSegments":  `{"add":["SPEC"]}`,
		"createHistoryReport": `{"period":"2026-11"}`,
		"createMembersReport": `{"slug":"SPEC"}`,
		"createImport":        "1\n2\n",
	}
	fill := strings.NewReplacer("{user_id}", "1000", "{slug}", "SPEC", "{token}", "not-a-token", "{id}", "1")
	for path, ops := range spec.Paths {
		for method, op := range ops {
			url := "/api/v1" + fill.Replace(path)
			method = strings.ToUpper(method)
			body, hasBody := bodies[op.OperationID]
			if hasBody != (len(op.RequestBody) > 0) {
				t.Fatalf("%s: the test has no body for it, or one it does not take", op.OperationID)
			}
			var sendBody any
			if hasBody {
				sendBody = body
			}
			declared := func(what string, status int) {
				t.Helper()
				if _, ok := op.Responses[strconv.Itoa(status)]; !ok {
					t.Errorf("%s %s (%s) answers %d, which docs/openapi.json does not declare", method, path, what, status)
				}
			}
			r := live.do(method, url+"?q=%ff", sendBody)
			if r.status != http.StatusBadRequest {
				t.Errorf("%s %s with a query that is not text: %d", method, path, r.status)
			}
			declared("query not text", r.status)
			if hasBody {
				declared("text/plain body", live.do(method, url, body, "Content-Type", "text/plain").status)
				declared("body over 1 MiB", live.do(method, url, `{"x":"`+strings.Repeat("a", 1<<20)+`"}`).status)
			}
			declared("database down", dead.do(method, url, sendBody).status)
		}
	}
}

// TestSpecSaysWhoMayCallAndHowToRetry checks docs/openapi.json against the
// route table: an operation needs the bearer token exactly when its route
// has a scope, says which scope, and declares 401 and 403; every write
// takes an Idempotency-Key and declares 409 and 422.
func TestSpecSaysWhoMayCallAndHowToRetry(t *testing.T) {
	raw, err := os.ReadFile("../../docs/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var spec struct {
		Paths map[string]map[string]struct {
			Description string                      `json:"description"`
			Security    []map[string][]string       `json:"security"`
			Parameters  []struct{ Name, In string } `json:"parameters"`
			Responses   map[string]json.RawMessage  `json:"responses"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(raw, &spec); err != nil {
		t.Fatal(err)
	}
	for _, rt := range httpapi.Routes() {
		where := rt.Method + " " + rt.Pattern
		op, ok := spec.Paths[strings.TrimPrefix(rt.Pattern, "/api/v1")][strings.ToLower(rt.Method)]
		if !ok {
			t.Errorf("%s: not in the spec", where)
			continue
		}
		secured := len(op.Security) == 1 && op.Security[0]["bearerAuth"] != nil
		if secured != (rt.Scope != "") {
			t.Errorf("%s: security %v, but the route's scope is %q", where, op.Security, rt.Scope)
		}
		if rt.Scope != "" && (!strings.Contains(op.Description, rt.Scope) || op.Responses["401"] == nil || op.Responses["403"] == nil) {
			t.Errorf("%s: does not name its scope %s or lacks 401/403", where, rt.Scope)
		}
		keyed := slices.ContainsFunc(op.Parameters, func(p struct{ Name, In string }) bool {
			return p.Name == "Idempotency-Key" && p.In == "header"
		})
		if keyed != (rt.Method != http.MethodGet) || (keyed && (op.Responses["409"] == nil || op.Responses["422"] == nil)) {
			t.Errorf("%s: Idempotency-Key parameter %v, responses %v", where, keyed, slices.Collect(maps.Keys(op.Responses)))
		}
	}
}
