package api

import (
	"context"

	"github.com/hashicorp/go-hclog"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/catalog"
)

type imageServer struct {
	osvcv1.UnimplementedImageServiceServer
	catalog *catalog.Catalog
	logger  hclog.Logger
}

// NewImageServer serves the image catalog over ImageService.
func NewImageServer(c *catalog.Catalog, logger hclog.Logger) osvcv1.ImageServiceServer {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &imageServer{catalog: c, logger: logger.Named("images")}
}

func (s *imageServer) ImportImage(ctx context.Context, req *osvcv1.ImportImageRequest) (*osvcv1.ImportImageResponse, error) {
	img, err := s.catalog.ImportImage(ctx, catalog.ImportImage{
		ID:            req.GetImageId(),
		DisplayName:   req.GetDisplayName(),
		Site:          req.GetSite(),
		ContentSHA256: req.GetContentSha256(),
		Kind:          req.GetKind(),
	})
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.ImportImageResponse{Image: img}, nil
}

func (s *imageServer) GetImage(ctx context.Context, req *osvcv1.GetImageRequest) (*osvcv1.GetImageResponse, error) {
	img, err := s.catalog.GetImage(ctx, req.GetName())
	if err != nil {
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
	return &osvcv1.ListImagesResponse{Images: imgs, NextPageToken: next}, nil
}
