package api

import (
	"context"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/distribution"
	"github.com/osvc/osvc/server/servicing"
)

type imageServer struct {
	osvcv1.UnimplementedImageServiceServer
	catalog   *catalog.Catalog
	servicing *servicing.Service
	dist      *distribution.Service
	logger    hclog.Logger
}

// NewImageServer serves the image catalog over ImageService; servicing
// queues the inspection runs of imported images.
func NewImageServer(c *catalog.Catalog, svc *servicing.Service, dist *distribution.Service, logger hclog.Logger) osvcv1.ImageServiceServer {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &imageServer{catalog: c, servicing: svc, dist: dist, logger: logger.Named("images")}
}

func (s *imageServer) ImportImage(ctx context.Context, req *osvcv1.ImportImageRequest) (*osvcv1.ImportImageResponse, error) {
	img, run, err := s.servicing.ImportImage(ctx, catalog.ImportImage{
		ID:            req.GetImageId(),
		DisplayName:   req.GetDisplayName(),
		Site:          req.GetSite(),
		ContentSHA256: req.GetContentSha256(),
		TreeSHA256:    req.GetTreeSha256(),
		Kind:          req.GetKind(),
	})
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.ImportImageResponse{Image: img, InspectionRun: run.GetName()}, nil
}

func (s *imageServer) InspectImage(ctx context.Context, req *osvcv1.InspectImageRequest) (*osvcv1.InspectImageResponse, error) {
	img, run, err := s.servicing.Inspect(ctx, req.GetName())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.InspectImageResponse{Image: img, InspectionRun: run.GetName()}, nil
}

func (s *imageServer) GetImage(ctx context.Context, req *osvcv1.GetImageRequest) (*osvcv1.GetImageResponse, error) {
	img, err := s.catalog.GetImage(ctx, req.GetName())
	if err != nil {
		return nil, Status(err)
	}
	if img.Distributions, err = s.dist.OfImage(ctx, img); err != nil {
		return nil, Status(err)
	}
	id, _ := catalog.ImageID(img.GetName())
	if err := s.fillScheduled(ctx, id, img); err != nil {
		return nil, Status(err)
	}
	return &osvcv1.GetImageResponse{Image: img}, nil
}

func (s *imageServer) ListImages(ctx context.Context, req *osvcv1.ListImagesRequest) (*osvcv1.ListImagesResponse, error) {
	if err := checkCatalogPageSize(req.GetPageSize()); err != nil {
		return nil, Status(err)
	}
	imgs, next, err := s.catalog.ListImages(ctx, req.GetSite(), int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, Status(err)
	}
	if err := s.fillScheduled(ctx, "", imgs...); err != nil {
		return nil, Status(err)
	}
	return &osvcv1.ListImagesResponse{Images: imgs, NextPageToken: next}, nil
}

// fillScheduled sets the images' Scheduled Updates Date from their
// schedules (imageID "" reads every image's).
func (s *imageServer) fillScheduled(ctx context.Context, imageID string, imgs ...*osvcv1.Image) error {
	next, err := s.servicing.NextOccurrences(ctx, imageID)
	if err != nil {
		return err
	}
	for _, img := range imgs {
		if at, ok := next[img.GetName()]; ok {
			img.ScheduledUpdatesTime = timestamppb.New(at)
		}
	}
	return nil
}

func (s *imageServer) RollbackImage(ctx context.Context, req *osvcv1.RollbackImageRequest) (*osvcv1.RollbackImageResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	img, err := s.servicing.Rollback(ctx, req.GetName(), req.GetToVersion(), p.ID, req.GetReason())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.RollbackImageResponse{Image: img}, nil
}

func (s *imageServer) DeleteImage(ctx context.Context, req *osvcv1.DeleteImageRequest) (*osvcv1.DeleteImageResponse, error) {
	if err := s.servicing.DeleteImage(ctx, req.GetName()); err != nil {
		return nil, Status(err)
	}
	return &osvcv1.DeleteImageResponse{}, nil
}
