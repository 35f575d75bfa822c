// Package transfertest holds what tests and benchmarks of content
// transfers share: a download source that reads over the network only, and
// a gRPC stats handler counting the bytes a connection receives and timing
// its blob reads.
package transfertest

import (
	"context"
	"sync/atomic"
	"time"

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
// they crossed the wire (grpc.WithStatsHandler), and times the blob reads
// (ContentService.Read calls): from the start of the first to the last
// message received of any, the span of the transfer itself.
type WireCounter struct {
	N atomic.Int64
	// first and last are the Unix nanoseconds of the first read's start
	// and of the last message a read received; 0 before any.
	first, last atomic.Int64
}

// Reset starts counting and timing anew.
func (w *WireCounter) Reset() {
	w.N.Store(0)
	w.first.Store(0)
	w.last.Store(0)
}

// ReadSpan is how long the blob reads took since the last Reset: from the
// first one's start to the last message any of them received; 0 when none
// received anything.
func (w *WireCounter) ReadSpan() time.Duration {
	first, last := w.first.Load(), w.last.Load()
	if first == 0 || last < first {
		return 0
	}
	return time.Duration(last - first)
}

// isRead marks the context of a blob read.
type isRead struct{}

// TagRPC implements stats.Handler.
func (w *WireCounter) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if info.FullMethodName == osvcv1.ContentService_Read_FullMethodName {
		return context.WithValue(ctx, isRead{}, true)
	}
	return ctx
}

// TagConn implements stats.Handler.
func (w *WireCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

// HandleConn implements stats.Handler.
func (w *WireCounter) HandleConn(context.Context, stats.ConnStats) {}

// HandleRPC counts the bytes of each message received, and times reads.
func (w *WireCounter) HandleRPC(ctx context.Context, s stats.RPCStats) {
	read, _ := ctx.Value(isRead{}).(bool)
	switch s := s.(type) {
	case *stats.InPayload:
		w.N.Add(int64(s.WireLength))
		if read {
			setIf(&w.last, s.RecvTime.UnixNano(), func(old, t int64) bool { return t > old })
		}
	case *stats.Begin:
		if read {
			setIf(&w.first, s.BeginTime.UnixNano(), func(old, t int64) bool { return old == 0 || t < old })
		}
	}
}

// setIf stores t in v when better says it improves on v's value.
func setIf(v *atomic.Int64, t int64, better func(old, t int64) bool) {
	for {
		old := v.Load()
		if !better(old, t) || v.CompareAndSwap(old, t) {
			return
		}
	}
}
