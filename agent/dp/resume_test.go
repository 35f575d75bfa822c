package dp_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"math/rand/v2"
	"net"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/osvc/osvc/agent/dp"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/chunks"
	"github.com/osvc/osvc/pkg/transfer"
	"github.com/osvc/osvc/server/api"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/store/storetest"
)

// library is a real content library served over gRPC (bufconn) whose
// Reads count the data bytes they send, and of which one Read is cut
// (UNAVAILABLE, as a replica going away) once it has sent cutAfter bytes.
type library struct {
	lib      *content.Library
	client   osvcv1.ContentServiceClient
	sent     atomic.Int64
	cutAfter atomic.Int64
}

type countingStream struct {
	grpc.ServerStream
	l    *library
	sent int64
}

func (s *countingStream) SendMsg(m any) error {
	if resp, ok := m.(*osvcv1.ReadResponse); ok {
		if cut := s.l.cutAfter.Load(); cut > 0 && s.sent >= cut && s.l.cutAfter.CompareAndSwap(cut, 0) {
			return status.Error(codes.Unavailable, "the server replica is going away")
		}
		s.sent += int64(len(resp.GetData()))
		s.l.sent.Add(int64(len(resp.GetData())))
	}
	return s.ServerStream.SendMsg(m)
}

func startLibrary(t *testing.T) *library {
	t.Helper()
	lib, err := content.New(content.Config{Dir: t.TempDir(), Store: storetest.New(t), Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	l := &library{lib: lib}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(append(transfer.ServerOptions(), grpc.StreamInterceptor(
		func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			if info.FullMethod == osvcv1.ContentService_Read_FullMethodName {
				ss = &countingStream{ServerStream: ss, l: l}
			}
			return handler(srv, ss)
		}))...)
	osvcv1.RegisterContentServiceServer(srv, api.NewContentServer(lib, hclog.NewNullLogger()))
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(lis) })
	cc, err := grpc.NewClient("passthrough:///bufnet", append(transfer.DialOptions(),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close(); srv.Stop(); wg.Wait() })
	l.client = osvcv1.NewContentServiceClient(cc)
	return l
}

func (l *library) put(t *testing.T, data []byte) string {
	t.Helper()
	c, _, err := l.lib.Write(context.Background(), content.WriteHeader{}, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return c.GetSha256()
}

// network is the point's source: the library over gRPC, in deltas.
type network struct{ c osvcv1.ContentServiceClient }

func (n network) Download(ctx context.Context, sha, dst string, progress transfer.ProgressFunc) error {
	return transfer.Download(ctx, n.c, sha, dst, progress)
}

func (n network) DownloadDelta(ctx context.Context, sha, dst string, have []transfer.LocalBlob, progress transfer.ProgressFunc) (transfer.Delta, error) {
	return transfer.DownloadDelta(ctx, n.c, sha, dst, have, progress)
}

func TestATransferCutMidwayResumesSendingAtMostTheChunkItWasSending(t *testing.T) {
	t.Parallel()
	l := startLibrary(t)
	// Version 2 rewrites three stretches of version 1.
	v1 := make([]byte, 32<<20)
	rand.NewChaCha8([32]byte{1}).Read(v1)
	v2 := slices.Clone(v1)
	for i, at := range []int{4 << 20, 15 << 20, 27 << 20} {
		rand.NewChaCha8([32]byte{byte(2 + i)}).Read(v2[at : at+(3<<20)/2])
	}
	sha1, sha2 := l.put(t, v1), l.put(t, v2)
	idx1, err := l.lib.ChunkIndex(context.Background(), sha1)
	if err != nil {
		t.Fatal(err)
	}
	idx2, err := l.lib.ChunkIndex(context.Background(), sha2)
	if err != nil {
		t.Fatal(err)
	}
	list1, _ := chunks.FromIndex(idx1, sha1, int64(len(v1)))
	list2, _ := chunks.FromIndex(idx2, sha2, int64(len(v2)))
	lacking := chunks.Lacking(list2, list1)
	var largest int64
	for _, c := range list2 {
		if !slices.Contains(list1, c) {
			largest = max(largest, c.Size)
		}
	}

	rep := newReports()
	p, err := dp.New(dp.Config{Dir: t.TempDir(), Source: network{l.client}, Report: rep.report, ProgressEvery: 1 << 62})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Distribute(context.Background(), distribute("images/win11-v1", 1, sha1, len(v1)))
	rep.until(t, osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED, 1)

	// Cut the fetch of version 2 halfway through what it lacks.
	l.sent.Store(0)
	l.cutAfter.Store(lacking / 2)
	p.Distribute(context.Background(), distribute("images/win11", 2, sha2, len(v2)))
	done := rep.until(t, osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED, 2)
	if l.cutAfter.Load() != 0 {
		t.Fatal("the fetch was never cut")
	}
	sent := l.sent.Load()
	if resent := sent - lacking; resent < 0 || resent > largest {
		t.Errorf("the server sent %d bytes for %d bytes of chunks version 1 lacks: %d again, want at most one chunk (%d)", sent, lacking, resent, largest)
	}
	if done.GetBytesReceived() != lacking || done.GetBytesTransferred() != int64(len(v2)) {
		t.Errorf("reported %d bytes received of %d in place, want %d of %d", done.GetBytesReceived(), done.GetBytesTransferred(), lacking, len(v2))
	}
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	if _, body := get(t, srv, "/images/win11", nil); sha256.Sum256(body) != sha256.Sum256(v2) {
		t.Fatalf("the point serves %d bytes that are not version 2", len(body))
	}
}
