package server

import (
	"context"
	"fmt"

	"google.golang.org/grpc"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/agentsvc"
	"github.com/osvc/osvc/server/api"
	"github.com/osvc/osvc/server/auth"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/distribution"
	"github.com/osvc/osvc/server/scheduler"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/sites"
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
	// resolver answers the authorizer's scope questions.
	resolver auth.Resolver
}

// wireServicing builds the sites, servicing, the scheduler and the agent service.
// Data stored by an older server is migrated first.
func (s *Server) wireServicing(ctx context.Context, st *store.Store, cat *catalog.Catalog, lib *content.Library, access *auth.Access, serverID string) (servicingParts, error) {
	svc, err := servicing.New(servicing.Config{
		Store: st, Catalog: cat, Library: lib, Logger: s.logger, MaxAttempts: s.cfg.MaxAttempts,
		RetryBackoff: s.cfg.RetryBackoff, KeepVersions: s.cfg.KeepVersions,
	})
	if err != nil {
		return servicingParts{}, fmt.Errorf("servicing: %w", err)
	}
	siteRegistry, err := sites.New(sites.Config{Store: st, Logger: s.logger})
	if err != nil {
		return servicingParts{}, fmt.Errorf("sites: %w", err)
	}
	if err := migrate(ctx, st, cat, svc, siteRegistry, s.logger); err != nil {
		return servicingParts{}, err
	}
	registry, err := agents.New(agents.Config{Store: st, Logger: s.logger, SessionTTL: s.cfg.LeaseTTL, ServerID: serverID})
	if err != nil {
		return servicingParts{}, fmt.Errorf("agents: %w", err)
	}
	sched, err := scheduler.New(scheduler.Config{Store: st, Servicing: svc, Agents: registry, Logger: s.logger, ServerID: serverID, StallAfter: s.cfg.StallAfter, Metrics: s.metrics})
	if err != nil {
		return servicingParts{}, fmt.Errorf("scheduler: %w", err)
	}
	dist, err := distribution.New(distribution.Config{Store: st, Trees: lib, Logger: s.logger, ServerID: serverID})
	if err != nil {
		return servicingParts{}, fmt.Errorf("distribution: %w", err)
	}
	agentService, err := agentsvc.New(agentsvc.Config{
		Store: st, Servicing: svc, Agents: registry, Distribution: dist, Logger: s.logger, HeartbeatInterval: s.cfg.HeartbeatInterval,
		Metrics: s.metrics,
	})
	if err != nil {
		return servicingParts{}, fmt.Errorf("agent service: %w", err)
	}
	return servicingParts{
		register: func(gs *grpc.Server) {
			osvcv1.RegisterSiteServiceServer(gs, api.NewSiteServer(siteRegistry))
			osvcv1.RegisterImageServiceServer(gs, api.NewImageServer(cat, svc, dist, s.logger))
			osvcv1.RegisterUpdateServiceServer(gs, api.NewUpdateServer(cat, svc, s.logger))
			osvcv1.RegisterDistributionServiceServer(gs, api.NewDistributionServer(dist))
			osvcv1.RegisterServicingServiceServer(gs, api.NewServicingServer(svc, s.logger))
			osvcv1.RegisterAgentServiceServer(gs, api.NewAgentServer(agentService, access, s.logger))
		},
		resolver: resolver{cat: cat, svc: svc, dist: dist},
		loops: []loop{
			{name: "scheduler", run: sched.Run},
			{name: "distribution", run: dist.Run},
			{name: "agent service", run: agentService.Run},
		},
	}, nil
}

// resolver tells the authorizer the site of images and runs, and what an
// agent's runs need.
type resolver struct {
	cat  *catalog.Catalog
	svc  *servicing.Service
	dist *distribution.Service
}

func (r resolver) ImageSite(ctx context.Context, image string) (string, error) {
	img, err := r.cat.GetImage(ctx, image)
	if err != nil {
		return "", err
	}
	return img.GetSite(), nil
}

func (r resolver) RunSite(ctx context.Context, run string) (string, error) {
	rn, err := r.svc.GetRun(ctx, run)
	if err != nil {
		return "", err
	}
	return r.ImageSite(ctx, rn.GetImage())
}

func (r resolver) AgentMayRead(ctx context.Context, agent, sha256 string) (bool, error) {
	blobs, err := r.svc.AgentBlobs(ctx, agents.Name(agent))
	if err != nil || blobs[sha256] {
		return blobs[sha256], err
	}
	return r.dist.MayRead(ctx, agent, sha256)
}

func (r resolver) AgentHoldsRun(ctx context.Context, agent string) (bool, error) {
	return r.svc.AgentHoldsRun(ctx, agents.Name(agent))
}
