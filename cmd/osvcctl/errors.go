package main

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

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

// renderError turns err into the lines the user reads on stderr: the gRPC
// status message, the field violations of a BadRequest, and a hint when the
// server cannot be reached.
func renderError(err error, server string) string {
	var ended *runEndedError
	if errors.As(err, &ended) {
		return "error: " + ended.Error() + "\n"
	}
	st, ok := status.FromError(err)
	if !ok {
		return "error: " + err.Error() + "\n"
	}
	var b strings.Builder
	switch st.Code() {
	case codes.Unavailable:
		if isConnectFailure(st.Message()) {
			fmt.Fprintf(&b, "error: cannot reach osvc-server at %s: is it running? (set --server or %s)\n", server, serverEnv)
			return b.String()
		}
		fmt.Fprintf(&b, "error: osvc-server at %s is unavailable: %s\n", server, st.Message())
		return b.String()
	case codes.DeadlineExceeded:
		fmt.Fprintf(&b, "error: %s (no answer from osvc-server at %s in time: raise --timeout)\n", st.Message(), server)
		return b.String()
	}
	fmt.Fprintf(&b, "error: %s\n", st.Message())
	for _, d := range st.Details() {
		br, ok := d.(*errdetails.BadRequest)
		if !ok {
			continue
		}
		for _, v := range br.GetFieldViolations() {
			line := v.GetField() + ": " + v.GetDescription()
			if strings.Contains(st.Message(), line) {
				continue // the message already says it
			}
			fmt.Fprintf(&b, "  %s\n", line)
		}
	}
	return b.String()
}

// withHint adds what to do next to a server error of the given code, keeping
// its details; any other error is returned as is.
func withHint(err error, code codes.Code, hint string) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() != code {
		return err
	}
	p := st.Proto()
	p.Message += " (" + hint + ")"
	return status.ErrorProto(p)
}

// isConnectFailure tells a server that is not there (nothing listening, no
// such host) from one that answered Unavailable itself.
func isConnectFailure(msg string) bool {
	for _, s := range []string{"connection refused", "connection error", "no such host", "produced zero addresses", "connect: "} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
