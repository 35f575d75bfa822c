package api

import (
	"context"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/status"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/agentsvc"
)

type agentServer struct {
	osvcv1.UnimplementedAgentServiceServer
	svc    *agentsvc.Service
	logger hclog.Logger
}

// NewAgentServer serves AgentService from a: Connect is agentsvc's stream.
func NewAgentServer(a *agentsvc.Service, logger hclog.Logger) osvcv1.AgentServiceServer {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &agentServer{svc: a, logger: logger.Named("api.agents")}
}

func (a *agentServer) Connect(stream osvcv1.AgentService_ConnectServer) error {
	err := a.svc.Connect(stream)
	if err == nil {
		return nil
	}
	// The stream ends with the status agentsvc chose (Unavailable for a lost
	// lease, InvalidArgument for a bad Hello…); anything else is mapped here.
	if _, ok := status.FromError(err); ok {
		return err
	}
	return Status(err)
}

func (a *agentServer) ListAgents(ctx context.Context, req *osvcv1.ListAgentsRequest) (*osvcv1.ListAgentsResponse, error) {
	if req.GetPageSize() < 0 {
		return nil, Status(errdefs.InvalidArgument("page_size", "send 0 for the default or a positive size"))
	}
	agents, next, err := a.svc.ListAgents(ctx, int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.ListAgentsResponse{Agents: agents, NextPageToken: next}, nil
}
