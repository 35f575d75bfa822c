package api

import (
	"context"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/names"
	"github.com/osvc/osvc/server/distribution"
)

type distributionServer struct {
	osvcv1.UnimplementedDistributionServiceServer
	dist *distribution.Service
}

// NewDistributionServer serves DistributionService.
func NewDistributionServer(d *distribution.Service) osvcv1.DistributionServiceServer {
	return &distributionServer{dist: d}
}

func (s *distributionServer) ListDistributionPoints(ctx context.Context, req *osvcv1.ListDistributionPointsRequest) (*osvcv1.ListDistributionPointsResponse, error) {
	if site := req.GetSite(); site != "" {
		if err := names.ValidateSite(site); err != nil {
			return nil, Status(errdefs.InvalidArgument("site", err.Error()))
		}
	}
	points, err := s.dist.Points(ctx, req.GetSite())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.ListDistributionPointsResponse{DistributionPoints: points}, nil
}

func (s *distributionServer) DistributeImage(ctx context.Context, req *osvcv1.DistributeImageRequest) (*osvcv1.DistributeImageResponse, error) {
	img, err := s.dist.Distribute(ctx, req.GetName())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.DistributeImageResponse{Image: img}, nil
}
