package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/pki"
)

// Exit codes of osvcctl, listed in the README.
const (
	exitOK          = 0
	exitError       = 1 // anything else the server or the machine refused
	exitUsage       = 2 // a bad command line, or a request the server found invalid
	exitNotFound    = 3 // the image, update or run named does not exist
	exitUnreachable = 4 // osvc-server could not be reached or did not answer in time
	exitRunEnded    = 5 // a watched run ended FAILED or CANCELED
	// exitStopped: the watch was interrupted (Ctrl-C, SIGTERM) before the
	// run ended; the run goes on. 128+SIGINT, as shells report it.
	exitStopped = 130
)

// exitCode maps the error a command returned to osvcctl's exit code.
func exitCode(err error) int {
	var ended *runEndedError
	var stopped *watchStoppedError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ended):
		return exitRunEnded
	case errors.As(err, &stopped):
		return exitStopped
	case errors.Is(err, errdefs.ErrInvalidArgument):
		return exitUsage
	case errors.Is(err, errdefs.ErrNotFound):
		return exitNotFound
	case errors.Is(err, errdefs.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return exitUnreachable
	}
	return exitError
}

// usageErrorf is an error in the command line itself: it exits exitUsage.
func usageErrorf(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }

// Is makes every usage error an errdefs.ErrInvalidArgument, and Unwrap keeps
// what it wraps reachable.
func (e *usageError) Is(target error) bool { return target == errdefs.ErrInvalidArgument }
func (e *usageError) Unwrap() error        { return e.err }

// nativeErrorsUnary and nativeErrorsStream turn every status the server
// returns into the domain error errdefs makes of it, so commands match
// errors with errors.Is and never read codes.
func nativeErrorsUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return errdefs.ToNative(invoker(ctx, method, req, reply, cc, opts...))
}

func nativeErrorsStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, errdefs.ToNative(err)
	}
	return &nativeStream{ClientStream: s}, nil
}

type nativeStream struct{ grpc.ClientStream }

func (s *nativeStream) RecvMsg(m any) error { return errdefs.ToNative(s.ClientStream.RecvMsg(m)) }
func (s *nativeStream) SendMsg(m any) error { return errdefs.ToNative(s.ClientStream.SendMsg(m)) }
func (s *nativeStream) CloseSend() error    { return errdefs.ToNative(s.ClientStream.CloseSend()) }

// runEndedError reports a watched run that ended without succeeding, so the
// command exits non-zero after printing its results.
type runEndedError struct {
	run   string
	state osvcv1.RunState
	msg   string
}

func (e *runEndedError) Error() string {
	s := fmt.Sprintf("run %s ended %s", e.run, runStateText(e.state))
	if e.msg != "" {
		s += ": " + e.msg
	}
	return s
}

// watchStoppedError tells that a watch was interrupted before its run ended:
// the run goes on on the server, which is no failure.
type watchStoppedError struct {
	run string
	// again is the command that follows the run again.
	again string
}

func (e *watchStoppedError) Error() string {
	return fmt.Sprintf("stopped watching %s; the run goes on on the server: follow it again with '%s', stop it with 'osvcctl run cancel %s'",
		e.run, e.again, e.run)
}

// renderError turns err into the lines the user reads on stderr: the
// message, the field violations of a BadRequest the message does not already
// say, and a hint when the server cannot be reached.
func renderError(err error, server string) string {
	err = errdefs.ToNative(err)
	var ended *runEndedError
	if errors.As(err, &ended) {
		return "error: " + ended.Error() + "\n"
	}
	var stopped *watchStoppedError
	if errors.As(err, &stopped) {
		return stopped.Error() + "\n"
	}
	var b strings.Builder
	switch {
	case errors.Is(err, errdefs.ErrUnavailable):
		if isTrustFailure(err.Error()) {
			fmt.Fprintf(&b, "error: osvc-server at %s presented a certificate this client does not trust (%s): give the server's <data-dir>/pki/ca.crt with --ca-file or %s, after comparing its fingerprint with the one the server logs\n",
				server, trustDetail(err.Error()), pki.CAFileEnv)
			return b.String()
		}
		if isConnectFailure(err.Error()) {
			fmt.Fprintf(&b, "error: cannot reach osvc-server at %s: is it running? (set --server or %s)\n", server, serverEnv)
			return b.String()
		}
		fmt.Fprintf(&b, "error: osvc-server at %s is unavailable: %s\n", server, err)
		return b.String()
	case errors.Is(err, context.DeadlineExceeded):
		fmt.Fprintf(&b, "error: %s (no answer from osvc-server at %s in time: raise --timeout)\n", err, server)
		return b.String()
	}
	fmt.Fprintf(&b, "error: %s\n", err)
	st, ok := status.FromError(err)
	if !ok {
		return b.String()
	}
	for _, d := range st.Details() {
		br, ok := d.(*errdetails.BadRequest)
		if !ok {
			continue
		}
		for _, v := range br.GetFieldViolations() {
			line := v.GetField() + ": " + v.GetDescription()
			if strings.Contains(err.Error(), line) {
				continue // the message already says it
			}
			fmt.Fprintf(&b, "  %s\n", line)
		}
	}
	return b.String()
}

// withHint adds what to do next to an error of the given kind, keeping it
// matchable; any other error is returned as is.
func withHint(err error, kind error, hint string) error {
	if err == nil || !errors.Is(err, kind) {
		return err
	}
	return fmt.Errorf("%w (%s)", err, hint)
}

// isConnectFailure tells a server that is not there (nothing listening, no
// such host) from one that answered Unavailable itself.
// isTrustFailure tells a TLS handshake that failed on the server's
// certificate.
func isTrustFailure(msg string) bool {
	return strings.Contains(msg, "x509: ") || strings.Contains(msg, "tls: failed to verify")
}

// trustDetail is the x509 reason in msg.
func trustDetail(msg string) string {
	if i := strings.Index(msg, "x509: "); i >= 0 {
		return strings.ReplaceAll(strings.TrimRight(msg[i:], `"`), `\"`, `"`)
	}
	return msg
}

func isConnectFailure(msg string) bool {
	for _, s := range []string{"connection refused", "connection error", "no such host", "produced zero addresses", "connect: "} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
