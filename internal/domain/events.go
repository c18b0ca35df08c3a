package domain

import "time"

// Event is one history event as the change stream carries it: a
// membership of UserID in Segment appeared (add) or disappeared (remove),
// for Reason, at At. ID is the history event's id, unique: consumers
// dedupe on it.
type Event struct {
	ID        int64
	UserID    int64
	Segment   string
	Operation Operation
	Reason    Reason
	At        time.Time
}

// Cursor is the event's place in publishing order, (At, ID).
func (e Event) Cursor() EventCursor { return EventCursor{At: e.At, ID: e.ID} }

// EventCursor is a place in the order events are published in: by At,
// then ID.
type EventCursor struct {
	At time.Time
	ID int64
}

// EventTimeFormat is how the stream writes at: RFC 3339 in UTC with
// microseconds, e.g. 2026-11-23T10:21:35.123456Z.
const EventTimeFormat = "2006-01-02T15:04:05.000000Z07:00"
