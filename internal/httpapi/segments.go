package httpapi

import (
	"context"
	"errors"
	"fmt"
	"math"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

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
	// DeleteAt, if set, schedules the segment's deletion (RFC 3339, in
	// the future).
	DeleteAt *rfc3339Time `json:"delete_at,omitempty" swaggertype:"string" format:"date-time" example:"2030-01-02T15:04:05Z"`
	// Layer, if set, puts the segment in that layer (for good): no user
	// holds two segments of one layer. A percent segment of a layer owns
	// auto_percent × 100 of its buckets, the lowest free.
	Layer string `json:"layer,omitempty" validate:"omitempty,slug" example:"CHECKOUT_EXPERIMENTS"`
	// AutoPercentSchedule, on a percent segment, changes its share at
	// future times, each as a PATCH of auto_percent would (at most 20
	// steps, at strictly increasing and in the future).
	AutoPercentSchedule []ScheduleStepRequest `json:"auto_percent_schedule,omitempty" validate:"max=20,dive"`
}

// ScheduleStepRequest is a step of a percent schedule: at at, the share
// becomes auto_percent.
type ScheduleStepRequest struct {
	At          *stepTime `json:"at" validate:"required" swaggertype:"string" format:"date-time" example:"2030-01-05T09:00:00Z"`
	AutoPercent *float64  `json:"auto_percent" validate:"required,gte=0,lte=100,hundredths" minimum:"0" maximum:"100" format:"double" example:"50"`
}

// ScheduleStep is a step of a percent schedule still to come.
type ScheduleStep struct {
	At          time.Time `json:"at" format:"date-time" example:"2030-01-05T09:00:00Z"`
	AutoPercent float64   `json:"auto_percent" format:"double" example:"50"`
}

// scheduleIn is a request's plan as the domain has it.
func scheduleIn(steps []ScheduleStepRequest) []domain.ScheduleStep {
	out := make([]domain.ScheduleStep, len(steps))
	for i, st := range steps {
		out[i] = domain.ScheduleStep{At: st.At.Time, AutoPercent: domain.Percent(math.Round(*st.AutoPercent * 100))}
	}
	return out
}

// PatchSegmentRequest is the body of PATCH /segments/{slug}, a JSON merge
// patch (RFC 7396): a field left out stays as it is.
type PatchSegmentRequest struct {
	// Description replaces the description; null clears it.
	Description *string `json:"description" validate:"omitnil,max=1000,text" example:"Voice messages in chat and calls" extensions:"x-nullable"`
	// AutoPercent changes a percent segment's share (0 to 100, up to two
	// decimals); not allowed on a manual segment, nor null on a percent one.
	AutoPercent *float64 `json:"auto_percent" validate:"omitnil,gte=0,lte=100,hundredths" minimum:"0" maximum:"100" format:"double" extensions:"x-nullable"`
	// DeleteAt schedules or moves the deletion (RFC 3339, in the
	// future); null cancels it.
	DeleteAt *rfc3339Time `json:"delete_at" swaggertype:"string" format:"date-time" example:"2030-01-02T15:04:05Z" extensions:"x-nullable"`
	// AutoPercentSchedule replaces a percent segment's plan; null or []
	// clears it.
	AutoPercentSchedule []ScheduleStepRequest `json:"auto_percent_schedule" validate:"max=20,dive" extensions:"x-nullable"`
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
	// DeleteAt is when the segment will be deleted; null if never.
	DeleteAt *time.Time `json:"delete_at" format:"date-time" example:"2030-01-02T15:04:05Z" extensions:"x-nullable"`
	// Layer is the slug of the segment's layer; null if it has none.
	Layer *string `json:"layer" example:"CHECKOUT_EXPERIMENTS" extensions:"x-nullable"`
	// AutoPercentSchedule is a percent segment's plan: the steps still to
	// come, in order of time ([] when none).
	AutoPercentSchedule []ScheduleStep `json:"auto_percent_schedule"`
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

// segmentOut is s as a response shows it. A rollout this process answers
// as done for the first time first drops the read cache (see
// readcache.FlushOnce): whoever reads "done" here then reads its users'
// new memberships here.
func (h *handler) segmentOut(ctx context.Context, s domain.Segment) Segment {
	if s.Rollout != nil && s.Rollout.Status == domain.RolloutDone {
		key := "rollout " + strconv.FormatInt(s.Rollout.ID, 10)
		// With a standby, its reads must have the rollout too: the fence
		// goes up to the primary's position first.
		h.syncOnce(ctx, key)
		h.cache.FlushOnce(key)
	}
	return segmentFrom(s)
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
	if s.DeleteAt != nil {
		t := s.DeleteAt.UTC()
		out.DeleteAt = &t
	}
	if s.Layer != "" {
		out.Layer = &s.Layer
	}
	out.AutoPercentSchedule = make([]ScheduleStep, len(s.Schedule))
	for i, st := range s.Schedule {
		out.AutoPercentSchedule[i] = ScheduleStep{At: st.At.UTC(), AutoPercent: st.AutoPercent.Float()}
	}
	return out
}

// createSegment godoc
//
//	@ID				createSegment
//	@Summary		Create a segment
//	@Description	Creates a segment that users can then be added to. The slug is unique among existing segments. With delete_at, the segment is deleted at that time exactly as DELETE does it. With auto_percent, the segment goes to exactly round(N·p/100) of the N users registered now (a background rollout, whose progress GET shows) and to every user registered later whose bucket is below p.
//	@Tags			segments
//	@Accept			json
//	@Produce		json
//	@Param			segment	body		CreateSegmentRequest	true	"The new segment"
//	@Success		201		{object}	Segment					"Created; Location names it"
//	@Header			201		{string}	Location				"/api/v1/segments/{slug}"
//	@Failure		400		{object}	Problem					"Malformed JSON"
//	@Failure		409		{object}	Problem					"The slug is taken, or the layer has too few free buckets (urn:segments:problem:layer-full, free_buckets)"
//	@Failure		413		{object}	Problem					"Body over 1 MiB"
//	@Failure		415		{object}	Problem					"Content-Type is not application/json"
//	@Failure		422		{object}	Problem					"Invalid slug or description, delete_at not in the future, or no such layer"
//	@Router			/segments [post]
func (h *handler) createSegment(w http.ResponseWriter, r *http.Request) {
	var req CreateSegmentRequest
	if !decode(w, r, h.validate, &req) {
		return
	}
	ns := domain.NewSegment{Slug: req.Slug, Description: req.Description, Layer: req.Layer, Schedule: scheduleIn(req.AutoPercentSchedule)}
	if req.DeleteAt != nil {
		ns.DeleteAt = &req.DeleteAt.Time
	}
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
	respond(w, http.StatusCreated, h.segmentOut(r.Context(), seg))
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
		resp.Segments = append(resp.Segments, h.segmentOut(r.Context(), s))
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
	respond(w, http.StatusOK, h.segmentOut(r.Context(), seg))
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

// patchSegment godoc
//
//	@ID				patchSegment
//	@Summary		Change a segment
//	@Description	A JSON merge patch (RFC 7396; application/merge-patch+json or application/json): description replaces the description (null clears it); delete_at schedules or moves the segment's deletion, at which time it is deleted exactly as DELETE does it (null cancels); auto_percent changes a percent segment's share: a new rollout (status pending, then running, done) ends with exactly round(N·q/100) of the N users registered now, less those who removed the segment explicitly, holding it by the rule (the lowest hashes); raising only adds, lowering only takes it from users who got it by the rule; memberships given by hand are never touched; users registered later get it iff their bucket is below q·100. Fields left out stay as they are.
//	@Tags			segments
//	@Accept			json
//	@Produce		json
//	@Param			slug	path		string				true	"Segment slug"
//	@Param			patch	body		PatchSegmentRequest	true	"What changes"
//	@Success		200		{object}	Segment
//	@Failure		400		{object}	Problem	"Malformed JSON"
//	@Failure		404		{object}	Problem	"No such segment"
//	@Failure		413		{object}	Problem	"Body over 1 MiB"
//	@Failure		415		{object}	Problem	"Content-Type is not application/merge-patch+json or application/json"
//	@Failure		409		{object}	Problem	"A raise in a layer with too few free buckets (urn:segments:problem:layer-full, free_buckets)"
//	@Failure		422		{object}	Problem	"A bad value, delete_at not in the future, auto_percent on a manual segment or null on a percent one, layer (fixed at creation)"
//	@Router			/segments/{slug} [patch]
func (h *handler) patchSegment(w http.ResponseWriter, r *http.Request) {
	// A merge patch tells a null (clear) from a field left out (keep): the
	// fields are read raw first.
	var raw struct {
		Description jsontext.Value `json:"description"`
		AutoPercent jsontext.Value `json:"auto_percent"`
		DeleteAt    jsontext.Value `json:"delete_at"`
		Schedule    jsontext.Value `json:"auto_percent_schedule"`
		// Layer is named so that it is refused as a rule (422), not as an
		// unknown field.
		Layer jsontext.Value `json:"layer"`
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err == nil && mt == "application/merge-patch+json" {
		r.Header.Set("Content-Type", "application/json")
	}
	if !decode(w, r, h.validate, &raw) {
		return
	}
	if raw.Layer != nil {
		respondError(w, r, domain.Invalid("a segment's layer is fixed when it is created",
			domain.FieldError{Field: "/layer", Message: "cannot be changed"}))
		return
	}
	var req PatchSegmentRequest
	p := domain.SegmentPatch{}
	for _, f := range []struct {
		name string
		raw  jsontext.Value
		dst  any
		null func()
	}{
		{"description", raw.Description, &req.Description, func() { empty := ""; p.Description = &empty }},
		{"auto_percent", raw.AutoPercent, &req.AutoPercent, func() { p.AutoPercentNull = true }},
		{"delete_at", raw.DeleteAt, &req.DeleteAt, func() { p.CancelDeletion = true }},
		{"auto_percent_schedule", raw.Schedule, &req.AutoPercentSchedule, func() { p.SetSchedule = true }},
	} {
		switch {
		case f.raw == nil:
		case string(f.raw) == "null":
			f.null()
		default:
			if err := json.Unmarshal(f.raw, f.dst, strictJSON); err != nil {
				var fe *fieldDecodeError
				detail := fmt.Sprintf("field %q has the wrong type: %s", f.name, f.raw)
				if errors.As(err, &fe) {
					detail = fe.Error()
				}
				writeProblem(w, r, Problem{Type: typeMalformed, Title: "Request body is malformed", Status: http.StatusBadRequest, Detail: detail})
				return
			}
		}
	}
	if err := validate(h.validate, &req); err != nil {
		respondError(w, r, err)
		return
	}
	if req.Description != nil {
		p.Description = req.Description
	}
	if req.AutoPercent != nil {
		v := domain.Percent(math.Round(*req.AutoPercent * 100))
		p.AutoPercent = &v
	}
	if req.DeleteAt != nil {
		p.DeleteAt = &req.DeleteAt.Time
	}
	if raw.Schedule != nil {
		p.SetSchedule, p.Schedule = true, scheduleIn(req.AutoPercentSchedule)
	}
	seg, err := h.segments.Patch(r.Context(), chi.URLParam(r, "slug"), p)
	if err != nil {
		respondError(w, r, err)
		return
	}
	respond(w, http.StatusOK, h.segmentOut(r.Context(), seg))
}
