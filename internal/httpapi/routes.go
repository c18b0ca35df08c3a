// Package httpapi is the HTTP face of the service: routing, JSON in and out,
// problem+json errors. Handlers decode, validate, call one service method
// and encode; they hold no business rules and no SQL.
//
//	@title				Segments API
//	@version			1.0
//	@description		Stores which experiment segments each user belongs to. Errors are application/problem+json (RFC 9457).
//	@BasePath			/api/v1
//	@accept				json
//	@produce			json
//	@tag.name			segments
//	@tag.description	Segments that analysts create
//	@tag.name			layers
//	@tag.description	Layers: segments that no user holds two of
//	@tag.name			imports
//	@tag.description	Lists of users imported into or out of a segment
//	@tag.name			users
//	@tag.description	Users and the segments they hold
//	@tag.name			audit
//	@tag.description	Who changed what: every administrative change
package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/go-playground/validator/v10"
	httpSwagger "github.com/swaggo/http-swagger/v2"
	"go.uber.org/zap"

	_ "github.com/segments-service/segments/docs" // registers the generated OpenAPI spec
	"github.com/segments-service/segments/internal/auth"
	"github.com/segments-service/segments/internal/readcache"
	"github.com/segments-service/segments/internal/service"
)

// Options are what the router needs.
type Options struct {
	Segments *service.Segments
	Layers   *service.Layers
	Users    *service.Users
	Reports  *service.Reports
	Imports  *service.Imports
	Audit    *service.Audit
	// Cache, if set, answers reads of users' segments from memory; the
	// handlers that change memberships invalidate it before they answer.
	Cache *readcache.Cache
	// Checks are the dependencies /readyz asks.
	Checks []Check
	// Log receives access logs and errors; nil discards them.
	Log *zap.Logger
	// LogRequests says which requests get an access log line: "errors"
	// (answered 400 or more; the default), "all" or "none".
	LogRequests string
	// RequestTimeout bounds each request's work; zero means no bound.
	RequestTimeout time.Duration
	// ReportTimeout bounds a report download instead.
	ReportTimeout time.Duration
	// UploadTimeout bounds an import's upload instead (it also moves the
	// connection's read deadline).
	UploadTimeout time.Duration
	// PublicURL is the scheme and host report links start with; empty
	// makes links relative (never taken from the request's Host).
	PublicURL string
	// ReadsRegister says which reads of an unknown user's segments
	// register the user: ReadsRegisterWriteScope (the default, for "")
	// registers on reads by callers that may write (every caller with
	// authentication off), ReadsRegisterAlways on every read,
	// ReadsRegisterNever on none.
	ReadsRegister string
	// Observer, if set, records every request (route pattern, method,
	// status, duration).
	Observer RequestObserver
	// Metrics, if set, is served at /metrics.
	Metrics http.Handler
	// QueuesUI, if set, is served under /admin/queues.
	QueuesUI http.Handler
	// Auth, if set, verifies the bearer token every /api/v1 route but
	// the report download needs; nil lets every caller in.
	Auth *auth.Verifier
	// AuthObserver, if set, counts refused tokens.
	AuthObserver AuthObserver
	// Idempotency, if set, makes every POST, PATCH and DELETE under
	// /api/v1 that carries an Idempotency-Key safe to retry.
	Idempotency IdempotencyStore
	// IdempotencyObserver, if set, counts keyed requests by outcome.
	IdempotencyObserver IdempotencyObserver
	// WriteFence, if set, is told of every write request before it runs;
	// the function it returns runs once the handler is done (a standby
	// then answers this process's reads only once it has the write).
	WriteFence WriteFence
}

// WriteFence is postgres.Standby's side of a write, and of a bulk change
// answered as done.
type WriteFence interface {
	BeginWrite() func(context.Context)
	// Sync makes this process's later reads see what the primary has now.
	Sync(ctx context.Context)
}

// AuthObserver counts requests refused for their token, by reason.
type AuthObserver interface {
	AuthRefused(reason auth.Reason)
}

// RequestObserver records served requests, for monitoring.
type RequestObserver interface {
	ObserveRequest(route, method string, status int, d time.Duration)
}

// Policies of Options.ReadsRegister.
const (
	ReadsRegisterWriteScope = "write-scope"
	ReadsRegisterAlways     = "always"
	ReadsRegisterNever      = "never"
)

// QueuesUIPath is where the task queues' web UI is mounted.
const QueuesUIPath = "/admin/queues"

type handler struct {
	segments  *service.Segments
	layers    *service.Layers
	users     *service.Users
	reports   *service.Reports
	imports   *service.Imports
	audit     *service.Audit
	cache     *readcache.Cache
	checks    []Check
	validate  *validator.Validate
	publicURL string
	// reportTimeout is how long a report download may take.
	reportTimeout time.Duration
	// uploadTimeout is how long an import's upload may take.
	uploadTimeout time.Duration
	// readsRegister is Options.ReadsRegister.
	readsRegister string
	// fence is Options.WriteFence; synced the bulk changes it has been
	// synced for (see syncOnce).
	fence  WriteFence
	synced sync.Map
}

// syncOnce syncs the write fence the first time key (a bulk change
// answered as done) comes, so that this process's reads from a standby
// have the change; without a fence it does nothing.
func (h *handler) syncOnce(ctx context.Context, key string) {
	if h.fence == nil {
		return
	}
	if _, done := h.synced.Load(key); done {
		return
	}
	h.fence.Sync(ctx)
	h.synced.Store(key, struct{}{})
}

// NewRouter returns the service's HTTP handler: every route is here. With
// no services in o it serves only the operational routes (/healthz,
// /readyz, /metrics), as a worker does.
func NewRouter(o Options) http.Handler {
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	h := &handler{
		segments:  o.Segments,
		layers:    o.Layers,
		users:     o.Users,
		reports:   o.Reports,
		imports:   o.Imports,
		audit:     o.Audit,
		cache:     o.Cache,
		checks:    o.Checks,
		validate:  newValidator(),
		publicURL: strings.TrimSuffix(o.PublicURL, "/"),

		reportTimeout: o.ReportTimeout,
		uploadTimeout: o.UploadTimeout,
		readsRegister: o.ReadsRegister,
		fence:         o.WriteFence,
	}

	r := chi.NewRouter()
	r.Use(requestContext(o.Log), accessLog(o.Log, o.LogRequests, o.Observer), recoverer, textOnly, middleware.GetHead)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		markUnmatched(r.Context())
		statusProblem(w, r, http.StatusNotFound, "no route for "+r.URL.Path)
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, req *http.Request) {
		markUnmatched(req.Context())
		allowed := allowedMethods(r, req.URL.Path)
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		statusProblem(w, req, http.StatusMethodNotAllowed,
			fmt.Sprintf("%s is not allowed on %s; allowed: %s", req.Method, req.URL.Path, strings.Join(allowed, ", ")))
	})

	r.With(deadline(o.RequestTimeout)).Get("/healthz", h.healthz)
	r.With(deadline(o.RequestTimeout)).Get("/readyz", h.readyz)
	if o.Metrics != nil {
		r.Method(http.MethodGet, "/metrics", o.Metrics)
	}
	if o.QueuesUI != nil {
		// It can delete, retry and archive tasks and shows their payloads.
		ui := authenticate(o.Auth, auth.ScopeAdmin, o.AuthObserver)(o.QueuesUI)
		r.Handle(QueuesUIPath, ui)
		r.Handle(QueuesUIPath+"/*", ui)
	}
	if o.Segments == nil {
		return r
	}
	r.Get("/", http.RedirectHandler("/swagger/index.html", http.StatusFound).ServeHTTP)
	r.Get("/swagger", http.RedirectHandler("/swagger/index.html", http.StatusMovedPermanently).ServeHTTP)
	r.Get("/swagger/", http.RedirectHandler("/swagger/index.html", http.StatusMovedPermanently).ServeHTTP)
	r.Get("/swagger/*", headAsGet(httpSwagger.Handler(httpSwagger.URL("/swagger/doc.json"))))

	r.Route("/api/v1", func(r chi.Router) {
		for _, rt := range apiRoutes {
			timeout := o.RequestTimeout
			switch {
			case rt.download:
				timeout = o.ReportTimeout // a download streams for as long as the report takes
			case rt.upload:
				timeout = o.UploadTimeout
			}
			mw := []func(http.Handler) http.Handler{deadline(timeout), authenticate(o.Auth, rt.scope, o.AuthObserver)}
			if rt.method != http.MethodGet {
				if o.WriteFence != nil {
					mw = append(mw, fenceWrites(o.WriteFence))
				}
				mw = append(mw, recordActor, idempotent(o.Idempotency, o.IdempotencyObserver, rt.upload, func() { h.cache.InvalidateAll("local") }))
			}
			r.With(mw...).Method(rt.method, rt.pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { rt.handle(h, w, r) }))
		}
	})
	return r
}

// apiRoute is a route under /api/v1 and the scope a caller's token must
// grant for it.
type apiRoute struct {
	method, pattern string
	// scope is the scope the route needs; scopeOpen for none.
	scope  string
	handle func(*handler, http.ResponseWriter, *http.Request)
	// download marks a route bounded by the report timeout rather than
	// the request timeout.
	download bool
	// upload marks a route whose body is a list streamed to the database
	// (up to maxImportBytes, bounded by the upload timeout).
	upload bool
}

// scopeOpen marks a route that needs no token: a report download, whose
// link is signed and expires.
const scopeOpen = ""

// apiRoutes is every route under /api/v1, with who may call it: reading
// and report links need segments:read, changing users segments:write,
// changing segments, layers and imports segments:admin. HEAD goes with GET.
var apiRoutes = []apiRoute{
	{method: http.MethodPost, pattern: "/segments", scope: auth.ScopeAdmin, handle: (*handler).createSegment},
	{method: http.MethodGet, pattern: "/segments", scope: auth.ScopeRead, handle: (*handler).listSegments},
	{method: http.MethodGet, pattern: "/segments/{slug}", scope: auth.ScopeRead, handle: (*handler).getSegment},
	{method: http.MethodPatch, pattern: "/segments/{slug}", scope: auth.ScopeAdmin, handle: (*handler).patchSegment},
	{method: http.MethodDelete, pattern: "/segments/{slug}", scope: auth.ScopeAdmin, handle: (*handler).deleteSegment},
	{method: http.MethodGet, pattern: "/segments/{slug}/members", scope: auth.ScopeRead, handle: (*handler).listMembers},
	{method: http.MethodGet, pattern: "/segments/{slug}/audit", scope: auth.ScopeRead, handle: (*handler).listSegmentAudit},
	{method: http.MethodPost, pattern: "/segments/{slug}/imports", scope: auth.ScopeAdmin, handle: (*handler).createImport, upload: true},
	{method: http.MethodGet, pattern: "/imports/{id}", scope: auth.ScopeRead, handle: (*handler).getImport},

	{method: http.MethodPost, pattern: "/layers", scope: auth.ScopeAdmin, handle: (*handler).createLayer},
	{method: http.MethodGet, pattern: "/layers", scope: auth.ScopeRead, handle: (*handler).listLayers},
	{method: http.MethodGet, pattern: "/layers/{slug}", scope: auth.ScopeRead, handle: (*handler).getLayer},
	{method: http.MethodDelete, pattern: "/layers/{slug}", scope: auth.ScopeAdmin, handle: (*handler).deleteLayer},

	{method: http.MethodPost, pattern: "/users", scope: auth.ScopeWrite, handle: (*handler).registerUsers},
	{method: http.MethodGet, pattern: "/users/{user_id}/segments", scope: auth.ScopeRead, handle: (*handler).userSegments},
	{method: http.MethodPost, pattern: "/users/{user_id}/segments", scope: auth.ScopeWrite, handle: (*handler).changeUserSegments},
	{method: http.MethodGet, pattern: "/users/{user_id}/segments/{slug}", scope: auth.ScopeRead, handle: (*handler).explainMembership},
	{method: http.MethodGet, pattern: "/users/{user_id}/history", scope: auth.ScopeRead, handle: (*handler).userHistory},

	{method: http.MethodGet, pattern: "/audit", scope: auth.ScopeRead, handle: (*handler).listAudit},

	{method: http.MethodPost, pattern: "/reports/history", scope: auth.ScopeRead, handle: (*handler).createReport},
	{method: http.MethodGet, pattern: "/reports/history/{token}", scope: scopeOpen, handle: (*handler).downloadReport, download: true},
	{method: http.MethodPost, pattern: "/reports/members", scope: auth.ScopeRead, handle: (*handler).createMembersReport},
	{method: http.MethodGet, pattern: "/reports/members/{token}", scope: scopeOpen, handle: (*handler).downloadMembersReport, download: true},
}

// headAsGet hands a HEAD request to h as a GET, for handlers that refuse
// other methods; the server still sends no body.
func headAsGet(h http.Handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			r = r.Clone(r.Context())
			r.Method = http.MethodGet
		}
		h.ServeHTTP(w, r)
	}
}

// allowedMethods lists the methods that routes has for path; HEAD goes
// with GET.
func allowedMethods(routes chi.Routes, path string) []string {
	var allowed []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		if routes.Match(chi.NewRouteContext(), m, path) {
			allowed = append(allowed, m)
			if m == http.MethodGet {
				allowed = append(allowed, http.MethodHead)
			}
		}
	}
	return allowed
}

// Route is a route under /api/v1 as the scope table declares it.
type Route struct {
	Method, Pattern string
	// Scope is the scope a token must grant; "" for an open route.
	Scope string
}

// Routes lists every route under /api/v1 with its scope (for the spec's
// security requirements and for tests).
func Routes() []Route {
	out := make([]Route, len(apiRoutes))
	for i, r := range apiRoutes {
		out[i] = Route{Method: r.method, Pattern: "/api/v1" + r.pattern, Scope: r.scope}
	}
	return out
}
