package transfer

import (
	"context"
	"errors"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// Client moves blobs over one ContentService connection. It carries Download
// and Upload as methods, so that code needing only "fetch a blob" or "store
// a file" can take a small interface and tests can hand it something else.
type Client struct {
	content osvcv1.ContentServiceClient
}

// NewClient returns a Client over the ContentService client c.
func NewClient(c osvcv1.ContentServiceClient) (*Client, error) {
	if c == nil {
		return nil, errors.New("transfer: a ContentService client is required")
	}
	return &Client{content: c}, nil
}

// Download is Download over the client's connection.
func (c *Client) Download(ctx context.Context, sha256, dst string, progress ProgressFunc) error {
	return Download(ctx, c.content, sha256, dst, progress)
}

// Upload is Upload over the client's connection.
func (c *Client) Upload(ctx context.Context, path, mediaType string, progress ProgressFunc) (*osvcv1.Content, error) {
	return Upload(ctx, c.content, path, mediaType, progress)
}
