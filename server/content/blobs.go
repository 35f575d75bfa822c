package content

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/osvc/osvc/pkg/errdefs"
)

// Blobs is where the library keeps the data of its blobs, each under its
// sha256: a directory of this server (the default) or an S3-compatible
// bucket that several servers share (package s3store). The Library keeps
// the records in etcd, checks what it receives and decides what is
// published; Blobs only moves bytes. Every sha256 a Blobs is given has
// passed ValidSHA256, and an implementation checks it again before it
// makes a path or key of it.
type Blobs interface {
	// Stage stores what r yields where no reader of blobs sees it, until
	// Publish names it. expect, when not empty, is the sha256 the caller
	// expects the data to have: a store may stage straight under that
	// name as long as nothing is visible there before Publish. An error of
	// r ends Stage with that error (wrapped) and leaves nothing staged.
	Stage(ctx context.Context, r io.Reader, expect string) (Staged, error)
	// Open opens the blob for reading; errdefs.ErrNotFound when absent.
	Open(ctx context.Context, sha string) (Blob, error)
	// Stat returns the blob's size and when it was stored;
	// errdefs.ErrNotFound when absent.
	Stat(ctx context.Context, sha string) (BlobInfo, error)
	// Touch sets the blob's modification time (BlobInfo.ModTime) to now:
	// a writer reusing a stored chunk tells the collector it is wanted.
	// errdefs.ErrNotFound when absent. Meant for chunks: an object store
	// may copy the object onto itself to do it.
	Touch(ctx context.Context, sha string) error
	// Delete removes the blob; a blob already gone is no error.
	Delete(ctx context.Context, sha string) error
	// List calls fn with every blob, in no particular order, until fn
	// returns an error.
	List(ctx context.Context, fn func(BlobInfo) error) error
	// RemoveStale removes what uploads that never ended (a crash, a lost
	// connection) left staged, once older than age; it logs what it
	// removes and reports how many.
	RemoveStale(ctx context.Context, age time.Duration) int
	// Shared tells whether other servers use the same blobs: the library
	// then excludes their writers and collectors per blob through etcd.
	Shared() bool
	// String names the store in logs: its directory or its bucket.
	String() string
}

// Staged is data Blobs.Stage received, not yet a blob.
type Staged interface {
	// Publish makes the staged data the blob sha, which the caller checked
	// it is: from then on readers see it whole, never before.
	Publish(ctx context.Context, sha string) error
	// Discard removes what is left of the staged data (after Publish, only
	// temporary copies); it is called once, whatever happened.
	Discard()
}

// Blob is an open blob.
type Blob interface {
	// ReadAt reads at any offset; for an object store each call is a
	// request of its own, so it suits a few small reads (a header).
	io.ReaderAt
	io.Closer
	// Size is the blob's size in bytes.
	Size() int64
	// Stream reads n bytes from off in order, as one request to an object
	// store: for downloads. Closing the blob ends it. (A blob stored as
	// chunks fetches a few of them at once, ahead of the reader; its Close
	// waits for those fetches to end.) StreamRanges reads several ranges.
	Stream(off, n int64) (io.Reader, error)
}

// Range is Length bytes of a blob from Offset.
type Range struct {
	Offset, Length int64
}

// StreamRanges reads ranges of blob, in order and not overlapping, as one
// stream returning their bytes back to back, as a delta download asks for
// the chunks it lacks. A blob stored as chunks fetches a few chunks ahead
// of the reader across the ranges, as its Stream does within one: a
// download of many separate chunks from a bucket far away waits for their
// round trips together, not one after another. Another blob is read one
// Stream a range, each opened when the reader reaches it. Closing the blob
// ends the stream.
func StreamRanges(blob Blob, ranges []Range) (io.Reader, error) {
	var spans []Range
	var prev int64
	for i, r := range ranges {
		if r.Offset < prev || r.Length < 0 || r.Offset+r.Length > blob.Size() {
			return nil, fmt.Errorf("stream range %d, %d bytes at %d: not within the blob's %d bytes after the range before it: %w",
				i, r.Length, r.Offset, blob.Size(), errdefs.ErrOutOfRange)
		}
		prev = r.Offset + r.Length
		// An empty range has nothing to read: no chunk to fetch (the one
		// holding its offset would be), no request to make.
		if r.Length > 0 {
			spans = append(spans, r)
		}
	}
	if b, ok := blob.(*chunkedBlob); ok {
		return b.streamRanges(spans), nil
	}
	return &rangeStreams{blob: blob, ranges: spans}, nil
}

// rangeStreams reads ranges of a blob, none empty, one Stream after another.
type rangeStreams struct {
	blob   Blob
	ranges []Range
	// r reads ranges[0], left bytes of it to come; nil before it is open.
	r    io.Reader
	left int64
}

func (s *rangeStreams) Read(p []byte) (int, error) {
	if s.r == nil {
		if len(s.ranges) == 0 {
			return 0, io.EOF
		}
		r, err := s.blob.Stream(s.ranges[0].Offset, s.ranges[0].Length)
		if err != nil {
			return 0, err
		}
		s.r, s.left = r, s.ranges[0].Length
	}
	n, err := s.r.Read(p[:min(int64(len(p)), s.left)])
	s.left -= int64(n)
	if s.left == 0 || errors.Is(err, io.EOF) {
		// A range cut short would hand the next range's bytes to the
		// reader as its own.
		if s.left > 0 {
			return n, fmt.Errorf("stream %d bytes at %d: the last %d missing: %w", s.ranges[0].Length, s.ranges[0].Offset, s.left, io.ErrUnexpectedEOF)
		}
		s.r, s.ranges, err = nil, s.ranges[1:], nil
	}
	return n, err
}

// BlobInfo describes a stored blob.
type BlobInfo struct {
	SHA256    string
	SizeBytes int64
	// ModTime is when the blob was stored (a directory's file time, an
	// object's last modification).
	ModTime time.Time
}
