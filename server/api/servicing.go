package api

import (
	"context"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/status"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/servicing"
)

type servicingServer struct {
	osvcv1.UnimplementedServicingServiceServer
	svc    *servicing.Service
	logger hclog.Logger
}

// NewServicingServer serves ServicingService from s.
func NewServicingServer(s *servicing.Service, logger hclog.Logger) osvcv1.ServicingServiceServer {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &servicingServer{svc: s, logger: logger.Named("api.servicing")}
}

func (a *servicingServer) CreateSchedule(ctx context.Context, req *osvcv1.CreateScheduleRequest) (*osvcv1.CreateScheduleResponse, error) {
	if req.GetParent() == "" {
		return nil, Status(errdefs.InvalidArgument("parent", "name the image to service, images/{id}"))
	}
	if req.GetSchedule() == nil {
		return nil, Status(errdefs.InvalidArgument("schedule", "send the schedule: its updates, or all_applicable"))
	}
	// The plan's warnings come with the schedule; a plan that fails says
	// nothing the schedule's own checks do not.
	plan, _ := a.svc.PlanSchedule(ctx, req.GetParent(), req.GetSchedule(), req.GetAllApplicable())
	sched, run, err := a.svc.CreateSchedule(ctx, req.GetParent(), req.GetSchedule(), req.GetAllApplicable())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.CreateScheduleResponse{Schedule: sched, Run: run, Warnings: plan.GetWarnings()}, nil
}

func (a *servicingServer) PlanSchedule(ctx context.Context, req *osvcv1.PlanScheduleRequest) (*osvcv1.PlanScheduleResponse, error) {
	if req.GetParent() == "" {
		return nil, Status(errdefs.InvalidArgument("parent", "name the image to service, images/{id}"))
	}
	plan, err := a.svc.PlanSchedule(ctx, req.GetParent(), req.GetSchedule(), req.GetAllApplicable())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.PlanScheduleResponse{Plan: plan}, nil
}

func (a *servicingServer) GetSchedule(ctx context.Context, req *osvcv1.GetScheduleRequest) (*osvcv1.GetScheduleResponse, error) {
	sched, err := a.svc.GetSchedule(ctx, req.GetName())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.GetScheduleResponse{Schedule: sched}, nil
}

func (a *servicingServer) ListSchedules(ctx context.Context, req *osvcv1.ListSchedulesRequest) (*osvcv1.ListSchedulesResponse, error) {
	if req.GetPageSize() < 0 {
		return nil, Status(errdefs.InvalidArgument("page_size", "send 0 for the default or a positive size"))
	}
	scheds, next, err := a.svc.ListSchedules(ctx, req.GetParent(), int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.ListSchedulesResponse{Schedules: scheds, NextPageToken: next}, nil
}

func (a *servicingServer) UpdateSchedule(ctx context.Context, req *osvcv1.UpdateScheduleRequest) (*osvcv1.UpdateScheduleResponse, error) {
	sched, err := a.svc.UpdateSchedule(ctx, req.GetSchedule(), req.GetUpdateMask())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.UpdateScheduleResponse{Schedule: sched}, nil
}

func (a *servicingServer) DeleteSchedule(ctx context.Context, req *osvcv1.DeleteScheduleRequest) (*osvcv1.DeleteScheduleResponse, error) {
	if err := a.svc.DeleteSchedule(ctx, req.GetName()); err != nil {
		return nil, Status(err)
	}
	return &osvcv1.DeleteScheduleResponse{}, nil
}

func (a *servicingServer) GetRun(ctx context.Context, req *osvcv1.GetRunRequest) (*osvcv1.GetRunResponse, error) {
	run, err := a.svc.GetRun(ctx, req.GetName())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.GetRunResponse{Run: run}, nil
}

func (a *servicingServer) ListRuns(ctx context.Context, req *osvcv1.ListRunsRequest) (*osvcv1.ListRunsResponse, error) {
	if req.GetPageSize() < 0 {
		return nil, Status(errdefs.InvalidArgument("page_size", "send 0 for the default or a positive size"))
	}
	runs, next, err := a.svc.ListRuns(ctx, req.GetImage(), int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.ListRunsResponse{Runs: runs, NextPageToken: next}, nil
}

func (a *servicingServer) WatchRun(req *osvcv1.WatchRunRequest, stream osvcv1.ServicingService_WatchRunServer) error {
	if req.GetAfterSequence() < 0 {
		return Status(errdefs.InvalidArgument("after_sequence", "send 0 for every line or the last sequence you have"))
	}
	watch := a.svc.WatchRun
	if req.GetSnapshotOnly() {
		watch = a.svc.SnapshotRun
	}
	err := watch(stream.Context(), req.GetName(), req.GetAfterSequence(), func(run *osvcv1.Run, lines []*osvcv1.LogLine) error {
		return stream.Send(&osvcv1.WatchRunResponse{Run: run, LogLines: lines})
	})
	if err != nil && stream.Context().Err() != nil {
		// The server ending the watch (on shutdown) says why with a status;
		// otherwise the client left and there is nothing to report.
		if cause := context.Cause(stream.Context()); isStatus(cause) {
			return cause
		}
		return nil
	}
	return Status(err)
}

// isStatus tells an error made with a gRPC code from a bare context error.
func isStatus(err error) bool {
	_, ok := status.FromError(err)
	return ok && err != nil
}

func (a *servicingServer) CancelRun(ctx context.Context, req *osvcv1.CancelRunRequest) (*osvcv1.CancelRunResponse, error) {
	run, err := a.svc.CancelRun(ctx, req.GetName(), req.GetReason())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.CancelRunResponse{Run: run}, nil
}
