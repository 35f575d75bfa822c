package main

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// The fake's answers to rollbacks and deletes: a known image rolls back
// from version 2, anything named "busy" is in use, anything else unknown.

func (s *fakeImages) RollbackImage(_ context.Context, req *osvcv1.RollbackImageRequest) (*osvcv1.RollbackImageResponse, error) {
	s.f.record(req)
	for _, img := range cannedImages {
		if img.GetName() == req.GetName() {
			out := proto.Clone(img).(*osvcv1.Image)
			to := max(req.GetToVersion(), 1)
			out.CurrentVersion, out.DistributionVersion = to, to
			out.Rollbacks = []*osvcv1.ImageRollback{{FromVersion: 2, ToVersion: to, Principal: "token:0123456789abcdef", Reason: req.GetReason(),
				Time: timestamppb.Now(), Distributed: true}}
			return &osvcv1.RollbackImageResponse{Image: out}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "image %s not found", req.GetName())
}

func (s *fakeImages) DeleteImage(_ context.Context, req *osvcv1.DeleteImageRequest) (*osvcv1.DeleteImageResponse, error) {
	s.f.record(req)
	return &osvcv1.DeleteImageResponse{}, fakeDeleteError(req.GetName(), "images/server-2022")
}

func (s *fakeUpdates) DeleteUpdate(_ context.Context, req *osvcv1.DeleteUpdateRequest) (*osvcv1.DeleteUpdateResponse, error) {
	s.f.record(req)
	return &osvcv1.DeleteUpdateResponse{}, fakeDeleteError(req.GetName(), "updates/kb5031354-x64")
}

func (s *fakeAgents) DeleteAgent(_ context.Context, req *osvcv1.DeleteAgentRequest) (*osvcv1.DeleteAgentResponse, error) {
	s.f.record(req)
	return &osvcv1.DeleteAgentResponse{}, fakeDeleteError(req.GetName(), "agents/ps1-a")
}

func fakeDeleteError(name, known string) error {
	switch {
	case name == known:
		return nil
	case strings.HasSuffix(name, "/busy"):
		return status.Errorf(codes.FailedPrecondition, "%s has run runs/r-1 that has not ended", name)
	}
	return status.Errorf(codes.NotFound, "%s not found", name)
}

func TestImageRollbackSendsTheVersionAndReasonAndSaysWhereTheImageStands(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	out := mustRun(t, f.addr, "image", "rollback", "server-2022", "--to", "1", "--reason", "KB5031354 breaks BitLocker")
	assertContainsInOrder(t, out, "images/server-2022 rolled back from version 2 to version 1", "distribution points follow", "version 1")
	reqs := requestsOf[*osvcv1.RollbackImageRequest](f)
	if len(reqs) != 1 || reqs[0].GetName() != "images/server-2022" || reqs[0].GetToVersion() != 1 || reqs[0].GetReason() != "KB5031354 breaks BitLocker" {
		t.Errorf("RollbackImage requests = %v", reqs)
	}
}

func TestImageRollbackWithoutAReasonIsAUsageErrorAndAsksNothing(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	_, stderr, err := osvcctl(t, f.addr, "image", "rollback", "server-2022")
	if exitCode(err) != exitUsage || !strings.Contains(err.Error()+stderr, "--reason") {
		t.Errorf("rollback without --reason: exit %d, %v; want %d saying --reason", exitCode(err), err, exitUsage)
	}
	if reqs := requestsOf[*osvcv1.RollbackImageRequest](f); len(reqs) != 0 {
		t.Errorf("the server was asked %v", reqs)
	}
}

func TestDeleteCommandsNameTheResourceAndExitByTheServersAnswer(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	tests := []struct {
		args []string
		out  string
		exit int
	}{
		{[]string{"image", "delete", "server-2022"}, "deleted images/server-2022\n", exitOK},
		{[]string{"image", "delete", "images/nope"}, "", exitNotFound},
		{[]string{"image", "delete", "busy"}, "", exitError},
		{[]string{"update", "delete", "KB5031354-x64"}, "deleted updates/kb5031354-x64\n", exitOK},
		{[]string{"update", "delete", "kb1"}, "", exitNotFound},
		{[]string{"agent", "delete", "agents/ps1-a"}, "deleted agents/ps1-a and revoked it; it may enroll again with a new join token\n", exitOK},
		{[]string{"agent", "delete", "busy"}, "", exitError},
		{[]string{"agent", "delete", "Bad_Name"}, "", exitUsage},
	}
	for _, tt := range tests {
		out, stderr, err := osvcctl(t, f.addr, tt.args...)
		if exitCode(err) != tt.exit || out != tt.out {
			t.Errorf("osvcctl %s: exit %d, output %q (%v, %s); want %d, %q", strings.Join(tt.args, " "), exitCode(err), out, err, stderr, tt.exit, tt.out)
		}
	}
}

func TestImageGetListsTheRollbacks(t *testing.T) {
	t.Parallel()
	img := proto.Clone(cannedImages[0]).(*osvcv1.Image)
	img.Rollbacks = []*osvcv1.ImageRollback{{FromVersion: 2, ToVersion: 1, Principal: "token:0123456789abcdef", Reason: "breaks BitLocker", Time: timestamppb.Now()}}
	var out strings.Builder
	c := &cli{stdout: &out}
	c.printImage(img, nil)
	assertContainsInOrder(t, out.String(), "Versions:", "Rollbacks:", "TIME", "FROM", "TO", "BY", "REASON", "token:0123456789abcdef", "breaks BitLocker")
}
