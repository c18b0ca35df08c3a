package httpapi

import (
	"math"
	"net/http"
	"net/url"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/segments-service/segments/internal/aftercommit"
	"github.com/segments-service/segments/internal/domain"
)

// CreateSegmentRequest is the body of POST /segments.
type CreateSegmentRequest struct {
	Slug        string `json:"slug" validate:"required,slug" example:"AVITO_VOICE_MESSAGES"`
	Description string `json:"description" validate:"max=1000,text" example:"Voice messages in chat"`
	// AutoPercent makes a percent segment: this share of users (0 to 100,
	// up to two decimals) gets it automatically.
	AutoPercent *float64 `json:"auto_percent,omitempty" validate:"omitnil,gte=0,lte=100,hundredths" minimum:"0" maximum:"100" format:"double" example:"30"`
}

// Segment is a segment as the API shows it.
type Segment struct {
	Slug        string    `json:"slug" example:"AVITO_VOICE_MESSAGES"`
	Description string    `json:"description" example:"Voice messages in chat"`
	AutoPercent *float64  `json:"auto_percent" format:"double" extensions:"x-nullable"`
	CreatedAt   time.Time `json:"created_at" format:"date-time" example:"2026-11-22T08:00:00Z"`
	// MemberCount counts active (unexpired) memberships.
	MemberCount int64 `json:"member_count" example:"1200"`
	// Rollout is null for a manual segment.
	Rollout *Rollout `json:"rollout" extensions:"x-nullable"`
}

// Rollout is the progress of a percent segment's background assignment.
type Rollout struct {
	Status   string `json:"status" enums:"pending,running,done,failed" example:"done"`
	Assigned int64  `json:"assigned" example:"500"`
	Total    int64  `json:"total" example:"500"`
}

// SegmentList is one page of segments.
type SegmentList struct {
	Segments []Segment `json:"segments"`
	// NextAfter is the after= cursor of the next page; null on the last.
	NextAfter *string `json:"next_after" example:"AVITO_VOICE_MESSAGES" extensions:"x-nullable"`
}

func segmentFrom(s domain.Segment) Segment {
	out := Segment{
		Slug:        s.Slug,
		Description: s.Description,
		CreatedAt:   s.CreatedAt.UTC(),
		MemberCount: s.MemberCount,
	}
	if s.AutoPercent != nil {
		p := s.AutoPercent.Float()
		out.AutoPercent = &p
	}
	if s.Rollout != nil {
		out.Rollout = &Rollout{Status: string(s.Rollout.Status), Assigned: s.Rollout.Assigned, Total: s.Rollout.Total}
	}
	return out
}

// createSegment godoc
//
//	@ID				createSegment
//	@Summary		Create a segment
//	@Description	Creates a segment that users can then be added to. The slug is unique among existing segments. With auto_percent, the segment goes to exactly round(N·p/100) of the N users registered now (a background rollout, whose progress GET shows) and to every user registered later whose bucket is below p.
//	@Tags			segments
//	@Accept			json
//	@Produce		json
//	@Param			segment	body		CreateSegmentRequest	true	"The new segment"
//	@Success		201		{object}	Segment					"Created; Location names it"
//	@Header			201		{string}	Location				"/api/v1/segments/{slug}"
//	@Failure		400		{object}	Problem					"Malformed JSON"
//	@Failure		409		{object}	Problem					"The slug is taken"
//	@Failure		413		{object}	Problem					"Body over 1 MiB"
//	@Failure		415		{object}	Problem					"Content-Type is not application/json"
//	@Failure		422		{object}	Problem					"Invalid slug or description"
//	@Router			/segments [post]
func (h *handler) createSegment(w http.ResponseWriter, r *http.Request) {
	var req CreateSegmentRequest
	if !decode(w, r, h.validate, &req) {
		return
	}
	ns := domain.NewSegment{Slug: req.Slug, Description: req.Description}
	if req.AutoPercent != nil {
		p := domain.Percent(math.Round(*req.AutoPercent * 100))
		ns.AutoPercent = &p
	}
	seg, err := h.segments.Create(r.Context(), ns)
	if err != nil {
		respondError(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/segments/"+url.PathEscape(seg.Slug))
	respond(w, http.StatusCreated, segmentFrom(seg))
}

// listSegments godoc
//
//	@ID				listSegments
//	@Summary		List segments
//	@Description	Lists segments in byte order of slug, a page at a time. Pass the previous page's next_after as after.
//	@Tags			segments
//	@Produce		json
//	@Param			limit	query		int		false	"Page size (1 to 1000)"	default(100)	minimum(1)	maximum(1000)
//	@Param			after	query		string	false	"Return segments whose slug sorts after this one"
//	@Success		200		{object}	SegmentList
//	@Failure		400		{object}	Problem	"Bad limit"
//	@Router			/segments [get]
func (h *handler) listSegments(w http.ResponseWriter, r *http.Request) {
	limit, err := limitParam(r.URL.Query().Get("limit"))
	if err != nil {
		statusProblem(w, r, http.StatusBadRequest, err.Error())
		return
	}
	page, err := h.segments.List(r.Context(), r.URL.Query().Get("after"), limit)
	if err != nil {
		respondError(w, r, err)
		return
	}
	resp := SegmentList{Segments: make([]Segment, 0, len(page.Segments))}
	for _, s := range page.Segments {
		resp.Segments = append(resp.Segments, segmentFrom(s))
	}
	if page.NextAfter != "" {
		resp.NextAfter = &page.NextAfter
	}
	respond(w, http.StatusOK, resp)
}

// getSegment godoc
//
//	@ID			getSegment
//	@Summary	Get a segment
//	@Tags		segments
//	@Produce	json
//	@Param		slug	path		string	true	"Segment slug"
//	@Success	200		{object}	Segment
//	@Failure	404		{object}	Problem	"No such segment"
//	@Router		/segments/{slug} [get]
func (h *handler) getSegment(w http.ResponseWriter, r *http.Request) {
	seg, err := h.segments.Get(r.Context(), chi.URLParam(r, "slug"))
	if err != nil {
		respondError(w, r, err)
		return
	}
	respond(w, http.StatusOK, segmentFrom(seg))
}

// deleteSegment godoc
//
//	@ID				deleteSegment
//	@Summary		Delete a segment
//	@Description	Deletes the segment; every member loses it (history reason segment_deleted). The slug can be used again for a new segment.
//	@Tags			segments
//	@Produce		json
//	@Param			slug	path	string	true	"Segment slug"
//	@Success		204		"Deleted"
//	@Failure		404		{object}	Problem	"No such segment"
//	@Router			/segments/{slug} [delete]
func (h *handler) deleteSegment(w http.ResponseWriter, r *http.Request) {
	err := h.segments.Delete(r.Context(), chi.URLParam(r, "slug"))
	// Which users held the segment is not known here; this replica drops
	// everything before it answers (the others hear of each user).
	aftercommit.Do(r.Context(), func() { h.cache.InvalidateAll("local") })
	if err != nil {
		respondError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
