package transfer

import (
	"context"
	"errors"
	"fmt"
	"os"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// Client moves blobs over one ContentService connection. It carries Fetch,
// Download and Upload as methods, so that code needing only "fetch a blob"
// or "store a file" can take a small interface and tests can hand it
// something else. On the library's own machine it takes blobs from the
// library's volume instead of reading them over the connection.
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

// Use is what the caller does with a fetched file, which decides what a
// client on the library's volume may hand it.
type Use int

const (
	// Writable: the caller may write the file (a servicing run mounts its
	// copy read-write and commits into it). Taken from the library's volume
	// it is a copy of its own, whose blocks the kernel clones where the file
	// system can (btrfs, XFS): writing it never touches the library's blob.
	Writable Use = iota
	// ReadOnly: the caller only ever reads the file (an inspection). Taken
	// from the library's volume it may be a hard link to the library's
	// blob: writing it, or changing its times or mode, would change the
	// blob itself.
	ReadOnly
)

// Source says where Fetch took a file from.
type Source int

const (
	// Downloaded over ContentService.Read.
	Downloaded Source = iota
	// Copied from the library's file on this machine.
	Copied
	// Linked: a hard link to the library's file on this machine.
	Linked
)

func (s Source) String() string {
	switch s {
	case Copied:
		return "copied from the content library's volume"
	case Linked:
		return "linked to the content library's file"
	default:
		return "downloaded from the content library"
	}
}

// Fetch makes dst a verified copy of the blob sha256 for use. When the
// client sees the library's own folder (see Locate: the agent beside the
// server, as in `make demo`), it links (ReadOnly) or copies the library's
// file, hashing it as it goes; otherwise, or when that folder cannot be
// read from here, it downloads the blob (see Download).
func (c *Client) Fetch(ctx context.Context, sha256, dst string, use Use, progress ProgressFunc) (Source, error) {
	if !ValidSHA256(sha256) {
		return 0, fmt.Errorf("fetch %q: not a sha256 (want 64 lower-case hex digits)", sha256)
	}
	if progress == nil {
		progress = func(int64, int64) {}
	}
	src, err := c.fetchLocal(ctx, sha256, dst, use, progress)
	if !errors.Is(err, errNotLocal) {
		return src, err
	}
	return Downloaded, Download(ctx, c.content, sha256, dst, progress)
}

// DownloadDelta is DownloadDelta over the client's connection, for the
// agent's cache: have are the files it holds. On the library's own machine
// it copies the library's file instead (see Fetch).
func (c *Client) DownloadDelta(ctx context.Context, sha256, dst string, have []LocalBlob, progress ProgressFunc) (Delta, error) {
	if progress == nil {
		progress = func(int64, int64) {}
	}
	if _, err := c.fetchLocal(ctx, sha256, dst, Writable, progress); !errors.Is(err, errNotLocal) {
		return Delta{}, err
	}
	return DownloadDelta(ctx, c.content, sha256, dst, have, progress)
}

// Download is Fetch of a Writable file, for the update cache.
func (c *Client) Download(ctx context.Context, sha256, dst string, progress ProgressFunc) error {
	_, err := c.Fetch(ctx, sha256, dst, Writable, progress)
	return err
}

// Store stores the file at path in the content library and takes it: once
// stored, path is gone. When the client sees the library's own folder (see
// LocateLibrary: the agent beside the server), it moves the file into the
// library's incoming folder and has the server Adopt it, which makes the
// file itself the blob instead of receiving a copy over the connection;
// otherwise, or when that is refused, the file is uploaded (Upload) and
// then removed (a file that cannot be removed is left). Either way the answer must name the sha256 the file hashes
// to here. On an error the file is left at path.
func (c *Client) Store(ctx context.Context, path, mediaType string, progress ProgressFunc) (*osvcv1.Content, error) {
	if progress == nil {
		progress = func(int64, int64) {}
	}
	content, err := c.storeLocal(ctx, path, mediaType, progress)
	if !errors.Is(err, errNotLocal) {
		return content, err
	}
	content, err = Upload(ctx, c.content, path, mediaType, progress)
	if err != nil {
		return nil, err
	}
	os.Remove(path)
	return content, nil
}
