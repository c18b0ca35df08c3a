package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/segments-service/segments/internal/domain"
)

// maxImportBytes bounds an uploaded list: 10,000,000 ids of 19 digits
// with "\r\n" are 210 MB.
const maxImportBytes = 256 << 20

// maxTTLSeconds bounds ttl_seconds (100 years), as in a user change.
const maxTTLSeconds = 3153600000

// typeInvalidList is the problem type of a list with bad lines.
const typeInvalidList = "urn:segments:problem:invalid-list"

// Import is an import as the API shows it.
type Import struct {
	ID      int64  `json:"id" example:"42"`
	Segment string `json:"segment" example:"AVITO_PERFORMANCE_VAS"`
	Mode    string `json:"mode" enums:"add,remove,replace" example:"add"`
	// ExpiresAt is the expiry of the memberships it gives; null for
	// permanent ones.
	ExpiresAt *time.Time `json:"expires_at" format:"date-time" extensions:"x-nullable" example:"2026-12-31T00:00:00Z"`
	Status    string     `json:"status" enums:"pending,running,done,failed" example:"running"`
	// Listed counts the ids as listed, repeats included. Received counts
	// the distinct ones: null until the worker has sorted the list (the
	// first seconds of the run). Processed counts those applied so far (it
	// grows to Received).
	Listed    int64  `json:"listed" example:"300012"`
	Received  *int64 `json:"received" extensions:"x-nullable" example:"300000"`
	Processed int64  `json:"processed" example:"120000"`
	// Added counts memberships that appeared or whose expiry changed,
	// Removed those that disappeared, Unchanged the rest.
	Added     int64 `json:"added" example:"119500"`
	Removed   int64 `json:"removed" example:"0"`
	Unchanged int64 `json:"unchanged" example:"480"`
	// Conflicts counts the ids skipped because the user holds another
	// segment of the segment's layer; ConflictIDs lists the first 100.
	Conflicts   int64   `json:"conflicts" example:"20"`
	ConflictIDs []int64 `json:"conflict_ids" example:"1017"`
	// Error says why a failed import failed; null otherwise.
	Error      *string    `json:"error" extensions:"x-nullable"`
	CreatedAt  time.Time  `json:"created_at" format:"date-time" example:"2026-12-01T09:00:00Z"`
	FinishedAt *time.Time `json:"finished_at" format:"date-time" extensions:"x-nullable"`
}

func importFrom(imp domain.Import) Import {
	out := Import{ID: imp.ID, Segment: imp.Segment, Mode: string(imp.Mode), Status: string(imp.Status),
		Listed: imp.Listed, Received: imp.Received, Processed: imp.Processed, Added: imp.Added, Removed: imp.Removed,
		Unchanged: imp.Unchanged, Conflicts: imp.Conflicts, ConflictIDs: imp.ConflictIDs, CreatedAt: imp.CreatedAt.UTC()}
	if out.ConflictIDs == nil {
		out.ConflictIDs = []int64{}
	}
	if imp.ExpiresAt != nil {
		t := imp.ExpiresAt.UTC()
		out.ExpiresAt = &t
	}
	if imp.FinishedAt != nil {
		t := imp.FinishedAt.UTC()
		out.FinishedAt = &t
	}
	if imp.Error != "" {
		out.Error = &imp.Error
	}
	return out
}

// ListProblem is the problem of an uploaded list with bad lines: nothing
// was stored.
type ListProblem struct {
	Type   string `json:"type" example:"urn:segments:problem:invalid-list"`
	Title  string `json:"title" example:"List has bad lines"`
	Status int    `json:"status" example:"422"`
	Detail string `json:"detail" example:"1 bad line; line 3: \"12a\" is not a user id (a whole number from 1 to 9223372036854775807); nothing was stored"`
	// Errors lists the first 100 bad lines.
	Errors []LineProblem `json:"errors"`
	// MoreErrors is set when there were more bad lines than listed.
	MoreErrors bool   `json:"more_errors" example:"false"`
	RequestID  string `json:"request_id,omitempty" example:"7f3c2a9e5b1d4c80"`
}

// LineProblem is one bad line of a list; lines are numbered from 1.
type LineProblem struct {
	Line   int64  `json:"line" example:"3"`
	Value  string `json:"value" example:"12a"`
	Detail string `json:"detail" example:"is not a user id (a whole number from 1 to 9223372036854775807)"`
}

// createImport godoc
//
//	@ID				createImport
//	@Summary		Import a list of users into or out of a segment
//	@Description	The body is one user id per line (decimal, 1 to 2^63−1), an optional first line "user_id", blank lines ignored, "\r\n" accepted, an id listed twice counts once; up to 10,000,000 ids (256 MiB). It is checked and stored while it is received; any bad line refuses the whole list (422, the first 100 bad lines) and nothing is stored. The import then applies in the background, in batches, exactly once, after the segment's earlier imports: add gives every listed user the segment as POST /users/{user_id}/segments would (unknown users are registered; ttl_seconds or expires_at sets the expiry, held memberships get it too); remove takes it from every listed user who holds it (an explicit removal: it sticks against the percent rule); replace leaves exactly the listed users holding it (not on a percent segment). A user who holds another segment of the segment's layer is skipped and counted in conflicts. History records reason import. Follow it at the Location.
//	@Tags			imports
//	@Accept			text/csv
//	@Accept			plain
//	@Produce		json
//	@Param			slug		path		string		true	"Segment slug"
//	@Param			mode		query		string		true	"What to do with the list"											Enums(add, remove, replace)
//	@Param			ttl_seconds	query		int			false	"add, replace: the memberships expire this many seconds from now"	minimum(1)	maximum(3153600000)
//	@Param			expires_at	query		string		false	"add, replace: the memberships expire at this RFC 3339 time"		format(date-time)
//	@Param			list		body		string		true	"One user id per line"
//	@Success		202			{object}	Import		"Accepted: stored, pending; Location names it"
//	@Header			202			{string}	Location	"/api/v1/imports/{id}"
//	@Failure		404			{object}	Problem		"No such segment"
//	@Failure		413			{object}	Problem		"List over 256 MiB"
//	@Failure		415			{object}	Problem		"Content-Type is not text/csv or text/plain"
//	@Failure		422			{object}	ListProblem	"Bad lines (type invalid-list), or a bad mode or expiry (type validation-failed, errors point at the query parameter)"
//	@Router			/segments/{slug}/imports [post]
func (h *handler) createImport(w http.ResponseWriter, r *http.Request) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || (mt != "text/csv" && mt != "text/plain") {
		statusProblem(w, r, http.StatusUnsupportedMediaType,
			fmt.Sprintf("Content-Type must be text/csv or text/plain (one user id per line), not %q", r.Header.Get("Content-Type")))
		return
	}
	q := r.URL.Query()
	ni := domain.NewImport{Segment: chi.URLParam(r, "slug"), Mode: domain.ImportMode(q.Get("mode"))}
	if s := q.Get("ttl_seconds"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 1 || n > maxTTLSeconds {
			respondError(w, r, domain.Invalid(fmt.Sprintf("ttl_seconds must be a whole number from 1 to %d, not %q", maxTTLSeconds, s),
				domain.FieldError{Field: "/ttl_seconds", Message: fmt.Sprintf("must be from 1 to %d", maxTTLSeconds)}))
			return
		}
		ni.TTL = time.Duration(n) * time.Second
	}
	if s := q.Get("expires_at"); s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			respondError(w, r, domain.Invalid(fmt.Sprintf("expires_at %q is not an RFC 3339 time such as 2026-12-31T00:00:00Z", s),
				domain.FieldError{Field: "/expires_at", Message: "must be an RFC 3339 time"}))
			return
		}
		ni.ExpiresAt = &t
	}
	// The list may take a while to arrive: the upload's own bounds apply.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(h.uploadTimeout))
	_ = rc.SetWriteDeadline(time.Now().Add(h.uploadTimeout + downloadGrace))
	imp, err := h.imports.Upload(r.Context(), ni, http.MaxBytesReader(w, r.Body, maxImportBytes))
	var (
		tooBig *http.MaxBytesError
		list   *domain.ImportListError
	)
	switch {
	case errors.As(err, &tooBig):
		statusProblem(w, r, http.StatusRequestEntityTooLarge, fmt.Sprintf("the list is larger than %d bytes; split it into several imports", maxImportBytes))
		return
	case errors.As(err, &list):
		writeListProblem(w, r, list)
		return
	case err != nil:
		respondError(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/imports/"+strconv.FormatInt(imp.ID, 10))
	respond(w, http.StatusAccepted, importFrom(imp))
}

// writeListProblem answers a list with bad lines.
func writeListProblem(w http.ResponseWriter, r *http.Request, e *domain.ImportListError) {
	p := ListProblem{Type: typeInvalidList, Title: "List has bad lines", Status: http.StatusUnprocessableEntity,
		Detail: e.Error(), MoreErrors: e.More, RequestID: requestIDFrom(r.Context())}
	for _, l := range e.Lines {
		p.Errors = append(p.Errors, LineProblem{Line: l.Line, Value: l.Value, Detail: l.Detail})
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

// getImport godoc
//
//	@ID				getImport
//	@Summary		Get an import and its progress
//	@Description	processed grows to received as the import applies; status turns done (or failed, with error, if its segment was deleted) at the end.
//	@Tags			imports
//	@Produce		json
//	@Param			id	path		int	true	"Import id"	minimum(1)
//	@Success		200	{object}	Import
//	@Failure		400	{object}	Problem	"id is not a positive whole number"
//	@Failure		404	{object}	Problem	"No such import"
//	@Router			/imports/{id} [get]
func (h *handler) getImport(w http.ResponseWriter, r *http.Request) {
	s := chi.URLParam(r, "id")
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id < 1 {
		statusProblem(w, r, http.StatusBadRequest, "id must be a whole number from 1 to 9223372036854775807, not "+strconv.Quote(s))
		return
	}
	imp, err := h.imports.Get(r.Context(), id)
	if err != nil {
		respondError(w, r, err)
		return
	}
	respond(w, http.StatusOK, importFrom(imp))
}
