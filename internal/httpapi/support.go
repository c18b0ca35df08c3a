package httpapi

import (
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
)

// Explanation is why a user is or is not in a segment.
type Explanation struct {
	UserID int64  `json:"user_id" example:"1000"`
	Slug   string `json:"slug" example:"AVITO_VOICE_MESSAGES"`
	// Member says whether the user holds the segment now.
	Member bool `json:"member" example:"true"`
	// Membership is the active membership; null if none.
	Membership *ExplainedMembership `json:"membership" extensions:"x-nullable"`
	// Bucket is segment_bucket(slug, user_id), 0 to 9999 (README, "Percent segments").
	Bucket int `json:"bucket" example:"4483"`
	// AutoPercent is the segment's share; null for a manual segment.
	AutoPercent *float64 `json:"auto_percent" format:"double" example:"50" extensions:"x-nullable"`
	// PercentRule is the percent rule's verdict for a percent segment:
	// bucket < auto_percent·100, or in a layer the layer bucket in the
	// segment's buckets; null for a manual one.
	PercentRule *bool `json:"percent_rule" example:"true" extensions:"x-nullable"`
	// Layer is the segment's layer, the user's bucket in it and the
	// segment's buckets; null for a segment of no layer.
	Layer *ExplainedLayer `json:"layer" extensions:"x-nullable"`
	// Events are the user's last (at most 100) events in the segment,
	// oldest first.
	Events []ExplainedEvent `json:"events"`
}

// ExplainedLayer is a segment's layer as explain shows it.
type ExplainedLayer struct {
	Slug string `json:"slug" example:"CHECKOUT_EXPERIMENTS"`
	// Bucket is layer_bucket(layer, user_id), 0 to 9999.
	Bucket int `json:"bucket" example:"2711"`
	// Ranges are the buckets the segment owns ([from, to] pairs, to
	// excluded); none for a manual segment.
	Ranges []BucketRange `json:"ranges" swaggertype:"array,array,integer"`
}

// ExplainedMembership is a user's active membership in one segment.
type ExplainedMembership struct {
	AddedAt time.Time `json:"added_at" format:"date-time" example:"2026-11-22T08:00:00Z"`
	// ExpiresAt is null for a permanent membership.
	ExpiresAt *time.Time `json:"expires_at" format:"date-time" example:"2026-11-24T08:00:00Z" extensions:"x-nullable"`
	Source    string     `json:"source" enums:"manual,auto" example:"manual"`
}

// ExplainedEvent is one history event of a user in a segment.
type ExplainedEvent struct {
	Operation string    `json:"operation" enums:"add,remove" example:"add"`
	Reason    string    `json:"reason" enums:"manual,ttl,auto,segment_deleted,import" example:"manual"`
	At        time.Time `json:"at" format:"date-time" example:"2026-11-22T08:00:00Z"`
}

// explainMembership godoc
//
//	@ID				explainMembership
//	@Summary		Why a user is or is not in a segment
//	@Description	The user's active membership (if any), the user's bucket for the segment and the percent rule's verdict (for a percent segment: bucket < auto_percent·100; in a layer: the user's layer bucket in the segment's buckets), the segment's layer (null if none), and the user's last 100 events in the segment, oldest first. It does not register the user.
//	@Tags			users
//	@Produce		json
//	@Param			user_id	path		int		true	"User id (1 to 2^63-1)"	minimum(1)	format(int64)
//	@Param			slug	path		string	true	"Segment slug"
//	@Success		200		{object}	Explanation
//	@Failure		400		{object}	Problem	"Bad user id"
//	@Failure		404		{object}	Problem	"No such segment"
//	@Router			/users/{user_id}/segments/{slug} [get]
func (h *handler) explainMembership(w http.ResponseWriter, r *http.Request) {
	id, ok := userID(w, r)
	if !ok {
		return
	}
	slug := chi.URLParam(r, "slug")
	e, err := h.segments.Explain(r.Context(), id, slug)
	if err != nil {
		respondError(w, r, err)
		return
	}
	out := Explanation{UserID: id, Slug: slug, Bucket: e.Bucket, Events: make([]ExplainedEvent, 0, len(e.Events))}
	if m := e.Membership; m != nil {
		out.Member = true
		out.Membership = &ExplainedMembership{AddedAt: m.AddedAt.UTC(), Source: string(m.Source)}
		if m.ExpiresAt != nil {
			t := m.ExpiresAt.UTC()
			out.Membership.ExpiresAt = &t
		}
	}
	if e.AutoPercent != nil {
		p, rule := e.AutoPercent.Float(), e.Bucket < int(*e.AutoPercent)
		if e.Layer != nil {
			rule = e.Layer.Ranges.Contains(e.Layer.Bucket)
		}
		out.AutoPercent, out.PercentRule = &p, &rule
	}
	if l := e.Layer; l != nil {
		out.Layer = &ExplainedLayer{Slug: l.Slug, Bucket: l.Bucket, Ranges: rangesOut(l.Ranges)}
	}
	for _, ev := range e.Events {
		out.Events = append(out.Events, ExplainedEvent{Operation: string(ev.Operation), Reason: string(ev.Reason), At: ev.At.UTC()})
	}
	respond(w, http.StatusOK, out)
}

// MemberList is one page of a segment's members.
type MemberList struct {
	Slug    string          `json:"slug" example:"AVITO_VOICE_MESSAGES"`
	Members []SegmentMember `json:"members"`
	// NextAfter is the after= cursor of the next page (the last user id);
	// null on the last page.
	NextAfter *int64 `json:"next_after" format:"int64" example:"1000" extensions:"x-nullable"`
}

// SegmentMember is an active member of a segment.
type SegmentMember struct {
	UserID  int64     `json:"user_id" example:"1000"`
	AddedAt time.Time `json:"added_at" format:"date-time" example:"2026-11-22T08:00:00Z"`
	// ExpiresAt is null for a permanent membership.
	ExpiresAt *time.Time `json:"expires_at" format:"date-time" example:"2026-11-24T08:00:00Z" extensions:"x-nullable"`
	Source    string     `json:"source" enums:"manual,auto" example:"manual"`
}

// listMembers godoc
//
//	@ID				listMembers
//	@Summary		List a segment's members
//	@Description	Active members in user id order, a page at a time. Pass the previous page's next_after as after: every user who stays a member while the pages are read appears exactly once.
//	@Tags			segments
//	@Produce		json
//	@Param			slug	path		string	true	"Segment slug"
//	@Param			limit	query		int		false	"Page size (1 to 1000)"								default(100)	minimum(1)	maximum(1000)
//	@Param			after	query		int		false	"Return members whose user id is above this one"	minimum(0)		format(int64)
//	@Success		200		{object}	MemberList
//	@Failure		400		{object}	Problem	"Bad limit or after"
//	@Failure		404		{object}	Problem	"No such segment"
//	@Router			/segments/{slug}/members [get]
func (h *handler) listMembers(w http.ResponseWriter, r *http.Request) {
	limit, err := limitParam(r.URL.Query().Get("limit"))
	if err != nil {
		statusProblem(w, r, http.StatusBadRequest, err.Error())
		return
	}
	var after int64
	if s := r.URL.Query().Get("after"); s != "" {
		if after, err = strconv.ParseInt(s, 10, 64); err != nil || after < 0 {
			statusProblem(w, r, http.StatusBadRequest, "after must be a user id (a whole number from 0 to 9223372036854775807), not "+strconv.Quote(s))
			return
		}
	}
	slug := chi.URLParam(r, "slug")
	page, err := h.segments.Members(r.Context(), slug, after, limit)
	if err != nil {
		respondError(w, r, err)
		return
	}
	out := MemberList{Slug: slug, Members: make([]SegmentMember, 0, len(page.Members))}
	for _, m := range page.Members {
		sm := SegmentMember{UserID: m.UserID, AddedAt: m.AddedAt.UTC(), Source: string(m.Source)}
		if m.ExpiresAt != nil {
			t := m.ExpiresAt.UTC()
			sm.ExpiresAt = &t
		}
		out.Members = append(out.Members, sm)
	}
	if page.NextAfter != 0 {
		out.NextAfter = &page.NextAfter
	}
	respond(w, http.StatusOK, out)
}
