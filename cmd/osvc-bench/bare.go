package main

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"

	"google.golang.org/grpc"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/transfer"
	"github.com/osvc/osvc/server"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/agentsvc"
	"github.com/osvc/osvc/server/api"
	"github.com/osvc/osvc/server/distribution"
	"github.com/osvc/osvc/server/scheduler"
)

// startBareServer serves on loopback what the report benchmark uses of
// osvc-server (the agent service, servicing, the scheduler), wired as
// osvc-server wires them, on e, in plaintext and without authorization:
// the plaintext side of the mutual TLS ratio. No binary offers it.
func startBareServer(ctx context.Context, cfg benchConfig, e *benchEtcd) (_ target, stop func(), err error) {
	libDir, err := os.MkdirTemp("", "osvc-bench-bare-*")
	if err != nil {
		return target{}, nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(libDir)
		}
	}()
	st, svc, err := newServicing(e, libDir, cfg.Logger)
	if err != nil {
		return target{}, nil, err
	}
	const serverID = "bench-bare"
	registry, err := agents.New(agents.Config{Store: st, Logger: cfg.Logger, SessionTTL: server.DefaultLeaseTTL, ServerID: serverID})
	if err != nil {
		return target{}, nil, err
	}
	sched, err := scheduler.New(scheduler.Config{Store: st, Servicing: svc, Agents: registry, Logger: cfg.Logger, ServerID: serverID, StallAfter: server.DefaultStallAfter})
	if err != nil {
		return target{}, nil, err
	}
	dist, err := distribution.New(distribution.Config{Store: st, Logger: cfg.Logger, ServerID: serverID})
	if err != nil {
		return target{}, nil, err
	}
	agentService, err := agentsvc.New(agentsvc.Config{Store: st, Servicing: svc, Agents: registry, Distribution: dist, Logger: cfg.Logger, HeartbeatInterval: server.DefaultHeartbeatInterval})
	if err != nil {
		return target{}, nil, err
	}
	gs := grpc.NewServer(transfer.ServerOptions()...)
	osvcv1.RegisterAgentServiceServer(gs, api.NewAgentServer(agentService, nil, cfg.Logger))
	osvcv1.RegisterServicingServiceServer(gs, api.NewServicingServer(svc, cfg.Logger))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return target{}, nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = gs.Serve(lis) })
	for _, run := range []func(context.Context) error{sched.Run, agentService.Run} {
		wg.Go(func() {
			if err := run(runCtx); err != nil && !errors.Is(err, context.Canceled) && runCtx.Err() == nil {
				cfg.Logger.Warn("bare server loop stopped", "error", err)
			}
		})
	}
	return target{addr: lis.Addr().String(), insecure: true}, func() {
		cancel()
		gs.Stop()
		wg.Wait()
		os.RemoveAll(libDir)
	}, nil
}
