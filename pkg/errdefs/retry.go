package errdefs

import (
	"errors"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// retryAfter is an error that tells when trying again may succeed.
type retryAfter struct {
	err   error
	delay time.Duration
}

func (e *retryAfter) Error() string { return e.err.Error() }
func (e *retryAfter) Unwrap() error { return e.err }

// RetryAfter wraps err with the delay after which trying again may
// succeed (a refusal that ends by itself, such as a dead replica's hold on
// an agent's stream): ToGRPC carries it as an errdetails.RetryInfo, which
// RetryDelay reads back on the other side.
func RetryAfter(err error, delay time.Duration) error {
	return &retryAfter{err: err, delay: delay}
}

// RetryDelay returns the delay RetryAfter gave err, or that its status's
// errdetails.RetryInfo carries; false when it has none.
func RetryDelay(err error) (time.Duration, bool) {
	var r *retryAfter
	if errors.As(err, &r) {
		return r.delay, true
	}
	var st interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &st) {
		return 0, false
	}
	for _, d := range st.GRPCStatus().Details() {
		if info, ok := d.(*errdetails.RetryInfo); ok && info.GetRetryDelay().IsValid() {
			return info.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}
