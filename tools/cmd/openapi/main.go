// Command openapi turns the Swagger 2.0 document swag generates from the
// handlers' annotations into the OpenAPI 3.0.3 document the service
// publishes, and adds what Swagger 2.0 cannot say: problem+json as the
// media type of every error with an example per status, CSV as the only
// media type of the report download, an example for every parameter, the
// fields every response always carries as required, and int64 formats.
//
//	go run ./tools/cmd/openapi docs/swagger.json docs/openapi.json
//
// make docs runs it after swag; make docs-check fails when its output is
// not what is committed.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"

	"github.com/segments-service/segments/internal/httpapi"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: openapi SWAGGER2.json OPENAPI3.json")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "openapi:", err)
		os.Exit(1)
	}
}

func run(in, out string) error {
	raw, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	var v2 openapi2.T
	if err := json.Unmarshal(raw, &v2); err != nil {
		return fmt.Errorf("read %s: %w", in, err)
	}
	doc, err := openapi2conv.ToV3(&v2)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	if err := amend(doc); err != nil {
		return err
	}
	if err := doc.Validate(openapi3.NewLoader().Context); err != nil {
		return fmt.Errorf("the amended document is invalid: %w", err)
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(out, append(b, '\n'), 0o644)
}

// Media types.
const (
	problemJSON = "application/problem+json"
	textCSV     = "text/csv"
)

// parameterExamples gives each parameter, by name, the example Swagger 2.0
// had no room for.
var parameterExamples = map[string]any{
	"user_id": 1000,
	"slug":    "AVITO_VOICE_MESSAGES",
	"token":   "djEuMjAyNi0xMS4xMDAwLjE3NjQ0MDU2MDA.Xc6mJ0w1T9hWzL3cJrP4Zq2Y8s1vE6uHnXkA0dGf7bI",
	"limit":   100,
	"from":    "2026-11-01T00:00:00Z",
	"to":      "2026-12-01T00:00:00Z",
	"at":      "2026-11-20T12:00:00Z",
	// An import's.
	"id":          42,
	"mode":        "add",
	"ttl_seconds": 2592000,
	"expires_at":  "2026-12-31T00:00:00Z",
}

// layerSlugExample is the slug of the layer the examples use.
const layerSlugExample = "CHECKOUT_EXPERIMENTS"

// afterExamples are the after= cursors, by operation.
var afterExamples = map[string]any{
	"listSegments":     "AVITO_DISCOUNT_50",
	"listLayers":       "CHECKOUT_EXPERIMENTS",
	"getUserHistory":   "1764000000000000-1234",
	"listMembers":      1000,
	"listAudit":        "41",
	"listSegmentAudit": "41",
}

// sharedResponses are the statuses every operation can answer, whatever
// its handler does: the middleware refuses a path or query that is not
// text, any handler can fail, and every one reads PostgreSQL.
var sharedResponses = map[int]string{
	http.StatusBadRequest:          "The path or query is not UTF-8 text (or holds a NUL byte)",
	http.StatusInternalServerError: "The server failed; the problem's request_id finds it in the logs",
	http.StatusServiceUnavailable:  "PostgreSQL is unavailable; retry after Retry-After seconds",
}

// problemTypes are the problem types each status is answered with (see
// internal/httpapi/respond.go); an operation's 404 for unknown slugs says
// so in its description.
var problemTypes = map[int]string{
	400: "urn:segments:problem:malformed-request",
	401: "urn:segments:problem:invalid-token",
	403: "urn:segments:problem:forbidden",
	404: "urn:segments:problem:not-found",
	409: "urn:segments:problem:conflict",
	413: "about:blank",
	415: "about:blank",
	422: "urn:segments:problem:validation-failed",
	429: "urn:segments:problem:too-many-exports",
	500: "about:blank",
	503: "urn:segments:problem:unavailable",
}

// responseSchemas are sent whole: every property is present (null where
// nullable). Problem has its own list.
var responseSchemas = []string{
	"ChangeSegmentsResponse", "FieldProblem", "HistoryEvent", "Import", "LineProblem", "Membership", "RegisterUsersResponse",
	"ReportLink", "Rollout", "Segment", "SegmentList", "UserHistory", "UserSegments",
}

func amend(doc *openapi3.T) error {
	doc.Servers = openapi3.Servers{{URL: "/api/v1", Description: "this server"}}
	for name, s := range doc.Components.Schemas {
		if slices.Contains(responseSchemas, name) {
			s.Value.Required = sortedKeys(s.Value.Properties)
		}
		for prop, p := range s.Value.Properties {
			if p.Value != nil && p.Value.Type.Is(openapi3.TypeInteger) && p.Value.Format == "" && !(name == "Problem" && prop == "status") {
				p.Value.Format = "int64"
			}
			if p.Value != nil && p.Value.Type.Is(openapi3.TypeArray) && p.Value.Items != nil && p.Value.Items.Value != nil &&
				p.Value.Items.Value.Type.Is(openapi3.TypeInteger) {
				p.Value.Items.Value.Format = "int64"
			}
		}
	}
	// OpenAPI 3.0.3: nullable counts only beside a type in the same
	// schema, so swag's "allOf: [$ref], nullable" admits no null. The
	// nullable object becomes the referenced schema, inlined (after the
	// pass above, so that the copy carries its required list), and the
	// component goes if nothing else refers to it.
	inlined := map[string]bool{}
	for _, s := range doc.Components.Schemas {
		for prop, p := range s.Value.Properties {
			if p.Value == nil || !p.Value.Nullable || len(p.Value.AllOf) != 1 || p.Value.AllOf[0].Value == nil {
				continue
			}
			copied := *p.Value.AllOf[0].Value
			copied.Nullable, copied.Description = true, p.Value.Description
			inlined[p.Value.AllOf[0].Ref] = true
			s.Value.Properties[prop] = openapi3.NewSchemaRef("", &copied)
		}
	}
	for ref := range inlined {
		b, err := json.Marshal(doc)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), strconv.Quote(ref)) {
			delete(doc.Components.Schemas, strings.TrimPrefix(ref, "#/components/schemas/"))
		}
	}
	// The two expiry forms are alternatives: a change may give either, or
	// neither (permanent), never both.
	if change, ok := doc.Components.Schemas["ChangeSegmentsRequest"]; ok {
		change.Value.Not = openapi3.NewSchemaRef("", &openapi3.Schema{
			Required:    []string{"expires_at", "ttl_seconds"},
			Properties:  openapi3.Schemas{"expires_at": change.Value.Properties["expires_at"], "ttl_seconds": change.Value.Properties["ttl_seconds"]},
			Description: "ttl_seconds and expires_at are alternatives: give one or neither",
		})
	} else {
		return fmt.Errorf("no ChangeSegmentsRequest schema")
	}
	// An audit entry's from and to are any JSON value: a field's as the
	// API shows it, or null.
	if change, ok := doc.Components.Schemas["AuditChange"]; ok {
		for _, name := range []string{"from", "to"} {
			change.Value.Properties[name] = openapi3.NewSchemaRef("", &openapi3.Schema{
				Description: "The field's value, as the API shows it; null before a creation or when unset"})
		}
		change.Value.Required = []string{"from", "to"}
		change.Value.Example = map[string]any{"from": 10, "to": 50}
	} else {
		return fmt.Errorf("no AuditChange schema")
	}
	problem, ok := doc.Components.Schemas["Problem"]
	if !ok {
		return fmt.Errorf("no Problem schema")
	}
	problem.Value.Required = []string{"status", "title", "type"}

	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			where := method + " " + path
			for _, p := range op.Parameters {
				ex, ok := parameterExamples[p.Value.Name]
				if p.Value.Name == "after" {
					ex, ok = afterExamples[op.OperationID]
				}
				if p.Value.Name == "slug" && strings.HasPrefix(path, "/layers") {
					ex = layerSlugExample
				}
				if !ok {
					return fmt.Errorf("%s: no example for parameter %q", where, p.Value.Name)
				}
				p.Value.Example = ex
			}
			for status, description := range sharedResponses {
				if op.Responses.Value(strconv.Itoa(status)) == nil {
					op.Responses.Set(strconv.Itoa(status), &openapi3.ResponseRef{Value: openapi3.NewResponse().WithDescription(description)})
				}
			}
			for code, r := range op.Responses.Map() {
				status, err := strconv.Atoi(code)
				if err != nil {
					return fmt.Errorf("%s: response %q", where, code)
				}
				// A declared header is one the service always sends.
				for _, h := range r.Value.Headers {
					h.Value.Required = true
				}
				switch {
				case status >= 400:
					if err := problemResponse(r.Value, problem, status, where); err != nil {
						return err
					}
				case strings.HasPrefix(op.OperationID, "download") && status == http.StatusOK:
					r.Value.Content = openapi3.Content{textCSV: r.Value.Content[textCSV]}
				}
			}
		}
	}
	if err := accessAndRetries(doc, problem); err != nil {
		return err
	}
	if op := doc.Paths.Value("/segments/{slug}").Patch; op != nil {
		json := op.RequestBody.Value.Content["application/json"]
		json.Example = map[string]any{"description": "Voice messages in chat and calls", "delete_at": "2030-01-02T15:04:05Z"}
		op.RequestBody.Value.Content["application/merge-patch+json"] = json
	}
	if op := doc.Paths.Value("/segments/{slug}/imports").Post; op != nil {
		if err := importList(doc, op, problem); err != nil {
			return err
		}
	}
	if op := doc.Paths.Value("/users/{user_id}/segments").Post; op != nil {
		op.RequestBody.Value.Content["application/json"].Example = map[string]any{
			"add": []string{"AVITO_VOICE_MESSAGES", "AVITO_DISCOUNT_30"}, "remove": []string{"AVITO_PERFORMANCE_VAS"}, "ttl_seconds": 172800,
		}
	}
	return nil
}

// importList gives the import upload its list's example and its 422 both
// problems: a list with bad lines (ListProblem), or a bad mode or expiry
// (Problem).
func importList(doc *openapi3.T, op *openapi3.Operation, problem *openapi3.SchemaRef) error {
	list, ok := doc.Components.Schemas["ListProblem"]
	if !ok {
		return fmt.Errorf("no ListProblem schema")
	}
	list.Value.Required = []string{"detail", "errors", "more_errors", "status", "title", "type"}
	for _, mt := range []string{textCSV, "text/plain"} {
		c, ok := op.RequestBody.Value.Content[mt]
		if !ok {
			return fmt.Errorf("POST /segments/{slug}/imports takes no %s", mt)
		}
		c.Example = "user_id\n1000\n1001\n1002\n"
	}
	r := op.Responses.Value("422")
	if r == nil {
		return fmt.Errorf("POST /segments/{slug}/imports has no 422")
	}
	mt := r.Value.Content[problemJSON]
	mt.Schema = openapi3.NewSchemaRef("", &openapi3.Schema{OneOf: openapi3.SchemaRefs{
		openapi3.NewSchemaRef("#/components/schemas/ListProblem", list.Value),
		openapi3.NewSchemaRef("#/components/schemas/Problem", problem.Value),
	}})
	mt.Example = map[string]any{
		"type": "urn:segments:problem:invalid-list", "title": "List has bad lines", "status": 422,
		"detail":      "1 bad line; line 3: \"12a\" is not a user id (a whole number from 1 to 9223372036854775807); nothing was stored",
		"errors":      []any{map[string]any{"line": 3, "value": "12a", "detail": "is not a user id (a whole number from 1 to 9223372036854775807)"}},
		"more_errors": false, "request_id": "7f3c2a9e5b1d4c80",
	}
	return nil
}

// accessAndRetries adds what the route table (httpapi.Routes) says about
// each operation: the bearer token and scope it needs (401 and 403), and,
// for every write, the Idempotency-Key header with its answers (a replay's
// Idempotent-Replayed header, 409 while the key is in use, 422 when it was
// used for another request, 400 for a bad key).
func accessAndRetries(doc *openapi3.T, problem *openapi3.SchemaRef) error {
	doc.Components.SecuritySchemes = openapi3.SecuritySchemes{bearerScheme: &openapi3.SecuritySchemeRef{Value: &openapi3.SecurityScheme{
		Type: "http", Scheme: "bearer", BearerFormat: "JWT",
		Description: "A JWT whose space-separated scope claim grants segments:read, segments:write or segments:admin " +
			"(each operation says which). Only when the service has authentication on (README, \"Authentication\").",
	}}}
	for _, rt := range httpapi.Routes() {
		path := strings.TrimPrefix(rt.Pattern, "/api/v1")
		item := doc.Paths.Value(path)
		if item == nil || item.GetOperation(rt.Method) == nil {
			return fmt.Errorf("%s %s is in the route table but not in the spec", rt.Method, path)
		}
		op, where := item.GetOperation(rt.Method), rt.Method+" "+path
		if rt.Scope != "" {
			op.Security = &openapi3.SecurityRequirements{{bearerScheme: []string{}}}
			op.Description = strings.TrimSpace(op.Description + " Needs a token with the scope " + rt.Scope + ".")
			if err := addProblem(op, problem, http.StatusUnauthorized, "No bearer token, or one that is expired, badly signed or not meant for this service", where); err != nil {
				return err
			}
			if err := addProblem(op, problem, http.StatusForbidden, "The token lacks the scope "+rt.Scope, where); err != nil {
				return err
			}
			ex := op.Responses.Value("403").Value.Content[problemJSON].Example.(map[string]any)
			ex["type"], ex["required_scope"] = "urn:segments:problem:insufficient-scope", rt.Scope
			ex["detail"] = rt.Method + " /api/v1" + path + " needs the scope " + rt.Scope + ", which the token does not grant"
		}
		if rt.Method == http.MethodGet {
			continue
		}
		op.Parameters = append(op.Parameters, &openapi3.ParameterRef{Value: &openapi3.Parameter{
			Name: "Idempotency-Key", In: "header",
			Description: "Makes the request safe to retry: a retry with the same key gets the first response again " +
				"(Idempotent-Replayed: true) and changes nothing. 1 to 255 printable ASCII characters, new for each request.",
			Schema:  openapi3.NewSchemaRef("", &openapi3.Schema{Type: &openapi3.Types{openapi3.TypeString}, MinLength: 1, MaxLength: openapi3.Ptr(uint64(255))}),
			Example: "9f1c2a7e-6b3d-4e58-a0c1-2d7f5e8b9a34",
		}})
		for code, r := range op.Responses.Map() {
			if strings.HasPrefix(code, "2") {
				if r.Value.Headers == nil {
					r.Value.Headers = openapi3.Headers{}
				}
				r.Value.Headers["Idempotent-Replayed"] = &openapi3.HeaderRef{Value: &openapi3.Header{Parameter: openapi3.Parameter{
					Description: "true when this is the stored response of an earlier request with the same Idempotency-Key",
					Schema:      openapi3.NewSchemaRef("", &openapi3.Schema{Type: &openapi3.Types{openapi3.TypeString}, Enum: []any{"true"}}),
				}}}
			}
		}
		for status, description := range map[int]string{
			http.StatusBadRequest:          "Idempotency-Key is not 1 to 255 printable ASCII characters",
			http.StatusConflict:            "A request with the same Idempotency-Key is still running; retry after Retry-After seconds",
			http.StatusUnprocessableEntity: "The Idempotency-Key was used for another request (method, path or body)",
		} {
			if err := addProblem(op, problem, status, description, where); err != nil {
				return err
			}
		}
		if r := op.Responses.Value("409"); r.Value.Description != nil && strings.HasPrefix(*r.Value.Description, "A request with the same") {
			ex := r.Value.Content[problemJSON].Example.(map[string]any)
			ex["type"] = "urn:segments:problem:idempotency-key-in-use"
		}
	}
	return nil
}

// bearerScheme names the security scheme of bearer tokens.
const bearerScheme = "bearerAuth"

// addProblem declares status on op as a problem response; if op declares
// it already, the description gains "or <description>" and the example
// stays.
func addProblem(op *openapi3.Operation, problem *openapi3.SchemaRef, status int, description, where string) error {
	if r := op.Responses.Value(strconv.Itoa(status)); r != nil {
		d := description
		if r.Value.Description != nil {
			d = *r.Value.Description + "; or: " + lowerFirst(description)
		}
		r.Value.Description = &d
		return nil
	}
	r := openapi3.NewResponse().WithDescription(description)
	if err := problemResponse(r, problem, status, where); err != nil {
		return err
	}
	op.Responses.Set(strconv.Itoa(status), &openapi3.ResponseRef{Value: r})
	return nil
}

func lowerFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToLower(s[:1]) + s[1:]
}

// problemResponse makes r a problem+json response with an example of its
// status.
func problemResponse(r *openapi3.Response, problem *openapi3.SchemaRef, status int, where string) error {
	typ, ok := problemTypes[status]
	if !ok {
		return fmt.Errorf("%s: no problem type for status %d", where, status)
	}
	switch {
	case status == http.StatusNotFound && r.Description != nil && *r.Description == "Unknown segments, listed in unknown_slugs":
		typ = "urn:segments:problem:unknown-segments"
	case status == http.StatusBadRequest && (r.Description == nil || !strings.Contains(*r.Description, "JSON")):
		// A bad parameter is a plain 400; only a body that is not JSON
		// is a malformed request.
		typ = "about:blank"
	}
	title := http.StatusText(status)
	detail := ""
	if r.Description != nil {
		detail = *r.Description
	}
	example := map[string]any{"type": typ, "title": title, "status": status, "detail": detail, "request_id": "7f3c2a9e5b1d4c80"}
	if typ == "urn:segments:problem:unknown-segments" {
		example["unknown_slugs"] = []string{"NO_SUCH_SEGMENT"}
	}
	r.Content = openapi3.Content{problemJSON: &openapi3.MediaType{
		Schema:  openapi3.NewSchemaRef("#/components/schemas/Problem", problem.Value),
		Example: example,
	}}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
