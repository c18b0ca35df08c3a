package httpapi

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/segments-service/segments/internal/aftercommit"
	"github.com/segments-service/segments/internal/auth"
	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/readcache"
)

// RegisterUsersRequest is the body of POST /users.
type RegisterUsersRequest struct {
	UserIDs []int64 `json:"user_ids" validate:"required,min=1,max=10000,dive,gt=0" example:"1000,1001,1002"`
}

// RegisterUsersResponse says how many of the ids were new.
type RegisterUsersResponse struct {
	Registered int64 `json:"registered" example:"2"`
}

// ChangeSegmentsRequest is the body of POST /users/{user_id}/segments.
// ttl_seconds and expires_at are alternatives; either applies to the added
// segments, none makes them permanent.
type ChangeSegmentsRequest struct {
	Add        []string    `json:"add" validate:"max=1000,dive,slug" example:"AVITO_VOICE_MESSAGES,AVITO_DISCOUNT_30"`
	Remove     []string    `json:"remove" validate:"max=1000,dive,slug" example:"AVITO_PERFORMANCE_VAS"`
	TTLSeconds *int64      `json:"ttl_seconds,omitempty" validate:"omitnil,gte=1,lte=3153600000" example:"172800"`
	ExpiresAt  *expiryTime `json:"expires_at,omitempty" swaggertype:"string" format:"date-time" example:"2030-01-02T15:04:05Z"`
}

// Membership is one segment a user holds.
type Membership struct {
	Slug    string    `json:"slug" example:"AVITO_VOICE_MESSAGES"`
	AddedAt time.Time `json:"added_at" format:"date-time" example:"2026-11-22T08:00:00Z"`
	// ExpiresAt is null for a permanent membership.
	ExpiresAt *time.Time `json:"expires_at" format:"date-time" example:"2026-11-24T08:00:00Z" extensions:"x-nullable"`
	Source    string     `json:"source" enums:"manual,auto" example:"manual"`
}

// UserSegments is a user's active segments, sorted by slug.
type UserSegments struct {
	UserID   int64        `json:"user_id" example:"1000"`
	Segments []Membership `json:"segments"`
}

// ChangeSegmentsResponse reports what a change did and the user's segments
// after it.
type ChangeSegmentsResponse struct {
	UserID int64 `json:"user_id" example:"1000"`
	// Added lists the segments that appeared or whose expiry changed.
	Added []string `json:"added" example:"AVITO_VOICE_MESSAGES"`
	// Removed lists the segments the user held and no longer holds.
	Removed  []string     `json:"removed" example:"AVITO_PERFORMANCE_VAS"`
	Segments []Membership `json:"segments"`
}

func membershipsFrom(ms []domain.Membership) []Membership {
	out := make([]Membership, len(ms))
	for i, m := range ms {
		out[i] = Membership{Slug: m.Slug, AddedAt: m.AddedAt.UTC(), Source: string(m.Source)}
		if m.ExpiresAt != nil {
			t := m.ExpiresAt.UTC()
			out[i].ExpiresAt = &t
		}
	}
	return out
}

// registerUsers godoc
//
//	@ID				registerUsers
//	@Summary		Register users in bulk
//	@Description	Adds up to 10,000 user ids to the population that percent segments draw from. Idempotent: known ids are skipped.
//	@Tags			users
//	@Accept			json
//	@Produce		json
//	@Param			users	body		RegisterUsersRequest	true	"Ids to register"
//	@Success		200		{object}	RegisterUsersResponse
//	@Failure		400		{object}	Problem	"Malformed JSON"
//	@Failure		413		{object}	Problem	"Body over 1 MiB"
//	@Failure		415		{object}	Problem	"Content-Type is not application/json"
//	@Failure		422		{object}	Problem	"No ids, more than 10,000, or an id below 1"
//	@Router			/users [post]
func (h *handler) registerUsers(w http.ResponseWriter, r *http.Request) {
	var req RegisterUsersRequest
	if !decode(w, r, h.validate, &req) {
		return
	}
	n, err := h.users.Register(r.Context(), req.UserIDs)
	aftercommit.Do(r.Context(), func() { h.cache.Invalidate("local", req.UserIDs...) })
	if err != nil {
		respondError(w, r, err)
		return
	}
	respond(w, http.StatusOK, RegisterUsersResponse{Registered: n})
}

// userSegments godoc
//
//	@ID				getUserSegments
//	@Summary		Get a user's segments
//	@Description	Returns the user's active segments sorted by slug (byte order); never an expired one. An unknown user is registered by this call. With at, the answer this call gave (or would have given) at that instant, from history, added_at, expires_at and source included; the user is not registered then.
//	@Tags			users
//	@Produce		json
//	@Param			user_id	path		int		true	"User id (1 to 2^63-1)"							minimum(1)	format(int64)
//	@Param			at		query		string	false	"A past instant (RFC 3339), not in the future"	format(date-time)
//	@Success		200		{object}	UserSegments
//	@Header			200		{string}	Cache-Status	"Whether the answer came from the read cache (RFC 9211): segments; hit, or segments; fwd=miss|stale|bypass"
//	@Failure		400		{object}	Problem			"Bad user id"
//	@Failure		422		{object}	Problem			"at is not an RFC 3339 time, or is in the future"
//	@Router			/users/{user_id}/segments [get]
func (h *handler) userSegments(w http.ResponseWriter, r *http.Request) {
	id, ok := userID(w, r)
	if !ok {
		return
	}
	if r.URL.Query().Has("at") {
		h.userSegmentsAt(w, r, id)
		return
	}
	// Memberships are read onto the stack for a user of up to 16 segments.
	var buf [16]readcache.Membership
	cached, ticket, status := h.cache.Get(id, buf[:0])
	w.Header().Set("Cache-Status", status.CacheStatus())
	if status != readcache.Hit {
		ms, registered, err := h.users.Segments(r.Context(), id, h.readRegisters(r.Context()))
		if err != nil {
			respondError(w, r, err)
			return
		}
		cached = cacheForm(buf[:0], ms)
		// An unknown user's answer is not kept: the next read that may
		// register the user must reach the database.
		if registered {
			h.cache.Fill(id, ticket, cached)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	body := bodies.Get().(*[]byte)
	*body = appendUserSegments((*body)[:0], id, cached)
	_, _ = w.Write(*body)
	if cap(*body) <= 64<<10 {
		bodies.Put(body)
	}
}

// bodies are the buffers reads encode their answers into.
var bodies = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// cacheForm appends ms to into as the read cache keeps memberships.
func cacheForm(into []readcache.Membership, ms []domain.Membership) []readcache.Membership {
	for _, m := range ms {
		c := readcache.Membership{SegmentID: m.SegmentID, Slug: m.Slug, AddedAt: m.AddedAt.UnixMicro(), Auto: m.Source == domain.SourceAuto}
		if m.ExpiresAt != nil {
			c.ExpiresAt = m.ExpiresAt.UnixMicro()
		}
		into = append(into, c)
	}
	return into
}

// readRegisters says whether this read may register an unknown user, by
// the READS_REGISTER_USERS policy: always, never, or (write-scope) when
// the caller may write — every caller with authentication off.
func (h *handler) readRegisters(ctx context.Context) bool {
	switch h.readsRegister {
	case ReadsRegisterAlways:
		return true
	case ReadsRegisterNever:
		return false
	}
	c, on := verifiedCaller(ctx)
	return !on || c.Has(auth.ScopeWrite)
}

// userSegmentsAt answers GET /users/{id}/segments?at=T from history; the
// read cache has no part in it.
func (h *handler) userSegmentsAt(w http.ResponseWriter, r *http.Request, id int64) {
	raw := r.URL.Query().Get("at")
	at, err := time.Parse(time.RFC3339Nano, raw)
	if err != nil {
		respondError(w, r, domain.Invalid("at must be an RFC 3339 time such as 2026-11-01T12:00:00Z, not "+strconv.Quote(raw),
			domain.FieldError{Field: "/at", Message: "must be an RFC 3339 time"}))
		return
	}
	ms, err := h.users.SegmentsAt(r.Context(), id, at)
	if err != nil {
		respondError(w, r, err)
		return
	}
	w.Header().Set("Cache-Status", `segments; fwd=bypass; detail="at"`)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(appendUserSegments(nil, id, cacheForm(nil, ms)))
}

// changeUserSegments godoc
//
//	@ID				changeUserSegments
//	@Summary		Add and remove a user's segments
//	@Description	Applies add and remove atomically: all or nothing. Adding a held segment keeps its added_at and sets its expiry (none = permanent); removing one the user lacks is a no-op. Unknown slugs change nothing and are all listed.
//	@Tags			users
//	@Accept			json
//	@Produce		json
//	@Param			user_id	path		int						true	"User id (1 to 2^63-1)"	minimum(1)	format(int64)
//	@Param			change	body		ChangeSegmentsRequest	true	"Segments to add and remove"
//	@Success		200		{object}	ChangeSegmentsResponse
//	@Failure		400		{object}	Problem	"Bad user id or malformed JSON"
//	@Failure		404		{object}	Problem	"Unknown segments, listed in unknown_slugs"
//	@Failure		409		{object}	Problem	"A segment added shares a layer with one the user holds and keeps, or with another added (urn:segments:problem:layer-conflict, conflicts)"
//	@Failure		413		{object}	Problem	"Body over 1 MiB"
//	@Failure		415		{object}	Problem	"Content-Type is not application/json"
//	@Failure		422		{object}	Problem	"Bad slug, slug in both lists, both expiry forms, expiry not in the future, nothing to change, more than 1,000 slugs"
//	@Router			/users/{user_id}/segments [post]
func (h *handler) changeUserSegments(w http.ResponseWriter, r *http.Request) {
	id, ok := userID(w, r)
	if !ok {
		return
	}
	var req ChangeSegmentsRequest
	if !decode(w, r, h.validate, &req) {
		return
	}
	change := domain.SegmentChange{UserID: id, Add: req.Add, Remove: req.Remove}
	if req.TTLSeconds != nil {
		change.TTL = time.Duration(*req.TTLSeconds) * time.Second
	}
	if req.ExpiresAt != nil {
		change.ExpiresAt = &req.ExpiresAt.Time
	}
	res, err := h.users.ChangeSegments(r.Context(), change)
	// Read your writes: this replica forgets the user before answering
	// (also on an error, which may come after the commit), once the
	// change has committed (see aftercommit).
	aftercommit.Do(r.Context(), func() { h.cache.Invalidate("local", id) })
	if err != nil {
		respondError(w, r, err)
		return
	}
	respond(w, http.StatusOK, ChangeSegmentsResponse{
		UserID:   res.UserID,
		Added:    res.Added,
		Removed:  res.Removed,
		Segments: membershipsFrom(res.Segments),
	})
}

// HistoryEvent is one membership that appeared or disappeared.
type HistoryEvent struct {
	Segment   string    `json:"segment" example:"AVITO_VOICE_MESSAGES"`
	Operation string    `json:"operation" enums:"add,remove" example:"add"`
	Reason    string    `json:"reason" enums:"manual,ttl,auto,segment_deleted,import" example:"manual"`
	At        time.Time `json:"at" format:"date-time" example:"2023-08-01T12:00:00Z"`
}

// UserHistory is one page of a user's history, in time order.
type UserHistory struct {
	UserID int64          `json:"user_id" example:"1000"`
	Events []HistoryEvent `json:"events"`
	// NextAfter is the after= cursor of the next page; null on the last.
	NextAfter *string `json:"next_after" extensions:"x-nullable"`
}

// userHistory godoc
//
//	@ID				getUserHistory
//	@Summary		Get a user's history
//	@Description	The same events as the CSV report, as JSON, in time order, a page at a time. Pass the previous page's next_after as after.
//	@Tags			users
//	@Produce		json
//	@Param			user_id	path		int		true	"User id (1 to 2^63-1)"						minimum(1)	format(int64)
//	@Param			from	query		string	false	"Events at or after this time (RFC 3339)"	format(date-time)
//	@Param			to		query		string	false	"Events before this time (RFC 3339)"		format(date-time)
//	@Param			limit	query		int		false	"Page size (1 to 1000)"						default(100)	minimum(1)	maximum(1000)
//	@Param			after	query		string	false	"Cursor from the previous page"
//	@Success		200		{object}	UserHistory
//	@Failure		400		{object}	Problem	"Bad user id or query parameter"
//	@Router			/users/{user_id}/history [get]
func (h *handler) userHistory(w http.ResponseWriter, r *http.Request) {
	id, ok := userID(w, r)
	if !ok {
		return
	}
	query := r.URL.Query()
	from, err1 := timeParam(query.Get("from"), time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC))
	to, err2 := timeParam(query.Get("to"), time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC))
	limit, err3 := limitParam(query.Get("limit"))
	var after domain.HistoryCursor
	var err4 error
	if s := query.Get("after"); s != "" {
		after, err4 = domain.ParseHistoryCursor(s)
	}
	for _, err := range []error{err1, err2, err3, err4} {
		if err != nil {
			statusProblem(w, r, http.StatusBadRequest, err.Error())
			return
		}
	}
	if !from.Before(to) {
		statusProblem(w, r, http.StatusBadRequest, "from must be before to")
		return
	}
	page, err := h.reports.UserHistory(r.Context(), id, from, to, after, limit)
	if err != nil {
		respondError(w, r, err)
		return
	}
	resp := UserHistory{UserID: id, Events: make([]HistoryEvent, len(page.Events))}
	for i, e := range page.Events {
		resp.Events[i] = HistoryEvent{Segment: e.Slug, Operation: string(e.Operation), Reason: string(e.Reason), At: e.At.UTC()}
	}
	if page.Next != nil {
		s := page.Next.String()
		resp.NextAfter = &s
	}
	respond(w, http.StatusOK, resp)
}
