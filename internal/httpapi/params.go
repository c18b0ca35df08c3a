package httpapi

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/segments-service/segments/internal/domain"
)

// Paging of list endpoints.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

// userID reads the user_id path parameter. On failure it has written a 400
// and returns false.
func userID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	s := chi.URLParam(r, "user_id")
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || !domain.ValidUserID(id) {
		statusProblem(w, r, http.StatusBadRequest,
			"user_id must be a whole number from 1 to 9223372036854775807, not "+strconv.Quote(s))
		return 0, false
	}
	return id, true
}

// timeParam reads an RFC 3339 time, def if empty.
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
