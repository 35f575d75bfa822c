package api

import (
	"context"
	"time"

	"github.com/hashicorp/go-hclog"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/auth"
)

type accessServer struct {
	osvcv1.UnimplementedAccessServiceServer
	access *auth.Access
	audit  *auth.Audit
	logger hclog.Logger
}

// NewAccessServer serves AccessService: tokens and the audit trail.
func NewAccessServer(access *auth.Access, audit *auth.Audit, logger hclog.Logger) osvcv1.AccessServiceServer {
	return &accessServer{access: access, audit: audit, logger: logger.Named("api.access")}
}

// caller is the principal the interceptor authenticated; a handler behind
// it always has one.
func caller(ctx context.Context) (*auth.Principal, error) {
	p, ok := auth.FromContext(ctx)
	if !ok {
		return nil, Status(errdefs.Newf(errdefs.ErrUnauthenticated, "no credential"))
	}
	return p, nil
}

func (s *accessServer) CreateToken(ctx context.Context, req *osvcv1.CreateTokenRequest) (*osvcv1.CreateTokenResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	tok, secret, err := s.access.CreateToken(ctx, p.ID, req)
	if err != nil {
		return nil, Status(err)
	}
	auth.SetAuditPrincipal(ctx, "", "tokens/"+tok.GetId())
	s.logger.Info("token created", "id", tok.GetId(), "role", auth.RoleName(tok.GetRole()), "sites", tok.GetSites(), "by", p.ID)
	return &osvcv1.CreateTokenResponse{Token: tok, Secret: secret}, nil
}

func (s *accessServer) ListTokens(ctx context.Context, _ *osvcv1.ListTokensRequest) (*osvcv1.ListTokensResponse, error) {
	toks, err := s.access.ListTokens(ctx)
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.ListTokensResponse{Tokens: toks}, nil
}

func (s *accessServer) RevokeToken(ctx context.Context, req *osvcv1.RevokeTokenRequest) (*osvcv1.RevokeTokenResponse, error) {
	if err := s.access.RevokeToken(ctx, req.GetId()); err != nil {
		return nil, Status(err)
	}
	s.logger.Info("token revoked", "id", req.GetId())
	return &osvcv1.RevokeTokenResponse{}, nil
}

func (s *accessServer) WhoAmI(ctx context.Context, _ *osvcv1.WhoAmIRequest) (*osvcv1.WhoAmIResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	return &osvcv1.WhoAmIResponse{Principal: p.ID, Role: p.Role, Sites: p.Sites}, nil
}

func (s *accessServer) ListAuditEvents(ctx context.Context, req *osvcv1.ListAuditEventsRequest) (*osvcv1.ListAuditEventsResponse, error) {
	if req.GetPageSize() < 0 {
		return nil, Status(errdefs.InvalidArgument("page_size", "send 0 for the default or a positive size"))
	}
	var since time.Time
	if req.GetSince() != nil {
		since = req.GetSince().AsTime()
	}
	evs, next, err := s.audit.List(ctx, since, req.GetPrincipal(), int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.ListAuditEventsResponse{Events: evs, NextPageToken: next}, nil
}
