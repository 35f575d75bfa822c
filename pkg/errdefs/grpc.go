package errdefs

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
)

// ErrorDomain is the errdetails.ErrorInfo domain of osvc's statuses.
const ErrorDomain = "osvc.v1"

// Reasons carried in errdetails.ErrorInfo (and in the agent protocol's
// Ack.reason) for the errors that share a code with another.
const (
	ReasonStaleLease = "STALE_FENCING_TOKEN"
	ReasonContended  = "CONTENDED"
)

// codeOf maps each kind to its gRPC code.
var codeOf = map[error]codes.Code{
	ErrInvalidArgument:       codes.InvalidArgument,
	ErrNotFound:              codes.NotFound,
	ErrStaleLease:            codes.Aborted,
	ErrContended:             codes.Aborted,
	ErrConflict:              codes.AlreadyExists,
	ErrFailedPrecondition:    codes.FailedPrecondition,
	ErrResourceExhausted:     codes.ResourceExhausted,
	ErrOutOfRange:            codes.OutOfRange,
	ErrDataLoss:              codes.DataLoss,
	ErrUnavailable:           codes.Unavailable,
	ErrInternal:              codes.Internal,
	ErrUnauthenticated:       codes.Unauthenticated,
	ErrPermissionDenied:      codes.PermissionDenied,
	ErrUnimplemented:         codes.Unimplemented,
	context.Canceled:         codes.Canceled,
	context.DeadlineExceeded: codes.DeadlineExceeded,
}

// reasonOf names the kinds whose code is shared.
var reasonOf = map[error]string{
	ErrStaleLease: ReasonStaleLease,
	ErrContended:  ReasonContended,
}

// Code returns the gRPC code of err: its kind's, the code of a status it
// carries, or Internal. nil is OK.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if k := Kind(err); k != nil {
		return codeOf[k]
	}
	var withStatus interface{ GRPCStatus() *status.Status }
	if errors.As(err, &withStatus) {
		if c := withStatus.GRPCStatus().Code(); c != codes.OK && c != codes.Unknown {
			return c
		}
	}
	// etcd's client turns the server's statuses into errors of its own
	// (rpctypes.EtcdError) that keep the code: "leader changed" and "no
	// leader" are Unavailable, so the caller tries again rather than fail.
	var withCode interface{ Code() codes.Code }
	if errors.As(err, &withCode) {
		if c := withCode.Code(); c != codes.OK && c != codes.Unknown {
			return c
		}
	}
	return codes.Internal
}

// Reason returns the ErrorInfo reason of err's kind, "" for kinds whose code
// alone tells them apart.
func Reason(err error) string {
	return reasonOf[Kind(err)]
}

// ToGRPC turns err into a gRPC status error carrying its whole message: the
// code of its kind, a BadRequest field violation for a *FieldViolation, an
// ErrorInfo reason for kinds that share a code, and a RetryInfo for an
// error of RetryAfter. An error that already is
// a status of its own (from etcd, or made in an adapter) keeps its code. An
// error of no kind is Internal. nil stays nil.
func ToGRPC(err error) error {
	if err == nil {
		return nil
	}
	st := status.New(Code(err), err.Error())
	var details []protoadapt.MessageV1
	var fv *FieldViolation
	if errors.As(err, &fv) {
		details = append(details, &errdetails.BadRequest{
			FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: fv.Field, Description: fv.Description}},
		})
	}
	if r := Reason(err); r != "" {
		details = append(details, &errdetails.ErrorInfo{Reason: r, Domain: ErrorDomain})
	}
	var retry *retryAfter
	if errors.As(err, &retry) {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(retry.delay)})
	}
	for _, d := range details {
		if withDetail, derr := st.WithDetails(d); derr == nil {
			st = withDetail
		}
	}
	return st.Err()
}

// ToNative turns a gRPC status error back into a domain error that matches
// its kind with errors.Is and keeps the status message; a BadRequest
// becomes a *FieldViolation. The status stays reachable (GRPCStatus), so
// printing its details still works. An error that is not a status is
// returned as is.
func ToNative(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	return fromStatus(st)
}

// FromCode builds the domain error of a code, reason and message as the
// agent protocol's Ack carries them; code OK is nil.
func FromCode(code codes.Code, reason, msg string) error {
	if code == codes.OK {
		return nil
	}
	st := status.New(code, msg)
	if reason != "" {
		if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}); err == nil {
			st = withInfo
		}
	}
	return fromStatus(st)
}

func fromStatus(st *status.Status) error {
	if st.Code() == codes.OK {
		return nil
	}
	reason := ""
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if d.GetDomain() == ErrorDomain {
				reason = d.GetReason()
			}
		case *errdetails.BadRequest:
			if st.Code() == codes.InvalidArgument && len(d.GetFieldViolations()) > 0 {
				v := d.GetFieldViolations()[0]
				return &statusError{st: st, err: &nativeViolation{
					FieldViolation: FieldViolation{Field: v.GetField(), Description: v.GetDescription()},
					msg:            st.Message(),
				}}
			}
		}
	}
	kind := kindOf(st.Code(), reason)
	return &statusError{st: st, err: &native{msg: st.Message(), kind: kind}}
}

// kindOf is the inverse of codeOf, with the reason telling shared codes apart.
func kindOf(code codes.Code, reason string) error {
	switch reason {
	case ReasonStaleLease:
		return ErrStaleLease
	case ReasonContended:
		return ErrContended
	}
	switch code {
	case codes.Aborted:
		// Aborted without a reason: a concurrency conflict, worth retrying.
		return ErrContended
	case codes.Unknown:
		return ErrInternal
	}
	for k, c := range codeOf {
		if c == code && reasonOf[k] == "" {
			return k
		}
	}
	return ErrInternal
}

// statusError is a native error that still answers GRPCStatus, so code
// that prints a status's details (field violations) keeps working.
type statusError struct {
	st  *status.Status
	err error
}

func (e *statusError) Error() string              { return e.err.Error() }
func (e *statusError) Unwrap() error              { return e.err }
func (e *statusError) GRPCStatus() *status.Status { return e.st }

// nativeViolation is a FieldViolation whose message is the status's.
type nativeViolation struct {
	FieldViolation
	msg string
}

func (v *nativeViolation) Error() string { return v.msg }
func (v *nativeViolation) Unwrap() error { return &v.FieldViolation }
