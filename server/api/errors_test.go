package api_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/osvc/osvc/server/api"
	"github.com/osvc/osvc/server/store"
)

func TestStatusMapsDomainErrorsToCodes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		err   error
		code  codes.Code
		field string
	}{
		{name: "not found is NotFound", err: fmt.Errorf("images/x: %w", store.ErrNotFound), code: codes.NotFound},
		{name: "a conflict is AlreadyExists", err: fmt.Errorf("create: %w", store.ErrConflict), code: codes.AlreadyExists},
		{name: "a contended key is Aborted", err: fmt.Errorf("update: %w", store.ErrContended), code: codes.Aborted},
		{name: "a failed precondition is FailedPrecondition", err: fmt.Errorf("run: %w", store.ErrFailedPrecondition), code: codes.FailedPrecondition},
		{name: "a stale lease is Aborted", err: fmt.Errorf("report: %w", store.ErrStaleLease), code: codes.Aborted},
		{name: "a field violation is InvalidArgument naming the field", err: fmt.Errorf("list: %w", store.InvalidArgument("page_token", "bad")), code: codes.InvalidArgument, field: "page_token"},
		{name: "a bare invalid argument is InvalidArgument", err: fmt.Errorf("too big: %w", store.ErrInvalidArgument), code: codes.InvalidArgument},
		{name: "a canceled context is Canceled", err: fmt.Errorf("get: %w", context.Canceled), code: codes.Canceled},
		{name: "a deadline is DeadlineExceeded", err: fmt.Errorf("get: %w", context.DeadlineExceeded), code: codes.DeadlineExceeded},
		{name: "a wrapped gRPC status keeps its code", err: fmt.Errorf("etcd: %w", status.Error(codes.Unavailable, "no leader")), code: codes.Unavailable},
		{name: "anything else is Internal", err: errors.New("disk on fire"), code: codes.Internal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := api.Status(tt.err)
			if status.Code(got) != tt.code {
				t.Fatalf("Status(%v) = %v, want %s", tt.err, got, tt.code)
			}
			if status.Convert(got).Message() != tt.err.Error() {
				t.Errorf("message = %q, want %q", status.Convert(got).Message(), tt.err.Error())
			}
			if f := badRequestField(got); f != tt.field {
				t.Errorf("field violation = %q, want %q", f, tt.field)
			}
		})
	}
	if api.Status(nil) != nil {
		t.Error("Status(nil) is not nil")
	}
}
