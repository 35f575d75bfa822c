package server

import (
	"context"
	"fmt"

	"google.golang.org/grpc"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/agentsvc"
	"github.com/osvc/osvc/server/api"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/scheduler"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/store"
)

// loop is a long-lived part of the server with a Run method.
type loop struct {
	name string
	run  func(ctx context.Context) error
}

// servicingParts are the servicing side of the server: its gRPC services and
// its background loops.
type servicingParts struct {
	register func(*grpc.Server)
	loops    []loop
}

// wireServicing builds servicing, the scheduler and the agent service.
func (s *Server) wireServicing(st *store.Store, cat *catalog.Catalog, lib *content.Library, serverID string) (servicingParts, error) {
	svc, err := servicing.New(servicing.Config{
		Store: st, Catalog: cat, Library: lib, Logger: s.logger, MaxAttempts: s.cfg.MaxAttempts,
		RetryBackoff: s.cfg.RetryBackoff,
	})
	if err != nil {
		return servicingParts{}, fmt.Errorf("servicing: %w", err)
	}
	sched, err := scheduler.New(scheduler.Config{Store: st, Servicing: svc, Logger: s.logger, ServerID: serverID, StallAfter: s.cfg.StallAfter})
	if err != nil {
		return servicingParts{}, fmt.Errorf("scheduler: %w", err)
	}
	agents, err := agentsvc.New(agentsvc.Config{
		Store: st, Servicing: svc, Catalog: cat, Logger: s.logger,
		LeaseTTL: s.cfg.LeaseTTL, HeartbeatInterval: s.cfg.HeartbeatInterval, ServerID: serverID,
	})
	if err != nil {
		return servicingParts{}, fmt.Errorf("agent service: %w", err)
	}
	return servicingParts{
		register: func(gs *grpc.Server) {
			osvcv1.RegisterServicingServiceServer(gs, api.NewServicingServer(svc, s.logger))
			osvcv1.RegisterAgentServiceServer(gs, api.NewAgentServer(agents, s.logger))
		},
		loops: []loop{
			{name: "scheduler", run: sched.Run},
			{name: "agent service", run: agents.Run},
		},
	}, nil
}
