package domain

import (
	"fmt"
	"strconv"
	"time"
)

// Period is a calendar month in UTC.
type Period struct {
	Year  int
	Month time.Month
}

// ParsePeriod reads "YYYY-MM" (years 0001 to 9999).
func ParsePeriod(s string) (Period, error) {
	if len(s) != 7 || s[4] != '-' {
		return Period{}, fmt.Errorf("period %q is not YYYY-MM", s)
	}
	y, err1 := strconv.Atoi(s[:4])
	m, err2 := strconv.Atoi(s[5:])
	if err1 != nil || err2 != nil || s[0] == '+' || s[5] == '+' || y < 1 || m < 1 || m > 12 {
		return Period{}, fmt.Errorf("period %q is not YYYY-MM with a month from 01 to 12", s)
	}
	return Period{Year: y, Month: time.Month(m)}, nil
}

// String formats p as YYYY-MM.
func (p Period) String() string { return fmt.Sprintf("%04d-%02d", p.Year, int(p.Month)) }

// Start is the first instant of the month, UTC.
func (p Period) Start() time.Time { return time.Date(p.Year, p.Month, 1, 0, 0, 0, 0, time.UTC) }

// End is the first instant of the next month, UTC: the period is
// [Start, End).
func (p Period) End() time.Time { return p.Start().AddDate(0, 1, 0) }

// HistoryQuery selects the history a report covers: one month, of one user
// or (UserID zero) of all users.
type HistoryQuery struct {
	Period Period
	UserID int64
}

// HistoryEvent is one membership that appeared or disappeared.
type HistoryEvent struct {
	// ID orders events of the same instant.
	ID        int64
	UserID    int64
	Slug      string
	Operation string // add or remove
	Reason    string // manual, ttl, auto or segment_deleted
	At        time.Time
}
