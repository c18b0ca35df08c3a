package domain

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Operation is what happened to a membership: it appeared or disappeared.
type Operation string

// Operations recorded in history.
const (
	OperationAdd    Operation = "add"
	OperationRemove Operation = "remove"
)

// Reason says why a membership appeared or disappeared. The service sets
// it for each transaction that changes memberships; history records it.
type Reason string

// Reasons recorded in history.
const (
	// ReasonManual: a caller added or removed the segment.
	ReasonManual Reason = "manual"
	// ReasonTTL: the membership expired. It is recorded at the expiry,
	// whoever removes the row and whenever.
	ReasonTTL Reason = "ttl"
	// ReasonAuto: a percent segment was given by its rollout or at
	// registration.
	ReasonAuto Reason = "auto"
	// ReasonSegmentDeleted: the segment was deleted.
	ReasonSegmentDeleted Reason = "segment_deleted"
)

// Changes lists every (operation, reason) pair that history can hold.
var Changes = []struct {
	Operation Operation
	Reason    Reason
}{
	{OperationAdd, ReasonManual},
	{OperationAdd, ReasonAuto},
	{OperationRemove, ReasonManual},
	{OperationRemove, ReasonAuto},
	{OperationRemove, ReasonTTL},
	{OperationRemove, ReasonSegmentDeleted},
	{OperationAdd, ReasonImport},
	{OperationRemove, ReasonImport},
}

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
	Operation Operation
	Reason    Reason
	At        time.Time
}

// HistoryCursor is a position in history's time order: after the event at
// At with id ID. The zero cursor is the beginning.
type HistoryCursor struct {
	At time.Time
	ID int64
}

// String encodes the cursor for a next_after parameter.
func (c HistoryCursor) String() string {
	return strconv.FormatInt(c.At.UnixMicro(), 10) + "-" + strconv.FormatInt(c.ID, 10)
}

// cursorMax bounds a cursor's instant: history's instants lie between
// 1970 (the cursor's text has no room for a sign) and the end of year
// 9999 (what an RFC 3339 time can say, well inside PostgreSQL's range).
var cursorMax = time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC).UnixMicro()

// ParseHistoryCursor reads what HistoryCursor.String wrote, and nothing
// else: the text must be exactly what String writes (no sign, no leading
// zeros) for an instant from 1970 to the end of 9999 and an id from 0 up.
func ParseHistoryCursor(s string) (HistoryCursor, error) {
	bad := fmt.Errorf("cursor %q is not one this service gave out", s)
	at, id, ok := strings.Cut(s, "-")
	micros, err1 := strconv.ParseInt(at, 10, 64)
	n, err2 := strconv.ParseInt(id, 10, 64)
	if !ok || err1 != nil || err2 != nil || micros < 0 || micros > cursorMax || n < 0 {
		return HistoryCursor{}, bad
	}
	c := HistoryCursor{At: time.UnixMicro(micros).UTC(), ID: n}
	if c.String() != s {
		return HistoryCursor{}, bad
	}
	return c, nil
}
