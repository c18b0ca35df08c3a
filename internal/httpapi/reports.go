package httpapi

import (
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"go.uber.org/zap"

	"github.com/segments-service/segments/internal/domain"
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
	// URL is relative to the service's address unless PUBLIC_BASE_URL
	// is set, which it then starts with.
	URL       string    `json:"url" example:"/api/v1/reports/history/djEuMjAyMy0wOC4xMDAwLjE3NjQwMDAwMDA.3q2-7w"`
	ExpiresAt time.Time `json:"expires_at" format:"date-time" example:"2026-11-23T09:00:00Z"`
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
//	@Failure		413		{object}	Problem		"Body over 1 MiB"
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
	link := h.publicURL + "/api/v1/reports/history/" + url.PathEscape(token)
	w.Header().Set("Location", link)
	respond(w, http.StatusCreated, ReportLink{URL: link, ExpiresAt: expiresAt})
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
