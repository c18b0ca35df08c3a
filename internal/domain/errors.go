package domain

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Kinds of error a caller can act on. Test for them with errors.Is.
var (
	// ErrInvalid means the input breaks a rule; nothing was changed.
	ErrInvalid = errors.New("invalid input")
	// ErrNotFound means a named thing does not exist; nothing was changed.
	ErrNotFound = errors.New("not found")
	// ErrConflict means the change collides with existing state.
	ErrConflict = errors.New("conflict")
	// ErrForbidden means a credential (a signed link) is not valid.
	ErrForbidden = errors.New("forbidden")
	// ErrBusy means this process runs as much of that kind of work as it
	// may (CSV exports, say); the caller may retry after RetryAfter.
	ErrBusy = errors.New("busy")
	// ErrUnavailable means a dependency (the database) cannot be reached
	// or cannot take writes now. A write that got it may or may not have
	// been applied; retrying a change is safe (it is idempotent).
	ErrUnavailable = errors.New("unavailable")
)

// Error is an error whose Message is safe and useful to show the caller.
// It unwraps to its Kind.
type Error struct {
	Kind    error
	Message string
	// Fields says, for ErrInvalid, which input fields are wrong and why.
	Fields []FieldError
	// UnknownSlugs lists, for ErrNotFound, every slug that names no segment.
	UnknownSlugs []string
	// RetryAfter says, for ErrBusy, when a retry may succeed.
	RetryAfter time.Duration
}

// FieldError is one wrong input field. Field is a JSON pointer ("/add/3").
type FieldError struct {
	Field   string
	Message string
}

func (e *Error) Error() string { return e.Message }

// Unwrap returns the error's kind.
func (e *Error) Unwrap() error { return e.Kind }

// Invalid returns an ErrInvalid error listing the wrong fields.
func Invalid(msg string, fields ...FieldError) error {
	return &Error{Kind: ErrInvalid, Message: msg, Fields: fields}
}

// NotFoundf returns an ErrNotFound error with a formatted message.
func NotFoundf(format string, args ...any) error {
	return &Error{Kind: ErrNotFound, Message: fmt.Sprintf(format, args...)}
}

// Conflictf returns an ErrConflict error with a formatted message.
func Conflictf(format string, args ...any) error {
	return &Error{Kind: ErrConflict, Message: fmt.Sprintf(format, args...)}
}

// Forbiddenf returns an ErrForbidden error with a formatted message.
func Forbiddenf(format string, args ...any) error {
	return &Error{Kind: ErrForbidden, Message: fmt.Sprintf(format, args...)}
}

// Busyf returns an ErrBusy error that suggests retrying after retryAfter.
func Busyf(retryAfter time.Duration, format string, args ...any) error {
	return &Error{Kind: ErrBusy, Message: fmt.Sprintf(format, args...), RetryAfter: retryAfter}
}

// UnknownSlugs returns an ErrNotFound error naming every unknown slug.
func UnknownSlugs(slugs []string) error {
	return &Error{
		Kind:         ErrNotFound,
		Message:      fmt.Sprintf("no segment is named %s; nothing was changed", strings.Join(slugs, ", ")),
		UnknownSlugs: slugs,
	}
}

// ErrKeyInUse says a request with the same Idempotency-Key is running.
var ErrKeyInUse = errors.New("idempotency key in use")

// ErrCommitUncertain says a commit failed in a way that leaves its outcome
// unknown (the connection was cut while committing): the effects may or
// may not be there.
var ErrCommitUncertain = errors.New("the outcome of the commit is unknown")

// ErrKeyUsed says an Idempotency-Key has a stored response already: the
// request is a retry (or reuses the key), and what it did was rolled back.
var ErrKeyUsed = errors.New("idempotency key used")
