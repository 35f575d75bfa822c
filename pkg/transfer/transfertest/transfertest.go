// Package transfertest holds what tests and benchmarks of content
// transfers share: a download source that reads over the network only, and
// a gRPC stats handler counting the bytes a connection receives.
package transfertest

import (
	"context"
	"sync/atomic"

	"google.golang.org/grpc/stats"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/transfer"
)

// OverNetwork is a download source (an agent cache's, agent/cache.DeltaSource)
// that reads over its connection only, as an agent on another machine
// than the library does: transfer.Client would take the library's file
// when it sees the library's volume.
type OverNetwork struct{ C osvcv1.ContentServiceClient }

// Download downloads sha into dst (transfer.Download).
func (o OverNetwork) Download(ctx context.Context, sha, dst string, progress transfer.ProgressFunc) error {
	return transfer.Download(ctx, o.C, sha, dst, progress)
}

// DownloadDelta downloads sha into dst as the chunks have lack (transfer.DownloadDelta).
func (o OverNetwork) DownloadDelta(ctx context.Context, sha, dst string, have []transfer.LocalBlob, progress transfer.ProgressFunc) (transfer.Delta, error) {
	return transfer.DownloadDelta(ctx, o.C, sha, dst, have, progress)
}

// WireCounter counts the bytes of every message a connection receives, as
// they crossed the wire (grpc.WithStatsHandler).
type WireCounter struct{ N atomic.Int64 }

// TagRPC implements stats.Handler.
func (w *WireCounter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

// TagConn implements stats.Handler.
func (w *WireCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

// HandleConn implements stats.Handler.
func (w *WireCounter) HandleConn(context.Context, stats.ConnStats) {}

// HandleRPC counts the bytes of each message received.
func (w *WireCounter) HandleRPC(_ context.Context, s stats.RPCStats) {
	if in, ok := s.(*stats.InPayload); ok {
		w.N.Add(int64(in.WireLength))
	}
}
