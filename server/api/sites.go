package api

import (
	"context"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/sites"
)

type siteServer struct {
	osvcv1.UnimplementedSiteServiceServer
	sites *sites.Registry
}

// NewSiteServer serves the sites of the hierarchy over SiteService.
func NewSiteServer(r *sites.Registry) osvcv1.SiteServiceServer {
	return &siteServer{sites: r}
}

func (s *siteServer) CreateSite(ctx context.Context, req *osvcv1.CreateSiteRequest) (*osvcv1.CreateSiteResponse, error) {
	site, err := s.sites.Create(ctx, req.GetSite())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.CreateSiteResponse{Site: site}, nil
}

func (s *siteServer) GetSite(ctx context.Context, req *osvcv1.GetSiteRequest) (*osvcv1.GetSiteResponse, error) {
	site, err := s.sites.Get(ctx, req.GetName())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.GetSiteResponse{Site: site}, nil
}

func (s *siteServer) ListSites(ctx context.Context, req *osvcv1.ListSitesRequest) (*osvcv1.ListSitesResponse, error) {
	if err := checkCatalogPageSize(req.GetPageSize()); err != nil {
		return nil, Status(err)
	}
	list, next, err := s.sites.List(ctx, int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.ListSitesResponse{Sites: list, NextPageToken: next}, nil
}

func (s *siteServer) UpdateSite(ctx context.Context, req *osvcv1.UpdateSiteRequest) (*osvcv1.UpdateSiteResponse, error) {
	site, err := s.sites.Update(ctx, req.GetSite(), req.GetUpdateMask().GetPaths())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.UpdateSiteResponse{Site: site}, nil
}

func (s *siteServer) DeleteSite(ctx context.Context, req *osvcv1.DeleteSiteRequest) (*osvcv1.DeleteSiteResponse, error) {
	if err := s.sites.Delete(ctx, req.GetName()); err != nil {
		return nil, Status(err)
	}
	return &osvcv1.DeleteSiteResponse{}, nil
}
