// Package domain holds the types and rules of the segments service: segments,
// users, memberships and the errors a caller can act on. It imports nothing
// of the service's technologies.
package domain

import (
	"context"
	"regexp"
	"time"
)

// MaxSlugsPerChange bounds add plus remove in one membership change (the
// API contract). The HTTP layer's validation holds the other limits.
const MaxSlugsPerChange = 1000

// slugPattern is the contract's slug syntax; the database checks it too.
var slugPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$`)

// SlugPattern is the slug syntax as a regular expression, for messages.
const SlugPattern = `^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$`

// ValidSlug reports whether s is a well-formed segment slug.
func ValidSlug(s string) bool { return slugPattern.MatchString(s) }

// ValidUserID reports whether id can name a user: user ids are positive.
func ValidUserID(id int64) bool { return id > 0 }

// Segment is a named experiment group that users belong to.
type Segment struct {
	ID          int64
	Slug        string
	Description string
	CreatedAt   time.Time
	// MemberCount counts the segment's active (unexpired) memberships.
	MemberCount int64
	// AutoPercent is the share of users the segment is given to
	// automatically; nil for a manual segment.
	AutoPercent *Percent
	// Rollout is the progress of giving a percent segment to the users
	// registered when it was created; nil for a manual segment.
	Rollout *Rollout
	// DeleteAt is when the segment is to be deleted; nil if never.
	DeleteAt *time.Time
	// Layer is the slug of the segment's layer; "" if it has none.
	Layer string
	// Buckets are the buckets of its layer a percent segment of a layer
	// owns.
	Buckets BucketRanges
	// Schedule is a percent segment's plan: the steps still to come.
	Schedule []ScheduleStep
}

// NewSegment is what an analyst supplies to create a segment.
type NewSegment struct {
	Slug        string
	Description string
	// AutoPercent, if set, makes a percent segment.
	AutoPercent *Percent
	// Layer, if set, names the layer the segment belongs to (for good).
	Layer string
	// DeleteAt, if set, schedules the segment's deletion.
	DeleteAt *time.Time
	// Schedule is a percent segment's plan of share changes.
	Schedule []ScheduleStep
}

// SegmentPatch is a change to a segment (a JSON merge patch): a nil field
// is left as it is.
type SegmentPatch struct {
	Description *string
	// AutoPercent changes a percent segment's share.
	AutoPercent *Percent
	// AutoPercentNull is a request to make the segment manual (refused).
	AutoPercentNull bool
	// DeleteAt schedules (or moves) the deletion; CancelDeletion cancels it.
	DeleteAt       *time.Time
	CancelDeletion bool
	// SetSchedule replaces the plan with Schedule (empty: clears it).
	SetSchedule bool
	Schedule    []ScheduleStep
	// Step, set by the scheduler alone, applies the plan's first step if
	// it is the one due at Step.At of segment Step.SegmentID and that time
	// has come; if not, PatchSegment returns a *StepNotDueError.
	Step *ScheduledStep
}

// ScheduledDeletion is a segment's deletion due at DeleteAt.
type ScheduledDeletion struct {
	SegmentID int64     `json:"segment_id"`
	Slug      string    `json:"slug"`
	DeleteAt  time.Time `json:"delete_at"`
}

// Percent is a share of users in hundredths of a percent: 5025 is 50.25 %.
type Percent int

// MaxPercent is 100 %.
const MaxPercent Percent = 10000

// Float returns p in percent.
func (p Percent) Float() float64 { return float64(p) / 100 }

// RolloutStatus is where a percent segment's rollout stands.
type RolloutStatus string

// Rollout statuses.
const (
	RolloutPending RolloutStatus = "pending"
	RolloutRunning RolloutStatus = "running"
	RolloutDone    RolloutStatus = "done"
	RolloutFailed  RolloutStatus = "failed"
)

// Rollout is the progress of a percent segment's rollout.
type Rollout struct {
	// ID names this rollout: a percent segment's creation and each change
	// of its share start one with a new id.
	ID     int64
	Status RolloutStatus
	// Assigned counts the chosen users the rollout has reached so far.
	Assigned int64
	// Total is how many users the rollout chooses: round(N·p/100) of the N
	// users registered when the segment was created (0 while pending).
	Total int64
}

// Source says how a user came to hold a segment.
type Source string

// Sources of a membership.
const (
	SourceManual Source = "manual"
	SourceAuto   Source = "auto"
)

// Membership is one segment a user holds.
type Membership struct {
	// SegmentID is the segment's id; set by the reads of a user's
	// current segments (the read cache keeps ids), zero elsewhere.
	SegmentID int64
	Slug      string
	AddedAt   time.Time
	// ExpiresAt is nil for a permanent membership.
	ExpiresAt *time.Time
	Source    Source
}

// SegmentChange is one atomic change of a user's segments.
type SegmentChange struct {
	UserID int64
	Add    []string
	Remove []string
	// ExpiresAt applies to every added segment, including ones the user
	// already holds; nil (with TTL zero) makes them permanent.
	ExpiresAt *time.Time
	// TTL is the other way to give an expiry: this long from now. At most
	// one of ExpiresAt and TTL may be set.
	TTL time.Duration
}

// Expiry names a membership and the expiry it was written with: what a
// TTL task removes, if the membership still expires then.
type Expiry struct {
	UserID    int64     `json:"user_id"`
	Slug      string    `json:"slug"`
	ExpiresAt time.Time `json:"expires_at"`
}

// ChangeResult reports what a SegmentChange did.
type ChangeResult struct {
	UserID int64
	// Added lists the slugs whose membership appeared or whose expiry
	// changed, sorted.
	Added []string
	// Removed lists the slugs the user held and no longer holds, sorted.
	Removed []string
	// Segments is the user's full list of memberships after the change,
	// sorted by slug.
	Segments []Membership
}

// SegmentStats are figures about all segments, for monitoring.
type SegmentStats struct {
	Segments int64
	// Rollouts counts percent segments by rollout status.
	Rollouts map[RolloutStatus]int64
	// RolloutUsersLeft is how many users running rollouts have yet to
	// reach.
	RolloutUsersLeft int64
	// LayerBuckets is how many buckets each layer's segments own, by
	// layer slug.
	LayerBuckets map[string]int64
	// Imports counts imports by status.
	Imports map[ImportStatus]int64
}

// StoredResponse is the response to a request sent with an
// Idempotency-Key, kept to answer its retries.
type StoredResponse struct {
	// Fingerprint identifies the request: SHA-256 of its method, path and
	// query, and body.
	Fingerprint  []byte
	Method, Path string
	Status       int
	Header       map[string][]string
	Body         []byte
	CreatedAt    time.Time
}

// KeyedAttempt is the transaction a request sent with an Idempotency-Key
// runs in: its effects and its stored response commit together.
type KeyedAttempt interface {
	// Commit stores resp and commits it with the request's effects; if the
	// key has a stored response already, it rolls back and returns
	// ErrKeyUsed.
	Commit(ctx context.Context, resp StoredResponse) error
	// Rollback undoes the request's effects; it does nothing after Commit.
	Rollback(ctx context.Context)
}

// Member is a segment's member, as its member list shows it.
type Member struct {
	UserID  int64
	AddedAt time.Time
	// ExpiresAt is nil for a permanent membership.
	ExpiresAt *time.Time
	Source    Source
}

// Explanation says why a user is or is not in a segment.
type Explanation struct {
	// Membership is the user's active membership, or nil.
	Membership *Membership
	// Bucket is segment_bucket(slug, user id).
	Bucket int
	// AutoPercent is the segment's share; nil for a manual segment.
	AutoPercent *Percent
	// Layer is the segment's layer, its bucket of the user and the
	// segment's buckets; nil for a segment of no layer.
	Layer *ExplainedLayer
	// Events are the user's last (at most 100) history events in the
	// segment, oldest first.
	Events []HistoryEvent
}

// ExplainedLayer is what explain says of a segment's layer.
type ExplainedLayer struct {
	Slug string
	// Bucket is LayerBucket(layer, user id).
	Bucket int
	// Ranges are the buckets the segment owns (none for a manual one).
	Ranges BucketRanges
}
