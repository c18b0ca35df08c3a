package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/segments-service/segments/internal/service"
)

// AuditEntry is one administrative change.
type AuditEntry struct {
	ID int64     `json:"id" example:"42"`
	At time.Time `json:"at" format:"date-time" example:"2026-11-22T08:00:00Z"`
	// Actor is the token's sub; "schedule" for what the service did at a
	// scheduled time; null when authentication is off.
	Actor  *string     `json:"actor" example:"analyst-7" extensions:"x-nullable"`
	Action string      `json:"action" enums:"create,update,delete" example:"update"`
	Target AuditTarget `json:"target"`
	// Changes maps each field that changed to {from, to}; {} for a
	// deletion.
	Changes map[string]AuditChange `json:"changes"`
	// Error is the problem type of a scheduled step that could not apply,
	// or an import's error; null otherwise.
	Error *string `json:"error" example:"urn:segments:problem:layer-full" extensions:"x-nullable"`
	// RequestID is the X-Request-Id of the request that made the change;
	// null for scheduled work.
	RequestID *string `json:"request_id" example:"5f1c2d3e4b5a6978" extensions:"x-nullable"`
}

// AuditChange is a field's value before and after a change, as the API
// shows the field (null before a creation).
type AuditChange struct {
	From json.RawMessage `json:"from" swaggertype:"object"`
	To   json.RawMessage `json:"to" swaggertype:"object"`
}

// AuditTarget is what an audit entry is about.
type AuditTarget struct {
	Kind string `json:"kind" enums:"segment,layer,import" example:"segment"`
	// Slug is the segment's or the layer's slug; an import's segment's.
	Slug string `json:"slug" example:"AVITO_DISCOUNT_30"`
}

// AuditList is one page of audit entries, newest first.
type AuditList struct {
	Entries []AuditEntry `json:"entries"`
	// NextAfter is the after= cursor of the next page; null on the last.
	NextAfter *string `json:"next_after" example:"41" extensions:"x-nullable"`
}

// listAudit godoc
//
//	@ID				listAudit
//	@Summary		The audit log
//	@Description	Every administrative change, newest first: segments created, changed and deleted (by a request or at their delete_at), layers created and deleted, imports started and ended, steps of percent schedules. Each is written in the transaction of its change.
//	@Tags			audit
//	@Produce		json
//	@Param			limit	query		int		false	"Page size (1 to 1000)"	default(100)	minimum(1)	maximum(1000)
//	@Param			after	query		string	false	"The previous page's next_after"
//	@Success		200		{object}	AuditList
//	@Failure		400		{object}	Problem	"Bad limit or after"
//	@Router			/audit [get]
func (h *handler) listAudit(w http.ResponseWriter, r *http.Request) {
	h.auditPage(w, r, "")
}

// listSegmentAudit godoc
//
//	@ID				listSegmentAudit
//	@Summary		A segment's audit log
//	@Description	The entries of every segment that has had this slug (it may have been deleted and created again) and of their imports, newest first. An unknown slug has none.
//	@Tags			audit
//	@Produce		json
//	@Param			slug	path		string	true	"Segment slug"
//	@Param			limit	query		int		false	"Page size (1 to 1000)"	default(100)	minimum(1)	maximum(1000)
//	@Param			after	query		string	false	"The previous page's next_after"
//	@Success		200		{object}	AuditList
//	@Failure		400		{object}	Problem	"Bad limit or after"
//	@Router			/segments/{slug}/audit [get]
func (h *handler) listSegmentAudit(w http.ResponseWriter, r *http.Request) {
	h.auditPage(w, r, chi.URLParam(r, "slug"))
}

func (h *handler) auditPage(w http.ResponseWriter, r *http.Request, slug string) {
	q := r.URL.Query()
	limit, err := limitParam(q.Get("limit"))
	if err != nil {
		statusProblem(w, r, http.StatusBadRequest, err.Error())
		return
	}
	// The cursor is the last entry's id; callers pass it back as given.
	var before int64
	if a := q.Get("after"); a != "" {
		if before, err = strconv.ParseInt(a, 10, 64); err != nil || before < 1 {
			statusProblem(w, r, http.StatusBadRequest, "after must be the next_after of a previous page")
			return
		}
	}
	page, err := h.audit.List(r.Context(), slug, before, limit)
	if err != nil {
		respondError(w, r, err)
		return
	}
	out, err := auditListFrom(page)
	if err != nil {
		respondError(w, r, err)
		return
	}
	respond(w, http.StatusOK, out)
}

func auditListFrom(page service.AuditPage) (AuditList, error) {
	out := AuditList{Entries: make([]AuditEntry, 0, len(page.Entries))}
	for _, e := range page.Entries {
		entry := AuditEntry{
			ID: e.ID, At: e.At.UTC(), Actor: nullable(e.Actor), Action: e.Action,
			Target: AuditTarget{Kind: string(e.Kind), Slug: e.Slug},
			Error:  nullable(e.Error), RequestID: nullable(e.RequestID),
		}
		// The database wrote it: an object of {from, to}.
		if err := json.Unmarshal(e.Changes, &entry.Changes); err != nil {
			return AuditList{}, fmt.Errorf("audit entry %d: %w", e.ID, err)
		}
		out.Entries = append(out.Entries, entry)
	}
	if page.NextBefore != 0 {
		next := strconv.FormatInt(page.NextBefore, 10)
		out.NextAfter = &next
	}
	return out, nil
}

// nullable is s, or nil for "".
func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
