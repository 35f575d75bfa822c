package errdefs_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/osvc/osvc/pkg/errdefs"
)

func TestToGRPCAndBackKeepTheKind(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		err    error
		code   codes.Code
		reason string
		kind   error
		field  string
	}{
		{name: "not found is NotFound", err: fmt.Errorf("images/x: %w", errdefs.ErrNotFound), code: codes.NotFound, kind: errdefs.ErrNotFound},
		{name: "a conflict is AlreadyExists", err: fmt.Errorf("create: %w", errdefs.ErrConflict), code: codes.AlreadyExists, kind: errdefs.ErrConflict},
		{name: "a contended key is Aborted with its reason", err: fmt.Errorf("update: %w", errdefs.ErrContended), code: codes.Aborted, reason: errdefs.ReasonContended, kind: errdefs.ErrContended},
		{name: "a stale lease is Aborted with its own reason", err: fmt.Errorf("report: %w", errdefs.ErrStaleLease), code: codes.Aborted, reason: errdefs.ReasonStaleLease, kind: errdefs.ErrStaleLease},
		{name: "a failed precondition is FailedPrecondition", err: fmt.Errorf("run: %w", errdefs.ErrFailedPrecondition), code: codes.FailedPrecondition, kind: errdefs.ErrFailedPrecondition},
		{name: "a field violation is InvalidArgument naming the field", err: fmt.Errorf("list: %w", errdefs.InvalidArgument("page_token", "bad")), code: codes.InvalidArgument, kind: errdefs.ErrInvalidArgument, field: "page_token"},
		{name: "a bare invalid argument is InvalidArgument", err: fmt.Errorf("too big: %w", errdefs.ErrInvalidArgument), code: codes.InvalidArgument, kind: errdefs.ErrInvalidArgument},
		{name: "a limit is ResourceExhausted", err: fmt.Errorf("upload: %w", errdefs.ErrResourceExhausted), code: codes.ResourceExhausted, kind: errdefs.ErrResourceExhausted},
		{name: "a canceled context is Canceled", err: fmt.Errorf("get: %w", context.Canceled), code: codes.Canceled, kind: context.Canceled},
		{name: "a deadline is DeadlineExceeded", err: fmt.Errorf("get: %w", context.DeadlineExceeded), code: codes.DeadlineExceeded, kind: context.DeadlineExceeded},
		{name: "a wrapped gRPC status keeps its code", err: fmt.Errorf("etcd: %w", status.Error(codes.Unavailable, "no leader")), code: codes.Unavailable, kind: errdefs.ErrUnavailable},
		{name: "a domain error beside a cancel keeps its kind", err: errors.Join(fmt.Errorf("report: %w", errdefs.ErrStaleLease), context.Canceled), code: codes.Aborted, reason: errdefs.ReasonStaleLease, kind: errdefs.ErrStaleLease},
		{name: "anything else is Internal", err: errors.New("disk on fire"), code: codes.Internal, kind: errdefs.ErrInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			wire := errdefs.ToGRPC(tt.err)
			st := status.Convert(wire)
			if st.Code() != tt.code {
				t.Fatalf("ToGRPC(%v) code = %s, want %s", tt.err, st.Code(), tt.code)
			}
			if st.Message() != tt.err.Error() {
				t.Errorf("message = %q, want %q", st.Message(), tt.err.Error())
			}
			if got := errdefs.Reason(tt.err); got != tt.reason {
				t.Errorf("Reason = %q, want %q", got, tt.reason)
			}
			back := errdefs.ToNative(wire)
			if !errors.Is(back, tt.kind) {
				t.Errorf("ToNative(ToGRPC(err)) = %v, does not match %v", back, tt.kind)
			}
			if back.Error() != tt.err.Error() {
				t.Errorf("ToNative message = %q, want %q", back.Error(), tt.err.Error())
			}
			var fv *errdefs.FieldViolation
			if errors.As(back, &fv) != (tt.field != "") || (fv != nil && fv.Field != tt.field) {
				t.Errorf("field violation after the round trip = %+v, want field %q", fv, tt.field)
			}
			if status.Code(back) != tt.code {
				t.Errorf("the native error's status code = %s, want %s (its details must stay printable)", status.Code(back), tt.code)
			}
			// The Ack of the agent protocol carries code, reason and message.
			fromAck := errdefs.FromCode(tt.code, errdefs.Reason(tt.err), tt.err.Error())
			if !errors.Is(fromAck, tt.kind) {
				t.Errorf("FromCode(%s, %q) = %v, does not match %v", tt.code, errdefs.Reason(tt.err), fromAck, tt.kind)
			}
		})
	}
}

func TestStaleLeaseAndContendedStayApart(t *testing.T) {
	t.Parallel()
	stale := errdefs.ToNative(errdefs.ToGRPC(errdefs.ErrStaleLease))
	if errors.Is(stale, errdefs.ErrContended) {
		t.Error("a stale fencing token came back as contended: an agent would resend instead of dropping its work")
	}
	contended := errdefs.FromCode(codes.Aborted, errdefs.ReasonContended, "busy")
	if errors.Is(contended, errdefs.ErrStaleLease) {
		t.Error("a contended report came back as a stale lease: an agent would drop a run it still holds")
	}
}

func TestNilAndNonStatusErrors(t *testing.T) {
	t.Parallel()
	if errdefs.ToGRPC(nil) != nil || errdefs.ToNative(nil) != nil || errdefs.FromCode(codes.OK, "", "") != nil {
		t.Error("nil or OK did not stay nil")
	}
	plain := errors.New("plain")
	if errdefs.ToNative(plain) != plain {
		t.Error("ToNative changed an error that is not a status")
	}
}

func TestToGRPCCarriesBadRequestDetails(t *testing.T) {
	t.Parallel()
	st := status.Convert(errdefs.ToGRPC(errdefs.InvalidArgument("files[0].sha256", "want 64 hex digits")))
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && br.GetFieldViolations()[0].GetField() == "files[0].sha256" {
			return
		}
	}
	t.Fatalf("no BadRequest field violation in %v", st.Details())
}

func TestConcealHidesTheCauseOfInternalErrorsOnly(t *testing.T) {
	t.Parallel()
	cause := fmt.Errorf("read /srv/osvc-data/content/ab/abcd: %w", errors.New("input/output error"))
	public, id := errdefs.Conceal(cause)
	if id == "" || !errors.Is(public, errdefs.ErrInternal) {
		t.Fatalf("Conceal(%v) = %v, %q; want an ErrInternal with an incident id", cause, public, id)
	}
	if strings.Contains(public.Error(), "/srv/") || !strings.Contains(public.Error(), id) {
		t.Errorf("public message %q shows the cause or lacks the id %s", public, id)
	}
	for _, err := range []error{nil, errdefs.ErrNotFound, errdefs.InvalidArgument("f", "bad"), fmt.Errorf("x: %w", errdefs.ErrStaleLease)} {
		if got, id := errdefs.Conceal(err); got != err || id != "" {
			t.Errorf("Conceal(%v) = %v, %q; want it unchanged", err, got, id)
		}
	}
}

func TestARetryDelayCrossesTheWire(t *testing.T) {
	err := errdefs.RetryAfter(errdefs.Newf(errdefs.ErrConflict, "live on replica a"), 3*time.Second)
	back := errdefs.ToNative(errdefs.ToGRPC(err))
	if d, ok := errdefs.RetryDelay(back); !ok || d != 3*time.Second {
		t.Errorf("RetryDelay after the wire = %s, %v; want 3s", d, ok)
	}
	if !errors.Is(back, errdefs.ErrConflict) || status.Code(errdefs.ToGRPC(err)) != codes.AlreadyExists {
		t.Errorf("the error lost its kind: %v", back)
	}
	if _, ok := errdefs.RetryDelay(errdefs.ToGRPC(errdefs.Newf(errdefs.ErrConflict, "x"))); ok {
		t.Error("a refusal without a delay has one")
	}
}

func TestAnEtcdLeaderChangeIsUnavailable(t *testing.T) {
	err := fmt.Errorf("get run runs/r1: %w", rpctypes.ErrLeaderChanged)
	if c := errdefs.Code(err); c != codes.Unavailable {
		t.Errorf("Code(%v) = %s, want Unavailable: the caller tries again", err, c)
	}
	if c := status.Code(errdefs.ToGRPC(err)); c != codes.Unavailable {
		t.Errorf("ToGRPC(%v) has code %s, want Unavailable", err, c)
	}
}
