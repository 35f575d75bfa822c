package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/pkg/transfer"
)

// The fleet benchmark runs its bare AgentService server as a process of
// its own, this program started again with these variables set, so that
// its RSS and CPU are its own.
const (
	// bareAgentsListenEnv is the address the bare server listens on.
	bareAgentsListenEnv = "OSVC_BENCH_BARE_AGENTS_LISTEN"
	// bareAgentsPKIEnv is the osvc-server authority folder whose CA the
	// bare server presents a certificate of and verifies agents against.
	bareAgentsPKIEnv = "OSVC_BENCH_BARE_AGENTS_PKI"
	// bareAgentsHeartbeatEnv is the heartbeat interval it tells agents.
	bareAgentsHeartbeatEnv = "OSVC_BENCH_BARE_AGENTS_HEARTBEAT"
)

// serveBareAgentsFromEnv serves the bare AgentService when the fleet
// benchmark started this process for it, and tells whether it did.
func serveBareAgentsFromEnv(ctx context.Context) (bool, error) {
	addr := os.Getenv(bareAgentsListenEnv)
	if addr == "" {
		return false, nil
	}
	hb, err := time.ParseDuration(os.Getenv(bareAgentsHeartbeatEnv))
	if err != nil {
		return true, fmt.Errorf("%s: %w", bareAgentsHeartbeatEnv, err)
	}
	return true, serveBareAgents(ctx, addr, os.Getenv(bareAgentsPKIEnv), hb)
}

// serveBareAgents serves AgentService.Connect as cheaply as the protocol
// allows, with no etcd and no authorization: Welcome for a Hello, an Ack
// for every message. It serves mutual TLS as osvc-server does, with a
// certificate of the same authority, so the same agents connect to both.
func serveBareAgents(ctx context.Context, addr, pkiDir string, heartbeat time.Duration) error {
	ca, _, err := pki.EnsureCA(pkiDir, time.Now())
	if err != nil {
		return err
	}
	cert, err := ca.ServerCertificate(pki.ServerHosts(addr, nil), time.Now())
	if err != nil {
		return err
	}
	creds := credentials.NewTLS(pki.ClientAuthConfig(pki.ServerConfig(cert), ca.Cert))
	gs := grpc.NewServer(append(transfer.ServerOptions(), grpc.Creds(creds))...)
	osvcv1.RegisterAgentServiceServer(gs, &bareAgents{heartbeat: heartbeat})
	healthpb.RegisterHealthServer(gs, health.NewServer())
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	// The CA file in the folder is what waitServing waits for; it is there.
	if _, err := os.Stat(filepath.Join(pkiDir, pki.CACertFile)); err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		gs.Stop()
	}()
	return gs.Serve(lis)
}

// bareAgents is the floor of an agent stream's cost on a server.
type bareAgents struct {
	osvcv1.UnimplementedAgentServiceServer
	heartbeat time.Duration
}

func (b *bareAgents) Connect(stream osvcv1.AgentService_ConnectServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if first.GetHello() == nil {
		return errors.New("open the stream with Hello")
	}
	if err := stream.Send(&osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Welcome{Welcome: &osvcv1.Welcome{
		Agent: "agents/" + first.GetHello().GetName(), HeartbeatInterval: durationpb.New(b.heartbeat),
	}}}); err != nil {
		return err
	}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Ack{Ack: &osvcv1.Ack{Id: req.GetId()}}}); err != nil {
			return err
		}
	}
}
