package api

import (
	"context"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/status"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/agentsvc"
	"github.com/osvc/osvc/server/auth"
	"github.com/osvc/osvc/server/store"
)

type agentServer struct {
	osvcv1.UnimplementedAgentServiceServer
	svc    *agentsvc.Service
	access *auth.Access
	logger hclog.Logger
}

// NewAgentServer serves AgentService from a: Connect is agentsvc's stream;
// enrollment, renewal and revocation are access's.
func NewAgentServer(a *agentsvc.Service, access *auth.Access, logger hclog.Logger) osvcv1.AgentServiceServer {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &agentServer{svc: a, access: access, logger: logger.Named("api.agents")}
}

func (a *agentServer) CreateJoinToken(ctx context.Context, req *osvcv1.CreateJoinTokenRequest) (*osvcv1.CreateJoinTokenResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	text, jt, err := a.access.CreateJoinToken(ctx, p.ID, req)
	if err != nil {
		return nil, Status(err)
	}
	auth.SetAuditPrincipal(ctx, "", "join-tokens/"+jt.GetId())
	a.logger.Info("join token created", "id", jt.GetId(), "site", jt.GetSite(), "uses", jt.GetUsesLeft(), "expires", jt.GetExpireTime().AsTime(), "by", p.ID)
	return &osvcv1.CreateJoinTokenResponse{Token: text, Id: jt.GetId(), ExpireTime: jt.GetExpireTime()}, nil
}

func (a *agentServer) ListJoinTokens(ctx context.Context, _ *osvcv1.ListJoinTokensRequest) (*osvcv1.ListJoinTokensResponse, error) {
	jts, err := a.access.ListJoinTokens(ctx)
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.ListJoinTokensResponse{JoinTokens: jts}, nil
}

func (a *agentServer) RevokeJoinToken(ctx context.Context, req *osvcv1.RevokeJoinTokenRequest) (*osvcv1.RevokeJoinTokenResponse, error) {
	if err := a.access.RevokeJoinToken(ctx, req.GetId()); err != nil {
		return nil, Status(err)
	}
	a.logger.Info("join token revoked", "id", req.GetId())
	return &osvcv1.RevokeJoinTokenResponse{}, nil
}

func (a *agentServer) Enroll(ctx context.Context, req *osvcv1.EnrollRequest) (*osvcv1.EnrollResponse, error) {
	resp, by, err := a.access.Enroll(ctx, req.GetJoinToken(), req.GetCsr())
	if err != nil {
		auth.SetAuditPrincipal(ctx, by, "")
		return nil, Status(err)
	}
	auth.SetAuditPrincipal(ctx, by, "agents/"+resp.GetName())
	a.logger.Info("agent enrolled", "agent", resp.GetName(), "site", resp.GetSite(), "join_token", by)
	return resp, nil
}

func (a *agentServer) RenewCertificate(ctx context.Context, req *osvcv1.RenewCertificateRequest) (*osvcv1.RenewCertificateResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	cert, err := a.access.Renew(ctx, p, req.GetCsr())
	if err != nil {
		return nil, Status(err)
	}
	a.logger.Info("agent certificate renewed", "agent", p.Agent)
	return &osvcv1.RenewCertificateResponse{Certificate: cert}, nil
}

func (a *agentServer) RevokeAgent(ctx context.Context, req *osvcv1.RevokeAgentRequest) (*osvcv1.RevokeAgentResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := a.access.RevokeAgent(ctx, p.ID, req.GetName(), req.GetReason()); err != nil {
		return nil, Status(err)
	}
	a.logger.Warn("agent revoked", "agent", req.GetName(), "reason", req.GetReason(), "by", p.ID)
	return &osvcv1.RevokeAgentResponse{}, nil
}

func (a *agentServer) DeleteAgent(ctx context.Context, req *osvcv1.DeleteAgentRequest) (*osvcv1.DeleteAgentResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	id := agents.ID(req.GetName())
	// Revoked in the same transaction: a deleted agent comes back only by
	// enrolling again.
	err = a.svc.DeleteAgent(ctx, req.GetName(), func(tx *store.Tx) error {
		return a.access.RevokeAgentWithin(tx, p.ID, id, "agent deleted")
	})
	if err != nil {
		return nil, Status(err)
	}
	a.logger.Warn("agent deleted and revoked", "agent", req.GetName(), "by", p.ID)
	return &osvcv1.DeleteAgentResponse{}, nil
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
