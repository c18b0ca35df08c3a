package httpapi

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"

	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/domain"
)

// respond writes v as JSON with status.
func respond(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Problem is an RFC 9457 problem detail, the body of every error response
// (Content-Type application/problem+json).
type Problem struct {
	// Type identifies the kind of problem; "about:blank" when the status
	// says it all.
	Type   string `json:"type" example:"urn:segments:problem:validation-failed"`
	Title  string `json:"title" example:"Request is invalid"`
	Status int    `json:"status" example:"422"`
	Detail string `json:"detail,omitempty" example:"slug must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$, not \"voice messages\""`
	// Errors lists, for validation problems, each wrong field as a JSON
	// pointer into the request body (or, for a query parameter, its name:
	// #/mode).
	Errors []FieldProblem `json:"errors,omitempty"`
	// UnknownSlugs lists, for unknown-segments problems, every slug in the
	// request that names no segment.
	UnknownSlugs []string `json:"unknown_slugs,omitempty" example:"NO_SUCH_SEGMENT"`
	// RequiredScope names, for insufficient-scope problems, the scope the
	// route needs.
	RequiredScope string `json:"required_scope,omitempty" example:"segments:admin"`
	// FreeBuckets is, for layer-full problems, how many buckets the layer
	// has free.
	FreeBuckets *int `json:"free_buckets,omitempty" example:"2500"`
	// Conflicts lists, for layer-conflict problems, each segment asked for
	// and the segment of the same layer the user holds (or also asked for).
	Conflicts []LayerConflict `json:"conflicts,omitempty"`
	// RequestID lets the operator find the request in the logs.
	RequestID string `json:"request_id,omitempty" example:"7f3c2a9e5b1d4c80"`
}

// LayerConflict is a segment asked for and the one of its layer that
// stands in its way.
type LayerConflict struct {
	Slug string `json:"slug" example:"CHECKOUT_B"`
	Held string `json:"held" example:"CHECKOUT_A"`
}

// FieldProblem is one wrong field of a request.
type FieldProblem struct {
	Pointer string `json:"pointer" example:"#/slug"`
	Detail  string `json:"detail" example:"must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$, not \"voice messages\""`
}

// Problem types. Clients may switch on them; titles are for humans.
const (
	typeBlank           = "about:blank"
	typeMalformed       = "urn:segments:problem:malformed-request"
	typeValidation      = "urn:segments:problem:validation-failed"
	typeNotFound        = "urn:segments:problem:not-found"
	typeUnknownSegments = "urn:segments:problem:unknown-segments"
	typeConflict        = "urn:segments:problem:conflict"
	typeForbidden       = "urn:segments:problem:forbidden"
	typeUnavailable     = "urn:segments:problem:unavailable"
	typeTooManyExports  = "urn:segments:problem:too-many-exports"
	typeLayerFull       = domain.ProblemLayerFull
	typeLayerConflict   = "urn:segments:problem:layer-conflict"
	typeLayerNotEmpty   = "urn:segments:problem:layer-not-empty"
)

// domainProblems maps domain error kinds to responses: the one table that
// turns service errors into statuses.
var domainProblems = []struct {
	kind   error
	status int
	typ    string
	title  string
}{
	{domain.ErrInvalid, http.StatusUnprocessableEntity, typeValidation, "Request is invalid"},
	{domain.ErrNotFound, http.StatusNotFound, typeNotFound, "Not found"},
	{domain.ErrConflict, http.StatusConflict, typeConflict, "Conflict"},
	{domain.ErrForbidden, http.StatusForbidden, typeForbidden, "Forbidden"},
	{domain.ErrBusy, http.StatusTooManyRequests, typeTooManyExports, "Too many exports"},
}

// retryAfterSeconds is the Retry-After of a 503.
const retryAfterSeconds = "1"

// respondError writes err as a problem. Domain errors become 4xx with their
// message; anything else is logged once, with the request id, and the client
// sees a generic 500.
func respondError(w http.ResponseWriter, r *http.Request, err error) {
	var (
		full     *domain.LayerFullError
		conflict *domain.LayerConflictError
		notEmpty *domain.LayerNotEmptyError
	)
	switch {
	case errors.As(err, &full):
		writeProblem(w, r, Problem{Type: typeLayerFull, Title: "Layer full", Status: http.StatusConflict, Detail: full.Error(), FreeBuckets: &full.Free})
		return
	case errors.As(err, &conflict):
		p := Problem{Type: typeLayerConflict, Title: "Layer conflict", Status: http.StatusConflict, Detail: conflict.Error()}
		for _, c := range conflict.Conflicts {
			p.Conflicts = append(p.Conflicts, LayerConflict{Slug: c.Slug, Held: c.Held})
		}
		writeProblem(w, r, p)
		return
	case errors.As(err, &notEmpty):
		writeProblem(w, r, Problem{Type: typeLayerNotEmpty, Title: "Layer not empty", Status: http.StatusConflict, Detail: notEmpty.Error()})
		return
	}
	var de *domain.Error
	if errors.As(err, &de) {
		for _, dp := range domainProblems {
			if errors.Is(de.Kind, dp.kind) {
				p := Problem{Type: dp.typ, Title: dp.title, Status: dp.status, Detail: de.Message}
				for _, f := range de.Fields {
					p.Errors = append(p.Errors, FieldProblem{Pointer: "#" + f.Field, Detail: f.Message})
				}
				if len(de.UnknownSlugs) > 0 {
					p.Type, p.Title, p.UnknownSlugs = typeUnknownSegments, "Unknown segments", de.UnknownSlugs
				}
				if de.RetryAfter > 0 {
					w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(de.RetryAfter.Seconds()))))
				}
				writeProblem(w, r, p)
				return
			}
		}
	}
	if errors.Is(err, domain.ErrUnavailable) {
		loggerFrom(r.Context()).Warn("database unavailable", zap.Error(err))
		w.Header().Set("Retry-After", retryAfterSeconds)
		writeProblem(w, r, Problem{Type: typeUnavailable, Title: "Service unavailable", Status: http.StatusServiceUnavailable,
			Detail: "the database cannot be reached or cannot take writes right now; retry the request (a change that got this answer may have been applied, and applying it again is safe)"})
		return
	}
	if errors.Is(err, r.Context().Err()) && r.Context().Err() != nil {
		// The client went away or the request ran out of time: nothing
		// failed on our side worth an error log.
		loggerFrom(r.Context()).Warn("request cancelled", zap.Error(err))
		writeProblem(w, r, Problem{Type: typeBlank, Title: "Request timed out", Status: http.StatusServiceUnavailable,
			Detail: "the request did not complete in time; it may be retried"})
		return
	}
	loggerFrom(r.Context()).Error("request failed", zap.Error(err))
	writeProblem(w, r, Problem{Type: typeBlank, Title: "Internal server error", Status: http.StatusInternalServerError,
		Detail: "the server failed to handle the request; report the request_id to the operators"})
}

// writeProblem writes p with its request id.
func writeProblem(w http.ResponseWriter, r *http.Request, p Problem) {
	p.RequestID = requestIDFrom(r.Context())
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

// statusProblem writes a problem that its status describes fully.
func statusProblem(w http.ResponseWriter, r *http.Request, status int, detail string) {
	writeProblem(w, r, Problem{Type: typeBlank, Title: http.StatusText(status), Status: status, Detail: detail})
}
