// Package errdefs holds osvc's domain errors and their one translation to
// and from gRPC status, in the manner of containerd's errdefs/errgrpc: the
// server turns an error into a status with ToGRPC, clients turn a status
// back into an error with ToNative, and both sides match errors with
// errors.Is, never by reading codes.
//
// Two errors share codes.Aborted: a stale fencing token (the work is no
// longer the caller's: drop it) and a contended key (try again). The status
// carries the difference as an errdetails.ErrorInfo reason, which the agent
// protocol's Ack carries too.
package errdefs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
)

// Domain errors. Wrap them with %w and context; match them with errors.Is.
var (
	// ErrNotFound: the thing named does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the thing already exists.
	ErrConflict = errors.New("already exists")
	// ErrContended: what the call read kept changing concurrently; calling
	// again later may succeed.
	ErrContended = errors.New("changed concurrently")
	// ErrFailedPrecondition: the state does not allow the operation now.
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrStaleLease: the lease that assigned the work is gone or replaced;
	// the caller's fencing token is no longer valid and its work must be
	// dropped.
	ErrStaleLease = errors.New("stale fencing token")
	// ErrInvalidArgument: the request is malformed; see FieldViolation.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrResourceExhausted: a limit was reached (size, concurrent calls).
	ErrResourceExhausted = errors.New("resource exhausted")
	// ErrUnavailable: the server (or what it depends on) cannot be reached now.
	ErrUnavailable = errors.New("unavailable")
	// ErrOutOfRange: an offset or position past the end.
	ErrOutOfRange = errors.New("out of range")
	// ErrDataLoss: stored data is damaged.
	ErrDataLoss = errors.New("data loss")
	// ErrInternal: a fault of the server.
	ErrInternal = errors.New("internal error")
	// ErrUnauthenticated: the call carries no valid credential.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrPermissionDenied: the caller's credential does not allow the call.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrUnimplemented: the peer does not know the call or message.
	ErrUnimplemented = errors.New("not implemented")
)

// FieldViolation is an ErrInvalidArgument about one request field; ToGRPC
// carries it as an errdetails.BadRequest field violation.
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

// kinds lists the domain errors in the order they are matched: the first
// that err wraps decides its kind. context errors come last: a domain error
// wrapped together with a cancel keeps its meaning.
var kinds = []error{
	ErrInvalidArgument, ErrNotFound, ErrStaleLease, ErrContended, ErrConflict,
	ErrFailedPrecondition, ErrResourceExhausted, ErrOutOfRange, ErrDataLoss,
	ErrUnavailable, ErrInternal, ErrUnauthenticated, ErrPermissionDenied, ErrUnimplemented,
	context.Canceled, context.DeadlineExceeded,
}

// Kind returns the domain error err wraps (one of the Err* values, or a
// context error), or nil when it wraps none.
func Kind(err error) error {
	if err == nil {
		return nil
	}
	for _, k := range kinds {
		if errors.Is(err, k) {
			return k
		}
	}
	return nil
}

// Newf returns an error of kind (one of the Err* values) whose message is
// the formatted text alone, for messages that say the kind in their own words.
func Newf(kind error, format string, args ...any) error {
	return &native{msg: fmt.Sprintf(format, args...), kind: kind}
}

// native is an error rebuilt from a status: its message is the status's and
// it matches its kind with errors.Is.
type native struct {
	msg  string
	kind error
}

func (e *native) Error() string { return e.msg }
func (e *native) Unwrap() error { return e.kind }

// Conceal hides the cause of an error of no known kind (or ErrInternal)
// from the peer: such an error says what failed inside the server, with
// its file paths and addresses, which is for the server's log. It returns
// an ErrInternal that names an incident id, and that id for the log line;
// any other error is returned as is with an empty id.
func Conceal(err error) (error, string) {
	if err == nil || Code(err) != codes.Internal {
		return err, ""
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	return Newf(ErrInternal, "internal error %s: the server logged what went wrong; give its administrator this id", id), id
}
