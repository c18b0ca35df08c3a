package domain

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// Actor is who makes an administrative change, for the audit log.
type Actor struct {
	// Name is the token's subject, ActorSchedule for what the service does
	// at a scheduled time, or "" when authentication is off.
	Name string
	// RequestID is the X-Request-Id of the request that makes the change;
	// "" for scheduled work.
	RequestID string
}

// ActorSchedule is the actor of what the service does at a time set for
// it: a segment's deletion at its delete_at, a step of a percent schedule.
const ActorSchedule = "schedule"

type actorKey struct{}

// WithActor returns ctx carrying a as the author of the changes made with
// it.
func WithActor(ctx context.Context, a Actor) context.Context {
	return context.WithValue(ctx, actorKey{}, a)
}

// ActorFrom returns the actor ctx carries; the zero Actor (no one known:
// authentication off, no request id) if none.
func ActorFrom(ctx context.Context) Actor {
	a, _ := ctx.Value(actorKey{}).(Actor)
	return a
}

// AuditKind is what an audit entry is about.
type AuditKind string

// Kinds of audit targets.
const (
	AuditSegment AuditKind = "segment"
	AuditLayer   AuditKind = "layer"
	AuditImport  AuditKind = "import"
)

// AuditEntry is one administrative change, as the audit log keeps it.
type AuditEntry struct {
	ID     int64
	At     time.Time
	Actor  string // "" when no one is known
	Action string // create, update or delete
	Kind   AuditKind
	// Slug is the segment's or the layer's slug; an import's segment's.
	Slug string
	// Changes maps each field that changed to {"from": …, "to": …}, as
	// the API shows the fields.
	Changes json.RawMessage
	// Error is the problem type of a scheduled step that could not apply,
	// or an import's error; "" if none.
	Error     string
	RequestID string
}

// ScheduleStep is one step of a percent segment's plan: at At its share
// becomes AutoPercent.
type ScheduleStep struct {
	At          time.Time
	AutoPercent Percent
}

// MaxScheduleSteps bounds a plan (the API contract).
const MaxScheduleSteps = 20

// ScheduledStep names the step of a segment's plan due at At.
type ScheduledStep struct {
	SegmentID int64     `json:"segment_id"`
	Slug      string    `json:"slug"`
	At        time.Time `json:"at"`
}

// StepNotDueError says a scheduled step is not to be applied now: its
// time has not come on the database's clock (Wait > 0), or the plan no
// longer has it first (Wait == 0: replaced, applied, or the segment
// deleted).
type StepNotDueError struct{ Wait time.Duration }

func (e *StepNotDueError) Error() string {
	if e.Wait > 0 {
		return fmt.Sprintf("the step is due in %s; not yet", e.Wait)
	}
	return "the plan no longer has this step first"
}
