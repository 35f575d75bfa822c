package api_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/api"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/content/s3store"
	"github.com/osvc/osvc/server/content/s3store/s3test"
	"github.com/osvc/osvc/server/store/storetest"
)

type contentAPI struct {
	client osvcv1.ContentServiceClient
	lib    *content.Library
	dir    string
}

// startContentAPI serves a real Library on a storetest store over bufconn.
func startContentAPI(t *testing.T) *contentAPI {
	t.Helper()
	return startContentAPIWith(t, content.Config{})
}

// startContentAPIWith is startContentAPI with cfg's limits.
func startContentAPIWith(t *testing.T, cfg content.Config) *contentAPI {
	t.Helper()
	dir := t.TempDir()
	// cfg.Blobs, when set, keeps the blobs; dir then holds temporary copies.
	cfg.Dir, cfg.Store, cfg.Logger = dir, storetest.New(t), hclog.NewNullLogger()
	lib, err := content.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	osvcv1.RegisterContentServiceServer(srv, api.NewContentServer(lib, hclog.NewNullLogger()))
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(lis)
	}()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		<-served
	})
	return &contentAPI{client: osvcv1.NewContentServiceClient(conn), lib: lib, dir: dir}
}

func sha(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

// blob returns n bytes that differ from chunk to chunk, so a misplaced chunk shows.
func blob(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/1024)
	}
	return b
}

func header(h *osvcv1.WriteHeader) *osvcv1.WriteRequest {
	return &osvcv1.WriteRequest{Part: &osvcv1.WriteRequest_Header{Header: h}}
}

func chunk(b []byte) *osvcv1.WriteRequest {
	return &osvcv1.WriteRequest{Part: &osvcv1.WriteRequest_Data{Data: b}}
}

func trailer(sha256 string) *osvcv1.WriteRequest {
	return &osvcv1.WriteRequest{Part: &osvcv1.WriteRequest_Trailer{Trailer: &osvcv1.WriteTrailer{Sha256: sha256}}}
}

// upload sends the messages and returns the server's answer.
func (a *contentAPI) upload(t *testing.T, msgs ...*osvcv1.WriteRequest) (*osvcv1.WriteResponse, error) {
	t.Helper()
	stream, err := a.client.Write(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			break // the server answered early; CloseAndRecv says how
		}
	}
	return stream.CloseAndRecv()
}

// readAll reads a blob with Read and returns the data and the responses.
func (a *contentAPI) readAll(t *testing.T, req *osvcv1.ReadRequest) ([]byte, []*osvcv1.ReadResponse, error) {
	t.Helper()
	return a.readAllWithin(context.Background(), t, req)
}

// readAllWithin is readAll within ctx.
func (a *contentAPI) readAllWithin(ctx context.Context, t *testing.T, req *osvcv1.ReadRequest) ([]byte, []*osvcv1.ReadResponse, error) {
	t.Helper()
	stream, err := a.client.Read(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var data []byte
	var resps []*osvcv1.ReadResponse
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return data, resps, nil
		}
		if err != nil {
			return nil, nil, err
		}
		resps = append(resps, resp)
		data = append(data, resp.GetData()...)
	}
}

func badRequestField(err error) string {
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
			return br.GetFieldViolations()[0].GetField()
		}
	}
	return ""
}

func blobFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && path != filepath.Join(dir, content.LibraryIDFile) {
			n++
		}
		return err
	})
	return n
}

func TestContentUploadStoresTheBlob(t *testing.T) {
	t.Parallel()
	a := startContentAPI(t)
	data := blob(2*(1<<20) + 1000)
	resp, err := a.upload(t,
		header(&osvcv1.WriteHeader{Sha256: sha(data), SizeBytes: int64(len(data)), MediaType: "application/x-ms-wim"}),
		chunk(data[:1<<20]), chunk(data[1<<20:]))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetExisted() || resp.GetContent().GetSha256() != sha(data) || resp.GetContent().GetSizeBytes() != int64(len(data)) {
		t.Fatalf("Write = %v", resp)
	}
	got, err := a.client.GetContent(context.Background(), &osvcv1.GetContentRequest{Sha256: sha(data)})
	if err != nil || got.GetContent().GetMediaType() != "application/x-ms-wim" {
		t.Fatalf("GetContent = %v, %v", got, err)
	}
	stored, err := os.ReadFile(a.lib.Path(sha(data)))
	if err != nil || !bytes.Equal(stored, data) {
		t.Fatalf("stored blob differs (%d bytes, %v)", len(stored), err)
	}
}

func TestContentUploadOfAHeldBlobAnswersBeforeTheData(t *testing.T) {
	t.Parallel()
	a := startContentAPI(t)
	data := blob(5000)
	if _, err := a.upload(t, header(&osvcv1.WriteHeader{}), chunk(data)); err != nil {
		t.Fatal(err)
	}
	stream, err := a.client.Write(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(header(&osvcv1.WriteHeader{Sha256: sha(data), SizeBytes: int64(len(data))})); err != nil {
		t.Fatal(err)
	}
	// No data and no CloseSend: only a server that answers at once replies here.
	var resp osvcv1.WriteResponse
	if err := stream.RecvMsg(&resp); err != nil {
		t.Fatal(err)
	}
	if !resp.GetExisted() || resp.GetContent().GetSha256() != sha(data) {
		t.Fatalf("Write = %v, want existed", &resp)
	}
}

func TestContentUploadRefusals(t *testing.T) {
	t.Parallel()
	data := blob(3000)
	tests := []struct {
		name  string
		msgs  []*osvcv1.WriteRequest
		field string
	}{
		{
			name:  "a sha256 mismatch is refused",
			msgs:  []*osvcv1.WriteRequest{header(&osvcv1.WriteHeader{Sha256: sha([]byte("other"))}), chunk(data)},
			field: "sha256",
		},
		{
			name:  "a size mismatch is refused",
			msgs:  []*osvcv1.WriteRequest{header(&osvcv1.WriteHeader{SizeBytes: 10}), chunk(data)},
			field: "size_bytes",
		},
		{
			name:  "data before the header is refused",
			msgs:  []*osvcv1.WriteRequest{chunk(data)},
			field: "header",
		},
		{
			name:  "a second header is refused",
			msgs:  []*osvcv1.WriteRequest{header(&osvcv1.WriteHeader{}), chunk(data), header(&osvcv1.WriteHeader{})},
			field: "header",
		},
		{
			name:  "an empty upload is refused",
			field: "header",
		},
		{
			name:  "a malformed sha256 is refused",
			msgs:  []*osvcv1.WriteRequest{header(&osvcv1.WriteHeader{Sha256: "../../x"}), chunk(data)},
			field: "sha256",
		},
		{
			name:  "data damaged on the way, which no longer hashes to the trailer's sha256, is refused",
			msgs:  []*osvcv1.WriteRequest{header(&osvcv1.WriteHeader{SizeBytes: int64(len(data))}), chunk(data[:1000]), chunk(blob(2000)), trailer(sha(data))},
			field: "trailer.sha256",
		},
		{
			name:  "data cut short of the announced size is refused though the trailer hashes what came",
			msgs:  []*osvcv1.WriteRequest{header(&osvcv1.WriteHeader{SizeBytes: int64(len(data))}), chunk(data[:1000]), trailer(sha(data[:1000]))},
			field: "size_bytes",
		},
		{
			name:  "a message after the trailer is refused",
			msgs:  []*osvcv1.WriteRequest{header(&osvcv1.WriteHeader{}), chunk(data), trailer(sha(data)), chunk(data)},
			field: "trailer",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name+" and nothing is stored", func(t *testing.T) {
			t.Parallel()
			a := startContentAPI(t)
			_, err := a.upload(t, tt.msgs...)
			if status.Code(err) != codes.InvalidArgument || badRequestField(err) != tt.field {
				t.Fatalf("Write: got %v (field %q), want InvalidArgument on %s", err, badRequestField(err), tt.field)
			}
			if n := blobFiles(t, a.dir); n != 0 {
				t.Fatalf("%d files left in the library", n)
			}
			_, err = a.client.GetContent(context.Background(), &osvcv1.GetContentRequest{Sha256: sha(data)})
			if status.Code(err) != codes.NotFound {
				t.Fatalf("GetContent after a refused upload: %v, want NotFound", err)
			}
		})
	}
}

func TestContentUploadWithATrailerStoresTheBlobItNames(t *testing.T) {
	t.Parallel()
	a := startContentAPI(t)
	data := blob(2*(1<<20) + 1000)
	resp, err := a.upload(t, header(&osvcv1.WriteHeader{SizeBytes: int64(len(data))}), chunk(data[:1<<20]), chunk(data[1<<20:]), trailer(sha(data)))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetExisted() || resp.GetContent().GetSha256() != sha(data) || resp.GetContent().GetSizeBytes() != int64(len(data)) {
		t.Fatalf("Write = %v, want the new blob %s of %d bytes", resp, sha(data), len(data))
	}
	got, _, err := a.readAll(t, &osvcv1.ReadRequest{Sha256: sha(data)})
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Read after the upload: %d bytes, %v; want the data", len(got), err)
	}
}

func TestLocateNamesTheBlobsFileAndTheLibrarysIdentifier(t *testing.T) {
	t.Parallel()
	a := startContentAPI(t)
	data := blob(5000)
	if _, _, err := a.lib.Write(context.Background(), content.WriteHeader{}, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	loc, err := a.client.Locate(context.Background(), &osvcv1.LocateRequest{Sha256: sha(data)})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(loc.GetPath()); err != nil || !bytes.Equal(got, data) || loc.GetSizeBytes() != int64(len(data)) {
		t.Errorf("Locate path %s (%d bytes, %v), size %d: want the blob's file", loc.GetPath(), len(got), err, loc.GetSizeBytes())
	}
	if id, err := os.ReadFile(loc.GetLibraryIdPath()); err != nil || strings.TrimSpace(string(id)) != loc.GetLibraryId() || len(loc.GetLibraryId()) != 32 {
		t.Errorf("library id %q, its file %s holds %q (%v): want the same 32 hex digits", loc.GetLibraryId(), loc.GetLibraryIdPath(), id, err)
	}
	for _, tt := range []struct {
		sha  string
		code codes.Code
	}{{sha([]byte("absent")), codes.NotFound}, {"../../etc/passwd", codes.InvalidArgument}} {
		if _, err := a.client.Locate(context.Background(), &osvcv1.LocateRequest{Sha256: tt.sha}); status.Code(err) != tt.code {
			t.Errorf("Locate(%q) = %v, want %s", tt.sha, err, tt.code)
		}
	}
}

func TestContentUploadsPastTheMaximumSizeAreRefused(t *testing.T) {
	t.Parallel()
	data := blob(3000)
	for _, tt := range []struct {
		name string
		msgs []*osvcv1.WriteRequest
		says string
	}{
		{"announced in the header", []*osvcv1.WriteRequest{header(&osvcv1.WriteHeader{SizeBytes: 3000}), chunk(data)}, "announces 3000 bytes, more than the 2000"},
		{"found in the data", []*osvcv1.WriteRequest{header(&osvcv1.WriteHeader{}), chunk(data[:1500]), chunk(data[1500:])}, "passed 2000 bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := startContentAPIWith(t, content.Config{MaxBlobBytes: 2000})
			_, err := a.upload(t, tt.msgs...)
			if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), tt.says) ||
				!strings.Contains(err.Error(), "osvc-server --max-upload-bytes") {
				t.Fatalf("Write = %v; want ResourceExhausted saying %q and naming osvc-server --max-upload-bytes", err, tt.says)
			}
			if n := blobFiles(t, a.dir); n != 0 {
				t.Fatalf("%d files left in the library", n)
			}
		})
	}
}

func TestContentRead(t *testing.T) {
	t.Parallel()
	st, _ := s3test.NewStore(t, s3store.Config{})
	for name, blobs := range map[string]content.Blobs{"a directory": nil, "an object store": st} {
		t.Run("from "+name, func(t *testing.T) {
			t.Parallel()
			testContentRead(t, startContentAPIWith(t, content.Config{Blobs: blobs}))
		})
	}
}

func testContentRead(t *testing.T, a *contentAPI) {
	data := blob(2*(1<<20) + 123)
	if _, _, err := a.lib.Write(context.Background(), content.WriteHeader{}, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	sum := sha(data)
	size := int64(len(data))

	tests := []struct {
		name   string
		req    *osvcv1.ReadRequest
		want   []byte
		chunks int
	}{
		{name: "from zero sends the whole blob in 1 MiB chunks", req: &osvcv1.ReadRequest{Sha256: sum}, want: data, chunks: 3},
		{name: "from an offset sends the rest", req: &osvcv1.ReadRequest{Sha256: sum, Offset: 1<<20 + 5}, want: data[1<<20+5:], chunks: 2},
		{name: "with a limit stops after it", req: &osvcv1.ReadRequest{Sha256: sum, Offset: 10, Limit: 100}, want: data[10:110], chunks: 1},
		{name: "at the end sends one empty chunk with the size", req: &osvcv1.ReadRequest{Sha256: sum, Offset: size}, want: nil, chunks: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, resps, err := a.readAll(t, tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Fatalf("read %d bytes, want %d (or different bytes)", len(got), len(tt.want))
			}
			if len(resps) != tt.chunks {
				t.Fatalf("%d chunks, want %d", len(resps), tt.chunks)
			}
			offset := tt.req.GetOffset()
			for i, r := range resps {
				if r.GetOffset() != offset {
					t.Errorf("chunk %d at offset %d, want %d", i, r.GetOffset(), offset)
				}
				offset += int64(len(r.GetData()))
				wantSize := int64(0)
				if i == 0 {
					wantSize = size
				}
				if r.GetSizeBytes() != wantSize {
					t.Errorf("chunk %d size_bytes = %d, want %d", i, r.GetSizeBytes(), wantSize)
				}
			}
		})
	}

	errTests := []struct {
		name string
		req  *osvcv1.ReadRequest
		code codes.Code
	}{
		{name: "past the end is out of range", req: &osvcv1.ReadRequest{Sha256: sum, Offset: size + 1}, code: codes.OutOfRange},
		{name: "a negative offset is invalid", req: &osvcv1.ReadRequest{Sha256: sum, Offset: -1}, code: codes.InvalidArgument},
		{name: "a negative limit is invalid", req: &osvcv1.ReadRequest{Sha256: sum, Limit: -1}, code: codes.InvalidArgument},
		{name: "a blob the library lacks is not found", req: &osvcv1.ReadRequest{Sha256: sha([]byte("absent"))}, code: codes.NotFound},
		{name: "a malformed sha256 is invalid", req: &osvcv1.ReadRequest{Sha256: "nope"}, code: codes.InvalidArgument},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, _, err := a.readAll(t, tt.req); status.Code(err) != tt.code {
				t.Fatalf("Read: got %v, want %s", err, tt.code)
			}
		})
	}
}

func TestAnObjectStoreLibraryLocatesNoFiles(t *testing.T) {
	t.Parallel()
	st, _ := s3test.NewStore(t, s3store.Config{})
	a := startContentAPIWith(t, content.Config{Blobs: st})
	data := blob(100)
	if _, _, err := a.lib.Write(context.Background(), content.WriteHeader{}, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := a.client.Locate(ctx, &osvcv1.LocateRequest{Sha256: sha(data)}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Locate = %v, want FailedPrecondition", err)
	}
	if _, err := a.client.LocateLibrary(ctx, &osvcv1.LocateLibraryRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("LocateLibrary = %v, want FailedPrecondition", err)
	}
	if _, err := a.client.Adopt(ctx, &osvcv1.AdoptRequest{Name: strings.Repeat("0", 32), SizeBytes: 1}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Adopt = %v, want FailedPrecondition", err)
	}
}

func TestGetContentOfAMalformedSHA256NamesTheField(t *testing.T) {
	t.Parallel()
	a := startContentAPI(t)
	_, err := a.client.GetContent(context.Background(), &osvcv1.GetContentRequest{Sha256: "ABC"})
	if status.Code(err) != codes.InvalidArgument || badRequestField(err) != "sha256" {
		t.Fatalf("GetContent: got %v, want InvalidArgument on sha256", err)
	}
}

// noise returns n bytes that repeat nowhere, so that a blob of them is
// cut into chunks of its own and a misplaced byte shows.
func noise(n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{5}).Read(b)
	return b
}

// chunkRanges are the chunks of the blob sum, as ranges of it.
func (a *contentAPI) chunkRanges(t *testing.T, sum string) []*osvcv1.ByteRange {
	t.Helper()
	idx, err := a.lib.ChunkIndex(context.Background(), sum)
	if err != nil {
		t.Fatal(err)
	}
	var out []*osvcv1.ByteRange
	var off int64
	for _, c := range idx.GetChunks() {
		out = append(out, &osvcv1.ByteRange{Offset: off, Length: c.GetSizeBytes()})
		off += c.GetSizeBytes()
	}
	return out
}

func TestContentReadOfRangesSendsEachAtItsOffsets(t *testing.T) {
	t.Parallel()
	libraries := []struct {
		name string
		cfg  func(t *testing.T) content.Config
		// chunks: the library stores the blob as chunks.
		chunks bool
	}{
		{name: "a directory, the blob stored as chunks", chunks: true, cfg: func(*testing.T) content.Config { return content.Config{} }},
		{name: "an object store keeping blobs whole", cfg: func(t *testing.T) content.Config {
			blobs, _ := s3test.NewStore(t, s3store.Config{})
			return content.Config{Blobs: blobs}
		}},
		{name: "an object store, the blob stored as chunks", chunks: true, cfg: func(t *testing.T) content.Config {
			blobs, _ := s3test.NewStore(t, s3store.Config{})
			chunks, _ := s3test.NewStore(t, s3store.Config{})
			return content.Config{Blobs: blobs, Chunks: chunks}
		}},
	}
	data := noise(12 << 20)
	size := int64(len(data))
	r := func(off, n int64) *osvcv1.ByteRange { return &osvcv1.ByteRange{Offset: off, Length: n} }
	// Chunks are 1 MiB on average: these start and end within chunks,
	// share some, span several, and take several messages.
	ranges := []*osvcv1.ByteRange{
		r(10, 100), r(5000, 3<<20+7), r(3<<20+5007, 20), r(3<<20+6000, 1), r(9<<20, 1<<20), r(size-1000, 1000),
	}
	for _, l := range libraries {
		t.Run("from "+l.name, func(t *testing.T) {
			t.Parallel()
			a := startContentAPIWith(t, l.cfg(t))
			c, _, err := a.lib.Write(context.Background(), content.WriteHeader{}, bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			if c.GetStoredAsChunks() != l.chunks {
				t.Fatalf("stored as chunks: %v, want %v", c.GetStoredAsChunks(), l.chunks)
			}
			_, resps, err := a.readAll(t, &osvcv1.ReadRequest{Sha256: c.GetSha256(), Ranges: ranges})
			if err != nil {
				t.Fatal(err)
			}
			// Each range's messages in turn, back to back from its
			// offset, none past its end, the first carrying the size.
			for i, rg := range ranges {
				for off := rg.GetOffset(); off < rg.GetOffset()+rg.GetLength(); {
					if len(resps) == 0 {
						t.Fatalf("the read ended at %d, in range %d", off, i)
					}
					resp := resps[0]
					resps = resps[1:]
					end := off + int64(len(resp.GetData()))
					if resp.GetOffset() != off || len(resp.GetData()) == 0 || end > rg.GetOffset()+rg.GetLength() ||
						!bytes.Equal(resp.GetData(), data[off:end]) {
						t.Fatalf("range %d: %d bytes at %d, want up to %d at %d (or other bytes)",
							i, len(resp.GetData()), resp.GetOffset(), rg.GetOffset()+rg.GetLength()-off, off)
					}
					wantSize := int64(0)
					if i == 0 && off == rg.GetOffset() {
						wantSize = size
					}
					if resp.GetSizeBytes() != wantSize {
						t.Errorf("range %d: size_bytes %d at %d, want %d", i, resp.GetSizeBytes(), off, wantSize)
					}
					off = end
				}
			}
			if len(resps) > 0 {
				t.Fatalf("%d messages after the last range", len(resps))
			}
		})
	}
}

// gatheredChunks is a chunk store whose Opens return once want chunks
// are being opened at once: a reader taking one chunk at a time waits
// for ever.
type gatheredChunks struct {
	content.Blobs
	want     int
	mu       sync.Mutex
	opening  int
	gathered chan struct{}
}

func (g *gatheredChunks) Open(ctx context.Context, sha string) (content.Blob, error) {
	g.mu.Lock()
	// No Open returns before want are under way, so those counted are
	// under way at once.
	if g.opening++; g.opening == g.want {
		close(g.gathered)
	}
	g.mu.Unlock()
	select {
	case <-g.gathered:
		return g.Blobs.Open(ctx, sha)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func TestContentReadOfSeparateChunksFetchesThemAheadAcrossTheRanges(t *testing.T) {
	t.Parallel()
	blobs, _ := s3test.NewStore(t, s3store.Config{})
	chunks, _ := s3test.NewStore(t, s3store.Config{})
	g := &gatheredChunks{Blobs: chunks, want: 4, gathered: make(chan struct{})}
	a := startContentAPIWith(t, content.Config{Blobs: blobs, Chunks: g})
	data := noise(12 << 20)
	c, _, err := a.lib.Write(context.Background(), content.WriteHeader{}, bytes.NewReader(data))
	if err != nil || !c.GetStoredAsChunks() {
		t.Fatalf("write: %v, stored as chunks %v", err, c.GetStoredAsChunks())
	}
	// Every other chunk: ranges a chunk apart, a chunk each.
	var ranges []*osvcv1.ByteRange
	for i, rg := range a.chunkRanges(t, c.GetSha256()) {
		if i%2 == 0 {
			ranges = append(ranges, rg)
		}
	}
	if len(ranges) < g.want {
		t.Fatalf("%d ranges, fewer than the %d chunks to gather", len(ranges), g.want)
	}
	// A Read fetching one range's chunks at a time waits until the
	// deadline, and fails.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got, _, err := a.readAllWithin(ctx, t, &osvcv1.ReadRequest{Sha256: c.GetSha256(), Ranges: ranges})
	if err != nil {
		t.Fatalf("read of %d ranges: %v", len(ranges), err)
	}
	var want []byte
	for _, rg := range ranges {
		want = append(want, data[rg.GetOffset():rg.GetOffset()+rg.GetLength()]...)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want %d (or other bytes)", len(got), len(want))
	}
}
