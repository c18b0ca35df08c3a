package domain

import (
	"fmt"
	"time"
)

// ReasonImport: an import added or removed the membership.
const ReasonImport Reason = "import"

// ImportMode is what an import does with its list.
type ImportMode string

// Import modes.
const (
	// ImportAdd gives every listed user the segment, as a change adding it
	// would.
	ImportAdd ImportMode = "add"
	// ImportRemove takes it from every listed user who holds it (an
	// explicit removal: it sticks against the percent rule).
	ImportRemove ImportMode = "remove"
	// ImportReplace leaves exactly the listed users holding it.
	ImportReplace ImportMode = "replace"
)

// ImportStatus is where an import stands.
type ImportStatus string

// Import statuses.
const (
	ImportPending ImportStatus = "pending"
	ImportRunning ImportStatus = "running"
	ImportDone    ImportStatus = "done"
	ImportFailed  ImportStatus = "failed"
)

// MaxImportIDs bounds an import's list.
const MaxImportIDs = 10_000_000

// MaxImportConflictIDs bounds the conflicting ids an import lists.
const MaxImportConflictIDs = 100

// Import is a list of users applied to a segment in the background.
type Import struct {
	ID        int64
	SegmentID int64
	Segment   string
	Mode      ImportMode
	// ExpiresAt is the expiry the listed users' memberships get; nil for
	// permanent ones.
	ExpiresAt *time.Time
	Status    ImportStatus
	// Listed counts the ids as listed, repeats included; Received the
	// distinct ones, once the worker has sorted the list (nil until then);
	// Processed those applied so far.
	Listed    int64
	Received  *int64
	Processed int64
	// Added counts memberships that appeared or whose expiry changed,
	// Removed those that disappeared, Unchanged the rest, Conflicts the
	// ids skipped for holding another segment of the layer.
	Added, Removed, Unchanged, Conflicts int64
	// ConflictIDs are the first MaxImportConflictIDs conflicting ids.
	ConflictIDs []int64
	// Error says why a failed import failed.
	Error      string
	CreatedAt  time.Time
	FinishedAt *time.Time
}

// ImportStep is what one batch of an import did.
type ImportStep struct {
	// Import is the import after the batch.
	Import Import
	// Applied counts the listed ids the batch applied.
	Applied int64
	// Ended is set on the step that ended the import (done or failed).
	Ended bool
}

// NewImport is what an analyst uploads, the list aside.
type NewImport struct {
	Segment string
	Mode    ImportMode
	// TTL or ExpiresAt (not both) sets the expiry of the memberships it
	// gives; Imports.Upload turns a TTL into ExpiresAt.
	TTL       time.Duration
	ExpiresAt *time.Time
}

// ImportLineError is one bad line of an uploaded list.
type ImportLineError struct {
	Line   int64
	Value  string
	Detail string
}

// ImportListError refuses a list with bad lines: ErrInvalid, with the
// first MaxImportLineErrors of them.
type ImportListError struct {
	Lines []ImportLineError
	// More is set when there were more bad lines than listed.
	More bool
}

// MaxImportLineErrors bounds the bad lines an ImportListError lists.
const MaxImportLineErrors = 100

func (e *ImportListError) Error() string {
	lines := fmt.Sprintf("%d bad lines", len(e.Lines))
	switch {
	case e.More:
		lines = fmt.Sprintf("more than %d bad lines (the first %d listed in errors)", len(e.Lines), len(e.Lines))
	case len(e.Lines) == 1:
		lines = "1 bad line"
	}
	l := e.Lines[0]
	return fmt.Sprintf("%s; line %d: %q %s; nothing was stored", lines, l.Line, l.Value, l.Detail)
}

// Unwrap makes an ImportListError an ErrInvalid.
func (e *ImportListError) Unwrap() error { return ErrInvalid }
