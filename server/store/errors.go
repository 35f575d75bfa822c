package store

import (
	"errors"
	"fmt"
)

// Domain errors of the store. Callers match them with errors.Is; server/api maps
// them to gRPC codes in one place.
var (
	// ErrNotFound means the key holds no value.
	ErrNotFound = errors.New("not found")
	// ErrConflict means the key already exists, or it kept changing concurrently
	// past the retries of Update.
	ErrConflict = errors.New("conflict")
	// ErrContended is the ErrConflict of a key that kept changing concurrently
	// past the retries of Update: trying again later may succeed.
	ErrContended = fmt.Errorf("changed concurrently: %w", ErrConflict)
	// ErrFailedPrecondition means the state does not allow the operation now.
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrStaleLease means the lease that assigned the work is gone or replaced:
	// the caller's fencing token is no longer valid.
	ErrStaleLease = errors.New("stale fencing token")
	// ErrInvalidArgument means the request is malformed; see FieldViolation.
	ErrInvalidArgument = errors.New("invalid argument")
)

// FieldViolation is an ErrInvalidArgument about one request field; server/api
// maps it to a BadRequest field violation.
type FieldViolation struct {
	Field       string
	Description string
}

// Error implements error.
func (v *FieldViolation) Error() string {
	return fmt.Sprintf("invalid argument: %s: %s", v.Field, v.Description)
}

// Unwrap makes errors.Is(err, ErrInvalidArgument) hold.
func (v *FieldViolation) Unwrap() error { return ErrInvalidArgument }

// InvalidArgument returns a FieldViolation for field.
func InvalidArgument(field, description string) error {
	return &FieldViolation{Field: field, Description: description}
}
