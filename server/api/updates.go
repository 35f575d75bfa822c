package api

import (
	"context"
	"strconv"

	"github.com/hashicorp/go-hclog"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/servicing"
)

type updateServer struct {
	osvcv1.UnimplementedUpdateServiceServer
	catalog   *catalog.Catalog
	servicing *servicing.Service
	logger    hclog.Logger
}

// NewUpdateServer serves the update catalog over UpdateService; servicing
// tells which updates its runs use before one is deleted.
func NewUpdateServer(c *catalog.Catalog, svc *servicing.Service, logger hclog.Logger) osvcv1.UpdateServiceServer {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &updateServer{catalog: c, servicing: svc, logger: logger.Named("updates")}
}

func (s *updateServer) DeleteUpdate(ctx context.Context, req *osvcv1.DeleteUpdateRequest) (*osvcv1.DeleteUpdateResponse, error) {
	if err := s.servicing.DeleteUpdate(ctx, req.GetName()); err != nil {
		return nil, Status(err)
	}
	return &osvcv1.DeleteUpdateResponse{}, nil
}

func (s *updateServer) ImportUpdates(ctx context.Context, req *osvcv1.ImportUpdatesRequest) (*osvcv1.ImportUpdatesResponse, error) {
	updates, err := s.catalog.ImportUpdates(ctx, req.GetFiles())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.ImportUpdatesResponse{Updates: updates}, nil
}

func (s *updateServer) GetUpdate(ctx context.Context, req *osvcv1.GetUpdateRequest) (*osvcv1.GetUpdateResponse, error) {
	u, err := s.catalog.GetUpdate(ctx, req.GetName())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.GetUpdateResponse{Update: u}, nil
}

func (s *updateServer) ListUpdates(ctx context.Context, req *osvcv1.ListUpdatesRequest) (*osvcv1.ListUpdatesResponse, error) {
	if err := checkCatalogPageSize(req.GetPageSize()); err != nil {
		return nil, Status(err)
	}
	updates, next, err := s.catalog.ListUpdates(ctx, req.GetFilter(), int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.ListUpdatesResponse{Updates: updates, NextPageToken: next}, nil
}

func (s *updateServer) ListApplicableUpdates(ctx context.Context, req *osvcv1.ListApplicableUpdatesRequest) (*osvcv1.ListApplicableUpdatesResponse, error) {
	if err := checkCatalogPageSize(req.GetPageSize()); err != nil {
		return nil, Status(err)
	}
	if _, err := catalog.ImageID(req.GetImage()); err != nil {
		return nil, Status(errdefs.InvalidArgument("image", "want images/{id}, got "+strconv.Quote(req.GetImage())))
	}
	updates, next, err := s.catalog.ListApplicableUpdates(ctx, req.GetImage(), req.GetFilter(), req.GetIncludeUnsupported(), int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.ListApplicableUpdatesResponse{Updates: updates, NextPageToken: next}, nil
}

// checkCatalogPageSize refuses a negative page size; zero means the default.
func checkCatalogPageSize(n int32) error {
	if n < 0 {
		return errdefs.InvalidArgument("page_size", "must not be negative; send 0 for the default of 50")
	}
	return nil
}
