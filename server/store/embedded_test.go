package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/osvc/osvc/server/store"
)

func startEmbedded(t *testing.T, dir string) (*store.Embedded, *store.Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := store.StartEmbedded(ctx, store.EmbeddedConfig{Dir: dir, FastTicks: true, Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints(), DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		e.Close()
		t.Fatalf("client: %v", err)
	}
	s, err := store.New(store.Config{Client: c, Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		e.Close()
	})
	return e, s
}

func TestEmbeddedEtcdKeepsDataAcrossARestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()

	first, s := startEmbedded(t, dir)
	if _, err := s.Put(ctx, s.ImageKey("kept"), wrapperspb.String("still here")); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	closedCtx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, _, err := store.Get[*wrapperspb.StringValue](closedCtx, s, s.ImageKey("kept")); err == nil {
		t.Fatal("read from a closed etcd succeeded")
	}

	_, s = startEmbedded(t, dir)
	got, _, err := store.Get[*wrapperspb.StringValue](ctx, s, s.ImageKey("kept"))
	if err != nil {
		t.Fatalf("Get after restart: %v", err)
	}
	if got.GetValue() != "still here" {
		t.Fatalf("after restart = %q, want %q", got.GetValue(), "still here")
	}
}

func TestStartEmbeddedNeedsADataDirectory(t *testing.T) {
	t.Parallel()
	_, err := store.StartEmbedded(context.Background(), store.EmbeddedConfig{})
	if err == nil {
		t.Fatal("StartEmbedded without Dir succeeded")
	}
}

func TestStartEmbeddedStopsWhenCtxIsDone(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	e, err := store.StartEmbedded(ctx, store.EmbeddedConfig{Dir: t.TempDir(), FastTicks: true})
	if err == nil {
		e.Close()
		t.Fatal("StartEmbedded with a canceled ctx succeeded")
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("StartEmbedded: got %v, want context.Canceled", err)
	}
}

func TestTheEmbeddedEtcdsEndpointsServeGRPCOnly(t *testing.T) {
	t.Parallel()
	e, s := startEmbedded(t, t.TempDir())
	// HTTP (health, metrics) has a port of its own, which is no endpoint:
	// a client given it would get 404s for its gRPC calls.
	if n := len(e.Endpoints()); n != 1 {
		t.Fatalf("endpoints %v, want the one gRPC client URL", e.Endpoints())
	}
	for i := range 20 {
		if _, err := s.Put(context.Background(), s.ImageKey("k"), wrapperspb.String(fmt.Sprint(i))); err != nil {
			t.Fatalf("put %d through %v: %v", i, e.Endpoints(), err)
		}
	}
}
