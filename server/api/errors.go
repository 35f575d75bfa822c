// Package api holds the thin gRPC adapters of osvc-server.
package api

import (
	"context"
	"errors"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/osvc/osvc/server/store"
)

// Status maps a domain error to a gRPC status error. It is the one place where
// domain errors become codes:
//
//   - store.ErrInvalidArgument → InvalidArgument, with an errdetails.BadRequest
//     field violation naming the field when the error is a *store.FieldViolation
//   - store.ErrNotFound → NotFound
//   - store.ErrContended (a key that kept changing past the retries) → Aborted:
//     the client may retry the whole call
//   - store.ErrConflict (otherwise: the thing already exists) → AlreadyExists
//   - store.ErrFailedPrecondition → FailedPrecondition
//   - store.ErrStaleLease → Aborted: the fencing token is no longer valid
//   - context.Canceled → Canceled, context.DeadlineExceeded → DeadlineExceeded
//   - an error already carrying a gRPC status (made in api, or from etcd) keeps it
//   - anything else → Internal, message kept, and logged through hclog's default
//     logger since nothing above it will see the cause otherwise.
func Status(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	switch {
	case errors.Is(err, store.ErrInvalidArgument):
		st := status.New(codes.InvalidArgument, msg)
		var fv *store.FieldViolation
		if errors.As(err, &fv) {
			if withDetails, derr := st.WithDetails(&errdetails.BadRequest{
				FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: fv.Field, Description: fv.Description}},
			}); derr == nil {
				st = withDetails
			}
		}
		return st.Err()
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, msg)
	case errors.Is(err, store.ErrContended):
		return status.Error(codes.Aborted, msg)
	case errors.Is(err, store.ErrConflict):
		return status.Error(codes.AlreadyExists, msg)
	case errors.Is(err, store.ErrFailedPrecondition):
		return status.Error(codes.FailedPrecondition, msg)
	case errors.Is(err, store.ErrStaleLease):
		return status.Error(codes.Aborted, msg)
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, msg)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, msg)
	}
	var withStatus interface{ GRPCStatus() *status.Status }
	if errors.As(err, &withStatus) {
		if st := withStatus.GRPCStatus(); st.Code() != codes.Unknown && st.Code() != codes.OK {
			// Keep the code, but the whole message: the wrapping says where it happened.
			return status.Error(st.Code(), msg)
		}
	}
	hclog.L().Named("api").Error("internal error", "error", err)
	return status.Error(codes.Internal, msg)
}
