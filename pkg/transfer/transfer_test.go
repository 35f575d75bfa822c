package transfer_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/transfer"
	"github.com/osvc/osvc/server/api"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/content/s3store"
	"github.com/osvc/osvc/server/content/s3store/s3test"
	"github.com/osvc/osvc/server/store/storetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	storetest.Close()
	s3test.Close()
	os.Exit(code)
}

// server is a real content server over bufconn that counts the data bytes it
// serves and receives. Its hooks, set before use, play a damaged network or
// a server of another machine.
type server struct {
	client   osvcv1.ContentServiceClient
	lib      *content.Library
	served   atomic.Int64
	received atomic.Int64

	// onWrite sees each upload message as it arrives and may change it; the
	// server never sees a message it returns false for.
	onWrite func(*osvcv1.WriteRequest) (keep bool)
	// onLocate may change Locate's answers, or refuse the call.
	onLocate func(*osvcv1.LocateResponse) error
	// onLocateLibrary and onAdopt may change those answers, or refuse the call.
	onLocateLibrary func(*osvcv1.LocateLibraryResponse) error
	onAdopt         func(*osvcv1.AdoptResponse) error
	// refuseAdopt, when set, is Adopt's answer, before the library sees the call.
	refuseAdopt error
	// onServed sees the bytes served so far each time a Read sent some.
	onServed func(total int64)

	mu    sync.Mutex
	reads []readCall // finished Read calls
}

// readCall is one finished Read: where it started and how much it sent.
type readCall struct {
	offset, served int64
}

// readsFrom returns the finished Read calls that started at offset.
func (s *server) readsFrom(offset int64) []readCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []readCall
	for _, r := range s.reads {
		if r.offset == offset {
			out = append(out, r)
		}
	}
	return out
}

type countingStream struct {
	grpc.ServerStream
	s      *server
	call   readCall
	isRead bool
}

func (c *countingStream) SendMsg(m any) error {
	if r, ok := m.(*osvcv1.ReadResponse); ok {
		total := c.s.served.Add(int64(len(r.GetData())))
		c.call.served += int64(len(r.GetData()))
		if c.s.onServed != nil {
			c.s.onServed(total)
		}
	}
	return c.ServerStream.SendMsg(m)
}

func (c *countingStream) RecvMsg(m any) error {
	err := c.ServerStream.RecvMsg(m)
	if err != nil {
		return err
	}
	switch r := m.(type) {
	case *osvcv1.WriteRequest:
		if c.s.onWrite != nil && !c.s.onWrite(r) {
			return c.RecvMsg(m)
		}
		c.s.received.Add(int64(len(r.GetData())))
	case *osvcv1.ReadRequest:
		c.isRead, c.call.offset = true, r.GetOffset()
	}
	return nil
}

func startServer(t *testing.T) *server {
	t.Helper()
	return startServerOn(t, nil)
}

// starter is a test case's way of starting its server.
type starter struct {
	// start, when set, starts the server instead of startServer.
	start func(t *testing.T) *server
}

func (s starter) startServer(t *testing.T) *server {
	t.Helper()
	if s.start != nil {
		return s.start(t)
	}
	return startServer(t)
}

// startServerOnAnObjectStore is startServer with the library's blobs on an
// object store.
func startServerOnAnObjectStore(t *testing.T) *server {
	t.Helper()
	st, _ := s3test.NewStore(t, s3store.Config{})
	return startServerOn(t, st)
}

// startServerOn is startServer with the library's blobs in blobs; nil for
// a folder of this machine.
func startServerOn(t *testing.T, blobs content.Blobs) *server {
	t.Helper()
	// Whole blobs: tests damage a blob's file to stand for a server that
	// sends bad data, which a library of chunks would refuse to read.
	lib, err := content.New(content.Config{Dir: t.TempDir(), Blobs: blobs, WholeBlobs: true, Store: storetest.New(t), Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	s := &server{lib: lib}
	lis := bufconn.Listen(1 << 20)
	opts := append(transfer.ServerOptions(), grpc.StreamInterceptor(
		func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			cs := &countingStream{ServerStream: ss, s: s}
			err := handler(srv, cs)
			if cs.isRead {
				s.mu.Lock()
				s.reads = append(s.reads, cs.call)
				s.mu.Unlock()
			}
			return err
		}), grpc.UnaryInterceptor(
		func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			if _, ok := req.(*osvcv1.AdoptRequest); ok && s.refuseAdopt != nil {
				return nil, s.refuseAdopt
			}
			resp, err := handler(ctx, req)
			if err != nil {
				return resp, err
			}
			switch r := resp.(type) {
			case *osvcv1.LocateResponse:
				if s.onLocate != nil {
					err = s.onLocate(r)
				}
			case *osvcv1.LocateLibraryResponse:
				if s.onLocateLibrary != nil {
					err = s.onLocateLibrary(r)
				}
			case *osvcv1.AdoptResponse:
				if s.onAdopt != nil {
					err = s.onAdopt(r)
				}
			}
			if err != nil {
				return nil, err
			}
			return resp, nil
		}))
	srv := grpc.NewServer(opts...)
	osvcv1.RegisterContentServiceServer(srv, api.NewContentServer(lib, hclog.NewNullLogger()))
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(lis)
	}()
	dial := append(transfer.DialOptions(),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	conn, err := grpc.NewClient("passthrough:///bufnet", dial...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		<-served
	})
	s.client = osvcv1.NewContentServiceClient(conn)
	return s
}

// blobSize spans several chunks and ends mid-chunk.
const blobSize = 3*transfer.ChunkSize + 4321

func blob(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + i/4096)
	}
	return b
}

func shaOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// held puts data into the server's library directly.
func (s *server) held(t *testing.T, data []byte) string {
	t.Helper()
	if _, _, err := s.lib.Write(context.Background(), content.WriteHeader{}, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	return shaOf(data)
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func checkDownloaded(t *testing.T, dst string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s holds %d bytes that differ from the blob's %d", dst, len(got), len(want))
	}
	if _, err := os.Stat(dst + transfer.PartialSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("partial file still there: %v", err)
	}
}

func TestUploadThenDownloadRoundTrips(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := startServer(t)
	data := blob(blobSize)
	src := filepath.Join(t.TempDir(), "image.wim")
	writeFile(t, src, data)

	var last [2]int64
	c, err := transfer.Upload(ctx, s.client, src, "application/x-ms-wim", func(done, total int64) { last = [2]int64{done, total} })
	if err != nil {
		t.Fatal(err)
	}
	if c.GetSha256() != shaOf(data) || c.GetSizeBytes() != blobSize || c.GetMediaType() != "application/x-ms-wim" {
		t.Fatalf("Upload = %v", c)
	}
	if last != [2]int64{blobSize, blobSize} {
		t.Errorf("last upload progress = %v, want done = total = %d", last, blobSize)
	}
	if got := s.received.Load(); got != blobSize {
		t.Errorf("server received %d bytes, want %d", got, blobSize)
	}

	dst := filepath.Join(t.TempDir(), "copy.wim")
	last = [2]int64{}
	if err := transfer.Download(ctx, s.client, c.GetSha256(), dst, func(done, total int64) { last = [2]int64{done, total} }); err != nil {
		t.Fatal(err)
	}
	checkDownloaded(t, dst, data)
	if last != [2]int64{blobSize, blobSize} {
		t.Errorf("last download progress = %v, want done = total = %d", last, blobSize)
	}
}

func TestUploadUnlessHeldOfAHeldBlobSendsNoData(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	data := blob(blobSize)
	sum := s.held(t, data)
	src := filepath.Join(t.TempDir(), "update.cab")
	writeFile(t, src, data)

	c, err := transfer.UploadUnlessHeld(context.Background(), s.client, src, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.GetSha256() != sum {
		t.Fatalf("Upload = %v, want %s", c, sum)
	}
	if got := s.received.Load(); got != 0 {
		t.Fatalf("server received %d bytes of a blob it held", got)
	}
}

func TestUploadUnlessHeldAnnouncesTheSHA256ItHashed(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	data := blob(blobSize)
	src := filepath.Join(t.TempDir(), "install.wim")
	writeFile(t, src, data)
	var announced string
	s.onWrite = func(r *osvcv1.WriteRequest) bool {
		if h := r.GetHeader(); h != nil {
			announced = h.GetSha256()
		}
		return true
	}
	c, err := transfer.UploadUnlessHeld(context.Background(), s.client, src, "application/x-ms-wim", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.GetSha256() != shaOf(data) || announced != shaOf(data) || s.received.Load() != blobSize {
		t.Fatalf("Upload = %v with %q in its header and %d bytes sent; want %s announced and all %d bytes sent",
			c, announced, s.received.Load(), shaOf(data), blobSize)
	}
}

func TestDownloadResumes(t *testing.T) {
	t.Parallel()
	data := blob(blobSize)
	const kept = transfer.ChunkSize + 777
	corrupt := bytes.Repeat([]byte{0xAB}, kept)
	tests := []struct {
		name       string
		partial    []byte
		wantServed int64
	}{
		{name: "from the end of a good partial file, reading only the rest", partial: data[:kept], wantServed: blobSize - kept},
		{name: "from zero after a corrupt partial file fails the hash", partial: corrupt, wantServed: blobSize - kept + blobSize},
		{name: "from zero when the partial file is longer than the blob", partial: append(bytes.Clone(data), 1, 2, 3), wantServed: blobSize},
		{name: "with nothing to read when the partial file is complete", partial: data, wantServed: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := startServer(t)
			sum := s.held(t, data)
			dst := filepath.Join(t.TempDir(), "image.wim")
			writeFile(t, dst+transfer.PartialSuffix, tt.partial)

			if err := transfer.Download(context.Background(), s.client, sum, dst, nil); err != nil {
				t.Fatal(err)
			}
			checkDownloaded(t, dst, data)
			if got := s.served.Load(); got != tt.wantServed {
				t.Fatalf("server sent %d bytes, want %d", got, tt.wantServed)
			}
		})
	}
}

func TestAnInterruptedDownloadKeepsItsBytesForTheNextAttempt(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	data := blob(blobSize)
	sum := s.held(t, data)
	dst := filepath.Join(t.TempDir(), "image.wim")

	ctx, cancel := context.WithCancel(context.Background())
	err := transfer.Download(ctx, s.client, sum, dst, func(done, _ int64) {
		if done >= transfer.ChunkSize {
			cancel() // the connection drops after the first chunk
		}
	})
	if status.Code(err) != codes.Canceled && !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted Download: got %v, want canceled", err)
	}
	info, err := os.Stat(dst + transfer.PartialSuffix)
	if err != nil {
		t.Fatal(err)
	}
	kept := info.Size()
	if kept < transfer.ChunkSize || kept >= blobSize {
		t.Fatalf("partial file holds %d bytes, want at least one chunk and less than the blob", kept)
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("destination exists after an interrupted download: %v", err)
	}

	if err := transfer.Download(context.Background(), s.client, sum, dst, nil); err != nil {
		t.Fatal(err)
	}
	checkDownloaded(t, dst, data)
	// The first call may still be winding down; the second is done when Download returns.
	resumed := s.readsFrom(kept)
	if len(resumed) != 1 || resumed[0].served != blobSize-kept {
		t.Fatalf("reads from offset %d = %v, want one that sent the %d missing bytes", kept, resumed, blobSize-kept)
	}
}

func TestDownloadRefusals(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	tests := []struct {
		name string
		sha  string
		code codes.Code
	}{
		{name: "a blob the server lacks is not found", sha: shaOf([]byte("absent")), code: codes.NotFound},
		{name: "a malformed sha256 is refused before asking", sha: "../etc/passwd", code: codes.Unknown},
	}
	for _, tt := range tests {
		t.Run(tt.name+" and leaves no file", func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			dst := filepath.Join(dir, "x")
			err := transfer.Download(context.Background(), s.client, tt.sha, dst, nil)
			if err == nil || status.Code(err) != tt.code {
				t.Fatalf("Download: got %v, want an error with code %s", err, tt.code)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Fatalf("files left: %v", entries)
			}
		})
	}
}

func TestUploadOfAMissingFileFails(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	_, err := transfer.Upload(context.Background(), s.client, filepath.Join(t.TempDir(), "absent.wim"), "", nil)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Upload: got %v, want not exist", err)
	}
}
