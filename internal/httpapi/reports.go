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
	"github.com/segments-service/segments/internal/service"
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
	h.respondLink(w, "/api/v1/reports/history/", token, expiresAt)
}

// respondLink answers 201 with the link to the report under path with
// token (Location names it too).
func (h *handler) respondLink(w http.ResponseWriter, path, token string, expiresAt time.Time) {
	link := h.publicURL + path + url.PathEscape(token)
	w.Header().Set("Location", link)
	respond(w, http.StatusCreated, ReportLink{URL: link, ExpiresAt: expiresAt})
}

// downloadReport godoc
//
//	@ID				downloadHistoryReport
//	@Summary		Download a history report
//	@Description	Streams the CSV named by a signed link: header user_id;segment;operation;datetime;reason, then one line per event in time order, times in RFC 3339 UTC. HEAD answers the headers without exporting.
//	@Tags			reports
//	@Produce		text/csv
//	@Produce		json
//	@Param			token	path		string		true	"The token from the link"
//	@Success		200		{string}	string		"user_id;segment;operation;datetime;reason"
//	@Failure		403		{object}	Problem		"Tampered, truncated or expired link"
//	@Failure		429		{object}	Problem		"As many exports as REPORT_CONCURRENCY are running on this server (see Retry-After)"
//	@Header			429		{string}	Retry-After	"Seconds to wait before trying again"
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
	h.streamCSV(w, r, name, func(cw io.Writer) error { return h.reports.WriteCSV(r.Context(), q, cw) })
}

// downloadGrace is how much longer than the report timeout a download's
// response may take to write: the database ends the export at the timeout,
// and the error (or the end) still has to go out.
const downloadGrace = 10 * time.Second

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

// MembersReportRequest is the body of POST /reports/members.
type MembersReportRequest struct {
	Slug string `json:"slug" validate:"required,slug" example:"AVITO_VOICE_MESSAGES"`
}

// createMembersReport godoc
//
//	@ID				createMembersReport
//	@Summary		Get a link to a segment's members as CSV
//	@Description	Returns a signed link to the CSV of the segment's active members. The link works on any replica until expires_at; nothing is stored. A history link does not open a member list, nor the reverse.
//	@Tags			reports
//	@Accept			json
//	@Produce		json
//	@Param			report	body		MembersReportRequest	true	"Which segment"
//	@Success		201		{object}	ReportLink
//	@Header			201		{string}	Location	"the report's URL"
//	@Failure		400		{object}	Problem		"Malformed JSON"
//	@Failure		404		{object}	Problem		"No such segment"
//	@Failure		413		{object}	Problem		"Body over 1 MiB"
//	@Failure		415		{object}	Problem		"Content-Type is not application/json"
//	@Failure		422		{object}	Problem		"Bad slug"
//	@Router			/reports/members [post]
func (h *handler) createMembersReport(w http.ResponseWriter, r *http.Request) {
	var req MembersReportRequest
	if !decode(w, r, h.validate, &req) {
		return
	}
	seg, err := h.segments.Get(r.Context(), req.Slug)
	if err != nil {
		respondError(w, r, err)
		return
	}
	token, expiresAt := h.reports.MembersLink(service.MembersReport{SegmentID: seg.ID, Slug: seg.Slug})
	h.respondLink(w, "/api/v1/reports/members/", token, expiresAt)
}

// downloadMembersReport godoc
//
//	@ID				downloadMembersReport
//	@Summary		Download a segment's members
//	@Description	Streams the CSV named by a signed link: header user_id;added_at;expires_at;source, then one line per active member in user id order, times in RFC 3339 UTC, a permanent membership's expires_at empty.
//	@Tags			reports
//	@Produce		text/csv
//	@Produce		json
//	@Param			token	path		string		true	"The token from the link"
//	@Success		200		{string}	string		"user_id;added_at;expires_at;source"
//	@Failure		403		{object}	Problem		"Tampered, truncated or expired link, or a link of another kind"
//	@Failure		404		{object}	Problem		"The segment was deleted since"
//	@Failure		429		{object}	Problem		"As many exports as REPORT_CONCURRENCY are running on this server (see Retry-After)"
//	@Header			429		{string}	Retry-After	"Seconds to wait before trying again"
//	@Router			/reports/members/{token} [get]
func (h *handler) downloadMembersReport(w http.ResponseWriter, r *http.Request) {
	m, err := h.reports.OpenMembers(chi.URLParam(r, "token"))
	if err != nil {
		respondError(w, r, err)
		return
	}
	if r.Method == http.MethodHead {
		if err := h.reports.CheckMembers(r.Context(), m); err != nil {
			respondError(w, r, err)
			return
		}
	}
	h.streamCSV(w, r, "segments-members-"+m.Slug, func(cw io.Writer) error { return h.reports.WriteMembersCSV(r.Context(), m, cw) })
}

// streamCSV streams a CSV download named name: if it fails before a byte
// is out, the client gets the problem; after, the connection is cut, so
// that a broken download does not pass for a short file. A HEAD request
// gets the headers only: nothing is exported. A download may take the
// report timeout, longer than the server's usual write timeout.
func (h *handler) streamCSV(w http.ResponseWriter, r *http.Request, name string, write func(io.Writer) error) {
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+`.csv"`)
	w.Header().Set("Cache-Control", "private, no-store")
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return
	}
	if h.reportTimeout > 0 {
		// A recorder in tests cannot set deadlines; a real server can.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(h.reportTimeout + downloadGrace))
	}
	cw := &countingWriter{w: w}
	if err := write(cw); err != nil {
		if cw.n == 0 {
			w.Header().Del("Content-Disposition")
			w.Header().Del("Cache-Control")
			respondError(w, r, err)
			return
		}
		loggerFrom(r.Context()).Error("report stream failed", zap.Int64("bytes_sent", cw.n), zap.Error(err))
		panic(http.ErrAbortHandler)
	}
}
