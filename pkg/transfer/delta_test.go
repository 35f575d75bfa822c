package transfer_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/chunks"
	"github.com/osvc/osvc/pkg/transfer"
)

// versions returns an image and its next version: the same bytes with a
// few stretches rewritten and some bytes inserted, as an update leaves
// most of a file alone.
func versions(size int) (v1, v2 []byte) {
	v1 = make([]byte, size)
	rand.NewChaCha8([32]byte{1}).Read(v1)
	v2 = bytes.Clone(v1)
	rng := rand.NewChaCha8([32]byte{2})
	rng.Read(v2[size/3 : size/3+64<<10])
	rng.Read(v2[2*size/3 : 2*size/3+200<<10])
	ins := make([]byte, 777)
	rng.Read(ins)
	v2 = append(v2[:size/5:size/5], append(ins, v2[size/5:]...)...)
	return v1, v2
}

// holding writes data to a file of the client's and returns it as a
// LocalBlob.
func holding(t *testing.T, data []byte) transfer.LocalBlob {
	t.Helper()
	path := filepath.Join(t.TempDir(), "v1.wim")
	writeFile(t, path, data)
	list, err := chunks.OfFile(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	return transfer.LocalBlob{Path: path, Chunks: list}
}

// halfHeld starts a server holding version 2 of an image and returns it
// with a client's file holding the second half of version 1 (plenty of
// chunks to send), version 2's sha256 and the bytes the client lacks.
func halfHeld(t *testing.T) (s *server, v2 []byte, have transfer.LocalBlob, sum string, missing int64) {
	t.Helper()
	s = startServer(t)
	v1, v2 := versions(40 << 20)
	have = holding(t, v1[len(v1)/2:])
	sum = s.held(t, v2)
	return s, v2, have, sum, lacking(t, v2, have)
}

// digests are the chunk digests b holds.
func digests(b transfer.LocalBlob) map[[32]byte]bool {
	held := map[[32]byte]bool{}
	for _, c := range b.Chunks {
		held[c.Digest] = true
	}
	return held
}

// lacking is how many bytes of data are in chunks have lacks.
func lacking(t *testing.T, data []byte, have transfer.LocalBlob) int64 {
	t.Helper()
	list, err := chunks.Of(context.Background(), bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return chunks.Lacking(list, have.Chunks)
}

func TestADeltaDownloadSendsOnlyTheChunksTheClientLacks(t *testing.T) {
	t.Parallel()
	for name, st := range map[string]starter{"directory": {}, "object store": {start: startServerOnAnObjectStore}} {
		t.Run("from a library in a "+name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s := st.startServer(t)
			v1, v2 := versions(40 << 20)
			s.held(t, v1)
			sum := s.held(t, v2)
			have := holding(t, v1)

			// The server's index is the one the client would cut.
			index, size, err := transfer.GetChunkIndex(ctx, s.client, sum)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := chunks.Of(ctx, bytes.NewReader(v2))
			if size != int64(len(v2)) || len(index) != len(want) {
				t.Fatalf("the server's index: %d chunks of %d bytes, the data cuts into %d of %d", len(index), size, len(want), len(v2))
			}
			for i := range want {
				if index[i] != want[i] {
					t.Fatalf("chunk %d of the server's index differs from the data's", i)
				}
			}

			dst := filepath.Join(t.TempDir(), "v2.wim")
			d, err := transfer.DownloadDelta(ctx, s.client, sum, dst, []transfer.LocalBlob{have}, nil)
			if err != nil {
				t.Fatal(err)
			}
			checkDownloaded(t, dst, v2)
			missing := lacking(t, v2, have)
			if d.Downloaded != missing || d.Local != int64(len(v2))-missing || s.served.Load() != missing {
				t.Errorf("downloaded %d, copied %d, the server sent %d; want %d downloaded (the chunks version 1 lacks), the rest copied",
					d.Downloaded, d.Local, s.served.Load(), missing)
			}
			if missing > int64(len(v2))/4 {
				t.Errorf("%d of %d bytes sent for three small edits", missing, len(v2))
			}
		})
	}
}

func TestADeltaDownloadOfASmallBlobReadsItWhole(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	data := blob(blobSize)
	sum := s.held(t, data)
	dst := filepath.Join(t.TempDir(), "small")
	d, err := transfer.DownloadDelta(context.Background(), s.client, sum, dst, []transfer.LocalBlob{holding(t, data[:chunks.MinSize])}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkDownloaded(t, dst, data)
	if d.Chunks != nil || s.served.Load() != blobSize {
		t.Errorf("a blob below %d bytes: index %v, %d bytes sent; want it read whole", chunks.MinBlobBytes, d.Chunks, s.served.Load())
	}
}

func TestAnInterruptedDeltaDownloadResumesSendingOnlyTheChunksItHadNotWritten(t *testing.T) {
	t.Parallel()
	s, v2, have, sum, missing := halfHeld(t)
	dst := filepath.Join(t.TempDir(), "v2.wim")

	ctx, cancel := context.WithCancel(context.Background())
	first, err := transfer.DownloadDelta(ctx, s.client, sum, dst, []transfer.LocalBlob{have}, func(done, _ int64) {
		if done >= int64(len(v2))/3 {
			cancel() // the connection drops a third of the way
		}
	})
	if !errors.Is(err, context.Canceled) && status.Code(err) != codes.Canceled {
		t.Fatalf("interrupted: got %v, want canceled", err)
	}
	// What the partial file holds of the chunks the server sends.
	partial, err := os.ReadFile(dst + transfer.PartialSuffix)
	if err != nil {
		t.Fatal(err)
	}
	index, _ := chunks.Of(context.Background(), bytes.NewReader(v2))
	offsets, _ := chunks.Locate(index)
	held := digests(have)
	var kept int64
	for i, c := range index {
		end := offsets[i] + c.Size
		if !held[c.Digest] && end <= int64(len(partial)) && bytes.Equal(partial[offsets[i]:end], v2[offsets[i]:end]) {
			kept += c.Size
		}
	}
	// Every chunk the first attempt received whole is kept: only the one
	// it was receiving when cut is lost.
	if kept == 0 || kept != first.Downloaded {
		t.Fatalf("the partial file keeps %d bytes of the server's chunks; the first attempt received %d whole", kept, first.Downloaded)
	}

	before := s.served.Load()
	second, err := transfer.DownloadDelta(context.Background(), s.client, sum, dst, []transfer.LocalBlob{have}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkDownloaded(t, dst, v2)
	if sent := s.served.Load() - before; sent != missing-kept || second.Resumed != kept || second.Downloaded != sent {
		t.Errorf("the second attempt: %d bytes sent, %d resumed, %d downloaded; want the %d bytes of the %d version 1 lacks that the first did not keep",
			sent, second.Resumed, second.Downloaded, missing-kept, missing)
	}
}

func TestTheTransferIsNotHeldUpByTheWholeFilesHash(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	v1, v2 := versions(64 << 20)
	// The client lacks the first three quarters: far more chunks than its
	// buffers and the connection's window hold.
	have := holding(t, v1[3*len(v1)/4:])
	sum := s.held(t, v2)
	missing := lacking(t, v2, have)
	allSent := make(chan struct{})
	var once sync.Once
	s.onServed = func(total int64) {
		if total >= missing {
			once.Do(func() { close(allSent) })
		}
	}
	// The hasher tells progress after each chunk it hashed: held at the
	// first, it stands for one far behind the transfer. The deadline only
	// ends the test should the transfer wait for it.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dst := filepath.Join(t.TempDir(), "v2.wim")
	d, err := transfer.DownloadDelta(ctx, s.client, sum, dst, []transfer.LocalBlob{have}, func(int64, int64) {
		select {
		case <-allSent:
		case <-ctx.Done():
		}
	})
	if err != nil {
		t.Fatalf("with the hash held at the first chunk, the server sent %d of the %d bytes lacking: %v", s.served.Load(), missing, err)
	}
	checkDownloaded(t, dst, v2)
	if d.Downloaded != missing {
		t.Errorf("downloaded %d bytes, want the %d lacking", d.Downloaded, missing)
	}
}

func TestACorruptedChunkIsRefusedAndNothingIsWrittenOutsideTheDestinationFolder(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	v1, v2 := versions(40 << 20)
	have := holding(t, v1)
	sum := s.held(t, v2)
	index, _, err := transfer.GetChunkIndex(context.Background(), s.client, sum)
	if err != nil {
		t.Fatal(err)
	}
	// Damage, in the library's file, a chunk the client lacks.
	held := digests(have)
	offsets, _ := chunks.Locate(index)
	bad := -1
	for i, c := range index {
		if !held[c.Digest] && i > 0 {
			bad = i
			break
		}
	}
	if bad < 0 {
		t.Fatal("version 2 has no chunk version 1 lacks")
	}
	f, err := os.OpenFile(s.lib.Path(sum), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("damage"), offsets[bad]+100); err != nil {
		t.Fatal(err)
	}
	f.Close()

	root := t.TempDir()
	dir := filepath.Join(root, "cache")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, sum)
	_, err = transfer.DownloadDelta(context.Background(), s.client, sum, dst, []transfer.LocalBlob{have}, nil)
	if !errors.Is(err, transfer.ErrChunkMismatch) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("a damaged chunk: got %v, want it refused", err)
	}
	if entries, _ := os.ReadDir(root); len(entries) != 1 {
		t.Errorf("beside the destination folder: %v, want nothing", entries)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != sum+transfer.PartialSuffix {
		t.Fatalf("in the destination folder: %v, want the partial file alone", entries)
	}
	partial, err := os.ReadFile(dst + transfer.PartialSuffix)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing of the damaged chunk was written; the chunks written are
	// the blob's.
	end := offsets[bad] + index[bad].Size
	if int64(len(partial)) >= end && !bytes.Equal(partial[offsets[bad]:end], make([]byte, index[bad].Size)) {
		t.Errorf("the partial file holds bytes of the damaged chunk")
	}
	for i, c := range index {
		if e := offsets[i] + c.Size; i != bad && e <= int64(len(partial)) &&
			!bytes.Equal(partial[offsets[i]:e], v2[offsets[i]:e]) && !bytes.Equal(partial[offsets[i]:e], make([]byte, c.Size)) {
			t.Errorf("chunk %d in the partial file is neither the blob's nor unwritten", i)
		}
	}
}

func TestReadRefusesRangesThatAreNotInOrderWithinTheBlob(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	sum := s.held(t, blob(blobSize))
	r := func(off, n int64) *osvcv1.ByteRange { return &osvcv1.ByteRange{Offset: off, Length: n} }
	tests := []struct {
		name   string
		req    *osvcv1.ReadRequest
		reason string
	}{
		{"a range past the blob's end", &osvcv1.ReadRequest{Sha256: sum, Ranges: []*osvcv1.ByteRange{r(blobSize-10, 11)}}, "ranges[0]"},
		{"a range before the one it follows", &osvcv1.ReadRequest{Sha256: sum, Ranges: []*osvcv1.ByteRange{r(100, 10), r(50, 10)}}, "ranges[1]"},
		{"an overlapping range", &osvcv1.ReadRequest{Sha256: sum, Ranges: []*osvcv1.ByteRange{r(100, 10), r(105, 10)}}, "ranges[1]"},
		{"an empty range", &osvcv1.ReadRequest{Sha256: sum, Ranges: []*osvcv1.ByteRange{r(100, 0)}}, "ranges[0]"},
		{"a negative range", &osvcv1.ReadRequest{Sha256: sum, Ranges: []*osvcv1.ByteRange{r(100, -1)}}, "ranges[0]"},
		{"ranges with an offset", &osvcv1.ReadRequest{Sha256: sum, Offset: 5, Ranges: []*osvcv1.ByteRange{r(100, 1)}}, "not both"},
		{"too many ranges", &osvcv1.ReadRequest{Sha256: sum, Ranges: make([]*osvcv1.ByteRange, 4097)}, "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is refused", func(t *testing.T) {
			t.Parallel()
			stream, err := s.client.Read(context.Background(), tt.req)
			if err == nil {
				_, err = stream.Recv()
			}
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("Read: %v, want InvalidArgument naming %q", err, tt.reason)
			}
		})
	}
}

// hostileIndex serves chunk indexes of its own making and counts the Reads.
type hostileIndex struct {
	osvcv1.UnimplementedContentServiceServer
	pages []*osvcv1.GetChunkIndexResponse
	reads int
}

func (h *hostileIndex) GetChunkIndex(_ *osvcv1.GetChunkIndexRequest, stream grpc.ServerStreamingServer[osvcv1.GetChunkIndexResponse]) error {
	for _, p := range h.pages {
		if err := stream.Send(p); err != nil {
			return err
		}
	}
	return nil
}

func (h *hostileIndex) Read(*osvcv1.ReadRequest, grpc.ServerStreamingServer[osvcv1.ReadResponse]) error {
	h.reads++
	return status.Error(codes.Unavailable, "no data here")
}

func serveHostile(t *testing.T, h *hostileIndex, other ...osvcv1.ContentServiceServer) osvcv1.ContentServiceClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(transfer.ServerOptions()...)
	if h != nil {
		osvcv1.RegisterContentServiceServer(srv, h)
	} else {
		osvcv1.RegisterContentServiceServer(srv, other[0])
	}
	go srv.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///bufnet", append(transfer.DialOptions(),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
	})
	return osvcv1.NewContentServiceClient(conn)
}

func TestHostileChunkIndexesAreRefusedBeforeAnyDataIsAskedFor(t *testing.T) {
	t.Parallel()
	sum := shaOf([]byte("v2"))
	digest := sha256.Sum256(nil)
	chunk := func(size int64) *osvcv1.Chunk { return &osvcv1.Chunk{Digest: digest[:], SizeBytes: size} }
	page := func(size, count int64, cs ...*osvcv1.Chunk) *osvcv1.GetChunkIndexResponse {
		return &osvcv1.GetChunkIndexResponse{Sha256: sum, SizeBytes: size, Chunking: chunks.Chunking(), ChunkCount: count, Chunks: cs}
	}
	const mib = 1 << 20
	tests := []struct {
		name  string
		pages []*osvcv1.GetChunkIndexResponse
		want  string
	}{
		{"sizes that add up to less than the blob", []*osvcv1.GetChunkIndexResponse{page(10*mib, 2, chunk(mib), chunk(mib))}, "add up to"},
		{"sizes that pass the blob's end", []*osvcv1.GetChunkIndexResponse{page(10*mib, 3, chunk(4*mib), chunk(4*mib), chunk(4*mib))}, "past the blob"},
		{"a chunk over the largest size", []*osvcv1.GetChunkIndexResponse{page(10*mib, 2, chunk(9*mib), chunk(mib))}, "a chunk has 1 to"},
		{"a huge chunk count", []*osvcv1.GetChunkIndexResponse{page(10*mib, 1<<40)}, "chunks for"},
		{"more chunks than a blob of its size has", []*osvcv1.GetChunkIndexResponse{page(10*mib, 1000)}, "chunks for"},
		{"more chunks than it announced", []*osvcv1.GetChunkIndexResponse{page(10*mib, 2, chunk(5*mib)), {Chunks: []*osvcv1.Chunk{chunk(mib), chunk(mib)}}}, "more chunks than"},
		{"fewer chunks than it announced", []*osvcv1.GetChunkIndexResponse{page(10*mib, 3, chunk(4*mib), chunk(4*mib))}, "not the 3"},
		{"a digest that is not a sha256", []*osvcv1.GetChunkIndexResponse{page(10*mib, 1, &osvcv1.Chunk{Digest: []byte("short"), SizeBytes: 10 * mib})}, "digest of 5 bytes"},
		{"the index of another blob", []*osvcv1.GetChunkIndexResponse{{Sha256: shaOf([]byte("other")), SizeBytes: 10 * mib, Chunking: chunks.Chunking(), ChunkCount: 1}}, "not of"},
		{"another chunking", []*osvcv1.GetChunkIndexResponse{{Sha256: sum, SizeBytes: 10 * mib, Chunking: &osvcv1.Chunking{Algorithm: "rabin"}, ChunkCount: 1}}, "not as this client cuts"},
	}
	for _, tt := range tests {
		t.Run(tt.name+" are refused", func(t *testing.T) {
			t.Parallel()
			h := &hostileIndex{pages: tt.pages}
			client := serveHostile(t, h)
			dir := t.TempDir()
			_, err := transfer.DownloadDelta(context.Background(), client, sum, filepath.Join(dir, sum), nil, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("DownloadDelta: %v, want an error saying %q", err, tt.want)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 || h.reads != 0 {
				t.Errorf("files %v and %d reads after a refused index, want none", entries, h.reads)
			}
		})
	}
}

// misreader serves a true chunk index of data and answers Read with what
// answer makes of the ranges asked for (a nil message ends the read).
type misreader struct {
	osvcv1.UnimplementedContentServiceServer
	index  *osvcv1.GetChunkIndexResponse
	data   []byte
	answer func(data []byte, r *osvcv1.ByteRange) []*osvcv1.ReadResponse
}

func (m *misreader) GetChunkIndex(_ *osvcv1.GetChunkIndexRequest, stream grpc.ServerStreamingServer[osvcv1.GetChunkIndexResponse]) error {
	return stream.Send(m.index)
}

func (m *misreader) Read(req *osvcv1.ReadRequest, stream grpc.ServerStreamingServer[osvcv1.ReadResponse]) error {
	for _, r := range req.GetRanges() {
		for _, resp := range m.answer(m.data, r) {
			if resp == nil {
				return nil // the read ends here
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
	}
	return nil
}

// indexed returns version 2 of an image, a client's file holding version 1
// and version 2's chunks.
func indexed(t *testing.T) (v2 []byte, have transfer.LocalBlob, list []chunks.Chunk) {
	t.Helper()
	v1, v2 := versions(40 << 20)
	list, err := chunks.Of(context.Background(), bytes.NewReader(v2))
	if err != nil {
		t.Fatal(err)
	}
	return v2, holding(t, v1), list
}

// indexPage is the one page of a chunk index of data, the chunks list, as
// the index of the blob sum.
func indexPage(sum string, data []byte, list []chunks.Chunk) *osvcv1.GetChunkIndexResponse {
	return &osvcv1.GetChunkIndexResponse{Sha256: sum, SizeBytes: int64(len(data)), Chunking: chunks.Chunking(),
		ChunkCount: int64(len(list)), Chunks: chunks.ToProto(list)}
}

func TestBytesAServerSendsOutsideTheRangesAskedForAreRefused(t *testing.T) {
	t.Parallel()
	v2, have, list := indexed(t)
	sum := shaOf(v2)
	index := indexPage(sum, v2, list)
	at := func(data []byte, off, n int64) *osvcv1.ReadResponse {
		return &osvcv1.ReadResponse{Offset: off, Data: data[off : off+n]}
	}
	tests := []struct {
		name   string
		answer func(data []byte, r *osvcv1.ByteRange) []*osvcv1.ReadResponse
		want   string
	}{
		{"bytes at another offset than asked", func(data []byte, r *osvcv1.ByteRange) []*osvcv1.ReadResponse {
			return []*osvcv1.ReadResponse{at(data, r.Offset+1, r.Length-1)}
		}, "expected up to"},
		{"more bytes than the range has", func(data []byte, r *osvcv1.ByteRange) []*osvcv1.ReadResponse {
			return []*osvcv1.ReadResponse{at(data, r.Offset, min(r.Length+1, int64(len(data))-r.Offset))}
		}, "expected up to"},
		{"a read ended before the range's end", func(data []byte, r *osvcv1.ByteRange) []*osvcv1.ReadResponse {
			return []*osvcv1.ReadResponse{at(data, r.Offset, r.Length/2), nil}
		}, "ended the read"},
	}
	for _, tt := range tests {
		t.Run(tt.name+" are refused", func(t *testing.T) {
			t.Parallel()
			client := serveHostile(t, nil, &misreader{index: index, data: v2, answer: tt.answer})
			dst := filepath.Join(t.TempDir(), sum)
			_, err := transfer.DownloadDelta(context.Background(), client, sum, dst, []transfer.LocalBlob{have}, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("DownloadDelta: %v, want an error saying %q", err, tt.want)
			}
			// Nothing the server sent was written: what the partial file
			// holds of the chunks version 1 lacks is unwritten.
			partial, err := os.ReadFile(dst + transfer.PartialSuffix)
			if err != nil {
				t.Fatal(err)
			}
			held := digests(have)
			offsets, _ := chunks.Locate(list)
			for i, c := range list {
				end := offsets[i] + c.Size
				if !held[c.Digest] && end <= int64(len(partial)) && !bytes.Equal(partial[offsets[i]:end], make([]byte, c.Size)) {
					t.Errorf("chunk %d, which version 1 lacks, was written", i)
				}
			}
		})
	}
}

func TestAPartialFileIsCheckedNotTrusted(t *testing.T) {
	t.Parallel()
	s, v2, have, sum, missing := halfHeld(t)
	dst := filepath.Join(t.TempDir(), "v2.wim")
	// A partial file of the right size that holds something else.
	junk := make([]byte, len(v2))
	rand.NewChaCha8([32]byte{9}).Read(junk)
	writeFile(t, dst+transfer.PartialSuffix, junk)

	d, err := transfer.DownloadDelta(context.Background(), s.client, sum, dst, []transfer.LocalBlob{have}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkDownloaded(t, dst, v2)
	if d.Resumed != 0 || s.served.Load() != missing {
		t.Errorf("kept %d bytes of a partial file of junk and read %d bytes, want none kept and the %d version 1 lacks read", d.Resumed, s.served.Load(), missing)
	}
}

func TestChunksThatMatchTheirIndexButNotTheBlobsSHA256AreNotKept(t *testing.T) {
	t.Parallel()
	v2, have, list := indexed(t)
	// The index and the data agree, but they are not the blob asked for.
	sum := shaOf(append(bytes.Clone(v2), 0))
	index := indexPage(sum, v2, list)
	client := serveHostile(t, nil, &misreader{index: index, data: v2, answer: func(data []byte, r *osvcv1.ByteRange) []*osvcv1.ReadResponse {
		return []*osvcv1.ReadResponse{{Offset: r.Offset, Data: data[r.Offset : r.Offset+r.Length]}}
	}})
	dir := t.TempDir()
	_, err := transfer.DownloadDelta(context.Background(), client, sum, filepath.Join(dir, sum), []transfer.LocalBlob{have}, nil)
	if !errors.Is(err, transfer.ErrHashMismatch) {
		t.Fatalf("DownloadDelta: %v, want a hash mismatch", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("files %v after a download that hashes to another blob, want none", entries)
	}
}
