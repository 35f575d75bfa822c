package api

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/content"
)

// readChunkSize is the data carried by one ReadResponse: well under gRPC's
// default 4 MiB message limit, large enough to keep per-message costs small.
const readChunkSize = 1 << 20

type contentServer struct {
	osvcv1.UnimplementedContentServiceServer
	lib    *content.Library
	logger hclog.Logger
}

// NewContentServer serves the content library over ContentService.
func NewContentServer(lib *content.Library, logger hclog.Logger) osvcv1.ContentServiceServer {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &contentServer{lib: lib, logger: logger.Named("content")}
}

// maxReadRanges bounds the ranges of one Read, so a request cannot make
// the server plan more than a chunk index's worth of reads.
const maxReadRanges = 4096

// chunkIndexPage is how many chunks one GetChunkIndexResponse carries:
// about 400 KB, well under gRPC's default 4 MiB message limit.
const chunkIndexPage = 8192

// Read streams a blob from an offset in chunks, or the ranges the request
// lists; the first chunk carries the blob's size. An offset at the end
// answers one empty chunk, so a client whose partial download is complete
// learns the size.
func (s *contentServer) Read(req *osvcv1.ReadRequest, stream grpc.ServerStreamingServer[osvcv1.ReadResponse]) error {
	if req.GetOffset() < 0 {
		return Status(errdefs.InvalidArgument("offset", fmt.Sprintf("%d is negative", req.GetOffset())))
	}
	if req.GetLimit() < 0 {
		return Status(errdefs.InvalidArgument("limit", fmt.Sprintf("%d is negative; send 0 to read to the end", req.GetLimit())))
	}
	if len(req.GetRanges()) > 0 && (req.GetOffset() != 0 || req.GetLimit() != 0) {
		return Status(errdefs.InvalidArgument("ranges", "give either ranges or an offset and limit, not both"))
	}
	if len(req.GetRanges()) > maxReadRanges {
		return Status(errdefs.InvalidArgument("ranges", fmt.Sprintf("%d ranges, more than the %d one request may list: ask for the rest in another", len(req.GetRanges()), maxReadRanges)))
	}
	ctx := stream.Context()
	blob, err := s.lib.Open(ctx, req.GetSha256())
	if err != nil {
		return Status(err)
	}
	defer blob.Close()
	size := blob.Size()
	ranges := req.GetRanges()
	if len(ranges) == 0 {
		offset := req.GetOffset()
		if offset > size {
			return Status(errdefs.Newf(errdefs.ErrOutOfRange, "offset %d is past the end of content %s (%d bytes)", offset, req.GetSha256(), size))
		}
		end := size
		if limit := req.GetLimit(); limit > 0 && offset+limit < size {
			end = offset + limit
		}
		ranges = []*osvcv1.ByteRange{{Offset: offset, Length: end - offset}}
	}
	var prev int64
	spans := make([]content.Range, len(ranges))
	for i, r := range ranges {
		if r.GetOffset() < prev || r.GetLength() < 0 || r.GetOffset()+r.GetLength() > size || (len(req.GetRanges()) > 0 && r.GetLength() == 0) {
			return Status(errdefs.InvalidArgument(fmt.Sprintf("ranges[%d]", i), fmt.Sprintf(
				"%d bytes from %d: a range has bytes, within the blob's %d, after the range before it", r.GetLength(), r.GetOffset(), size)))
		}
		prev = r.GetOffset() + r.GetLength()
		spans[i] = content.Range{Offset: r.GetOffset(), Length: r.GetLength()}
	}
	// One stream of all the ranges: a blob stored as chunks fetches the
	// next ranges' chunks while this one's are sent.
	r, err := content.StreamRanges(blob, spans)
	if err != nil {
		return Status(fmt.Errorf("read content %s at %d: %w", req.GetSha256(), spans[0].Offset, err))
	}
	buf := make([]byte, readChunkSize)
	first := true
	for _, rg := range spans {
		offset, end := rg.Offset, rg.Offset+rg.Length
		for first || offset < end {
			n := min(int64(len(buf)), end-offset)
			read, err := io.ReadFull(r, buf[:n])
			if err != nil {
				return Status(fmt.Errorf("read content %s at %d: %w", req.GetSha256(), offset, err))
			}
			resp := &osvcv1.ReadResponse{Offset: offset, Data: buf[:read]}
			if first {
				resp.SizeBytes = size
				first = false
			}
			// Send marshals before it returns, so buf can be reused.
			if err := stream.Send(resp); err != nil {
				return err
			}
			offset += int64(read)
		}
	}
	return nil
}

// GetChunkIndex streams a blob's chunk index in pages.
func (s *contentServer) GetChunkIndex(req *osvcv1.GetChunkIndexRequest, stream grpc.ServerStreamingServer[osvcv1.GetChunkIndexResponse]) error {
	idx, err := s.lib.ChunkIndex(stream.Context(), req.GetSha256())
	if err != nil {
		return Status(err)
	}
	all := idx.GetChunks()
	resp := &osvcv1.GetChunkIndexResponse{
		Sha256: idx.GetSha256(), SizeBytes: idx.GetSizeBytes(), Chunking: idx.GetChunking(), ChunkCount: int64(len(all)),
	}
	for first := true; first || len(all) > 0; first = false {
		n := min(len(all), chunkIndexPage)
		resp.Chunks, all = all[:n], all[n:]
		if err := stream.Send(resp); err != nil {
			return err
		}
		resp = &osvcv1.GetChunkIndexResponse{}
	}
	return nil
}

// Write stores an upload: a header, then data. When the header names a blob the
// library holds, it answers at once (existed) without reading the data.
func (s *contentServer) Write(stream grpc.ClientStreamingServer[osvcv1.WriteRequest, osvcv1.WriteResponse]) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return Status(errdefs.InvalidArgument("header", "the upload is empty; send the header first"))
	}
	if err != nil {
		return err
	}
	h := first.GetHeader()
	if h == nil {
		return Status(errdefs.InvalidArgument("header", "the first message must be the header, data follows it"))
	}
	// The library reads straight from the stream: no goroutine and no pipe, so
	// nothing touches the stream after this handler returns.
	data := &streamReader{stream: stream}
	c, existed, err := s.lib.Write(ctx, content.WriteHeader{
		SHA256:    h.GetSha256(),
		SizeBytes: h.GetSizeBytes(),
		MediaType: h.GetMediaType(),
		Trailer:   data.declared,
	}, data)
	if err != nil {
		s.logger.Debug("upload refused", "sha256", h.GetSha256(), "error", err)
		return Status(err)
	}
	return stream.SendAndClose(&osvcv1.WriteResponse{Content: c, Existed: existed})
}

// GetContent returns the record of a blob.
func (s *contentServer) GetContent(ctx context.Context, req *osvcv1.GetContentRequest) (*osvcv1.GetContentResponse, error) {
	c, err := s.lib.Stat(ctx, req.GetSha256())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.GetContentResponse{Content: c}, nil
}

// Locate tells where the library keeps a blob's file on this machine.
func (s *contentServer) Locate(ctx context.Context, req *osvcv1.LocateRequest) (*osvcv1.LocateResponse, error) {
	loc, err := s.lib.Locate(ctx, req.GetSha256())
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.LocateResponse{
		Path: loc.Path, SizeBytes: loc.SizeBytes, LibraryId: loc.LibraryID, LibraryIdPath: loc.LibraryIDPath,
	}, nil
}

// LocateLibrary tells where a client on this machine may leave a file for Adopt.
func (s *contentServer) LocateLibrary(ctx context.Context, req *osvcv1.LocateLibraryRequest) (*osvcv1.LocateLibraryResponse, error) {
	loc, err := s.lib.LocateLibrary()
	if err != nil {
		return nil, Status(err)
	}
	return &osvcv1.LocateLibraryResponse{
		IncomingPath: loc.IncomingPath, LibraryId: loc.LibraryID, LibraryIdPath: loc.LibraryIDPath,
	}, nil
}

// Adopt stores a file a client on this machine left in the incoming folder.
func (s *contentServer) Adopt(ctx context.Context, req *osvcv1.AdoptRequest) (*osvcv1.AdoptResponse, error) {
	c, existed, err := s.lib.Adopt(ctx, req.GetName(), content.WriteHeader{
		SHA256:    req.GetSha256(),
		SizeBytes: req.GetSizeBytes(),
		MediaType: req.GetMediaType(),
	})
	if err != nil {
		s.logger.Debug("adoption refused", "name", req.GetName(), "error", err)
		return nil, Status(err)
	}
	return &osvcv1.AdoptResponse{Content: c, Existed: existed}, nil
}

// streamReader reads the data messages of an upload as one byte stream,
// keeping the trailer that may close it.
type streamReader struct {
	stream  grpc.ClientStreamingServer[osvcv1.WriteRequest, osvcv1.WriteResponse]
	buf     []byte
	trailer *osvcv1.WriteTrailer
}

// declared is the sha256 the trailer declared, "" without a trailer.
func (r *streamReader) declared() string { return r.trailer.GetSha256() }

func (r *streamReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		req, err := r.stream.Recv()
		if err != nil {
			return 0, err // io.EOF at the end of the upload
		}
		if r.trailer != nil {
			return 0, errdefs.InvalidArgument("trailer", "the trailer must be the upload's last message")
		}
		switch part := req.GetPart().(type) {
		case *osvcv1.WriteRequest_Header:
			return 0, errdefs.InvalidArgument("header", "only the first message carries the header")
		case *osvcv1.WriteRequest_Trailer:
			r.trailer = part.Trailer
		default:
			r.buf = req.GetData()
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}
