package httpapi

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"

	"segments/internal/domain"
	"segments/internal/service"
)

// ReportRequest is the body of POST /reports/history.
type ReportRequest struct {
	// Period is the month, UTC, as YYYY-MM.
	Period string `json:"period" validate:"required,period" example:"2023-08"`
	// UserID limits the report to one user; without it the report covers
	// all users.
	UserID *int64 `json:"user_id,omitempty" validate:"omitnil,gt=0" example:"1000"`
}

// ReportLink is a signed link to a CSV report.
type ReportLink struct {
	URL       string    `json:"url" example:"http://127.0.0.1:8080/api/v1/reports/history/djEuMjAyMy0wOC4xMDAwLjE3NjQwMDAwMDA.3q2-7w"`
	ExpiresAt time.Time `json:"expires_at" example:"2026-11-23T09:00:00Z"`
}

// HistoryEvent is one membership that appeared or disappeared.
type HistoryEvent struct {
	Segment   string    `json:"segment" example:"AVITO_VOICE_MESSAGES"`
	Operation string    `json:"operation" enums:"add,remove" example:"add"`
	Reason    string    `json:"reason" enums:"manual,ttl,auto,segment_deleted" example:"manual"`
	At        time.Time `json:"at" example:"2023-08-01T12:00:00Z"`
}

// UserHistory is one page of a user's history, in time order.
type UserHistory struct {
	UserID int64          `json:"user_id" example:"1000"`
	Events []HistoryEvent `json:"events"`
	// NextAfter is the after= cursor of the next page; null on the last.
	NextAfter *string `json:"next_after" extensions:"x-nullable"`
}

// createReport godoc
//
//	@ID				createHistoryReport
//	@Summary		Get a link to a month's history as CSV
//	@Description	Returns a signed link to the CSV history of one month (UTC), of one user or of all users. The link works on any replica until expires_at; nothing is stored.
//	@Tags			reports
//	@Accept			json
//	@Produce		json
//	@Param			report	body		ReportRequest	true	"Which history"
//	@Success		201		{object}	ReportLink
//	@Header			201		{string}	Location	"the report's URL"
//	@Failure		400		{object}	Problem		"Malformed JSON"
//	@Failure		415		{object}	Problem		"Content-Type is not application/json"
//	@Failure		422		{object}	Problem		"Bad period or user_id"
//	@Router			/reports/history [post]
func (h *handler) createReport(w http.ResponseWriter, r *http.Request) {
	var req ReportRequest
	if !decode(w, r, h.validate, &req) {
		return
	}
	period, _ := domain.ParsePeriod(req.Period) // validated
	q := domain.HistoryQuery{Period: period}
	if req.UserID != nil {
		q.UserID = *req.UserID
	}
	token, expiresAt := h.reports.Link(q)
	link := h.baseURL(r) + "/api/v1/reports/history/" + url.PathEscape(token)
	w.Header().Set("Location", link)
	respond(w, http.StatusCreated, ReportLink{URL: link, ExpiresAt: expiresAt})
}

// baseURL is the configured public URL, or the scheme and host the request
// came to.
func (h *handler) baseURL(r *http.Request) string {
	if h.publicURL != "" {
		return h.publicURL
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// downloadReport godoc
//
//	@ID				downloadHistoryReport
//	@Summary		Download a history report
//	@Description	Streams the CSV named by a signed link: header user_id;segment;operation;datetime;reason, then one line per event in time order, times in RFC 3339 UTC.
//	@Tags			reports
//	@Produce		text/csv
//	@Produce		json
//	@Param			token	path		string	true	"The token from the link"
//	@Success		200		{string}	string	"user_id;segment;operation;datetime;reason"
//	@Failure		403		{object}	Problem	"Tampered, truncated or expired link"
//	@Router			/reports/history/{token} [get]
func (h *handler) downloadReport(w http.ResponseWriter, r *http.Request) {
	q, err := h.reports.Open(chi.URLParam(r, "token"))
	if err != nil {
		respondError(w, r, err)
		return
	}
	name := "segments-history-" + q.Period.String()
	if q.UserID != 0 {
		name += "-user-" + strconv.FormatInt(q.UserID, 10)
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+`.csv"`)
	w.Header().Set("Cache-Control", "private, no-store")
	cw := &countingWriter{w: w}
	if err := h.reports.WriteCSV(r.Context(), q, cw); err != nil {
		if cw.n == 0 {
			w.Header().Del("Content-Disposition")
			respondError(w, r, err)
			return
		}
		// Headers and part of the file are out: cut the connection so that
		// the client sees a broken download, not a short file.
		loggerFrom(r.Context()).Error("report stream failed", zap.Int64("bytes_sent", cw.n), zap.Error(err))
		panic(http.ErrAbortHandler)
	}
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// userHistory godoc
//
//	@ID				getUserHistory
//	@Summary		Get a user's history
//	@Description	The same events as the CSV report, as JSON, in time order, a page at a time. Pass the previous page's next_after as after.
//	@Tags			users
//	@Produce		json
//	@Param			user_id	path		int		true	"User id (1 to 2^63-1)"	minimum(1)
//	@Param			from	query		string	false	"Events at or after this time (RFC 3339)"
//	@Param			to		query		string	false	"Events before this time (RFC 3339)"
//	@Param			limit	query		int		false	"Page size (1 to 1000)"	default(100)	minimum(1)	maximum(1000)
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
	var after service.HistoryCursor
	var err4 error
	if s := query.Get("after"); s != "" {
		after, err4 = service.ParseHistoryCursor(s)
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
		resp.Events[i] = HistoryEvent{Segment: e.Slug, Operation: e.Operation, Reason: e.Reason, At: e.At.UTC()}
	}
	if page.Next != nil {
		s := page.Next.String()
		resp.NextAfter = &s
	}
	respond(w, http.StatusOK, resp)
}

func timeParam(s string, def time.Time) (time.Time, error) {
	if s == "" {
		return def, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return t, fmt.Errorf("%q is not an RFC 3339 time such as 2023-08-01T00:00:00Z", s)
	}
	return t, nil
}

// limitParam reads a page size from 1 to maxPageSize, defaultPageSize if
// empty.
func limitParam(s string) (int, error) {
	if s == "" {
		return defaultPageSize, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > maxPageSize {
		return 0, fmt.Errorf("limit must be a whole number from 1 to %d", maxPageSize)
	}
	return n, nil
}
