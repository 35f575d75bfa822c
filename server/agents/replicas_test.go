package agents_test

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/store"
	"github.com/osvc/osvc/server/store/storetest"
)

// replicaOn starts a registry for replica id on st with its liveness key;
// stop ends it as a replica that stops cleanly.
func replicaOn(t *testing.T, st *store.Store, id string) (r *agents.Registry, stop func()) {
	t.Helper()
	r, err := agents.New(agents.Config{Store: st, ServerID: id})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	stop = func() {
		cancel()
		<-done
	}
	t.Cleanup(stop)
	// Run writes the liveness key; wait for it.
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	for {
		resp, err := st.Client().Get(wctx, st.ReplicaKey(id))
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 1 {
			return r, stop
		}
		w := st.Client().Watch(wctx, st.ReplicaKey(id), clientv3.WithRev(resp.Header.Revision+1))
		select {
		case <-w:
		case <-wctx.Done():
			t.Fatalf("replica %s wrote no liveness key", id)
		}
	}
}

func TestASecondStreamOnAnotherReplicaIsRefusedWhileTheFirstIsOpen(t *testing.T) {
	t.Parallel()
	st := storetest.New(t)
	createSite(t, st, "PS1")
	ctx := context.Background()
	a, stopA := replicaOn(t, st, "replica-a")
	b, _ := replicaOn(t, st, "replica-b")

	first, err := a.Open(ctx, hello("ps1-a"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Open(ctx, hello("ps1-a"))
	if !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("a second stream through another replica = %v, want ErrConflict", err)
	}
	// The refusal says when the first replica's hold may end, so the agent
	// comes back then rather than after a backoff grown meanwhile.
	if d, ok := errdefs.RetryDelay(errdefs.ToNative(errdefs.ToGRPC(err))); !ok || d <= 0 || d > 6*time.Second {
		t.Errorf("the refusal's retry delay = %s, %v; want one within the replica's liveness (5s) and a second", d, ok)
	}
	// Once the first stream closed, its session moves to the other replica.
	if err := a.Close(ctx, first, time.Now()); err != nil {
		t.Fatal(err)
	}
	moved, err := b.Open(ctx, hello("ps1-a"))
	if err != nil {
		t.Fatalf("a stream after the first closed = %v, want it to open", err)
	}
	if !moved.Resumed {
		t.Error("the stream on the other replica did not resume the session (the agent would lose its runs)")
	}

	// A replica that dies with the stream open: once its liveness key is
	// gone, the stream moves.
	if _, err := a.Open(ctx, hello("ps1-b")); err != nil {
		t.Fatal(err)
	}
	stopA()
	if _, err := b.Open(ctx, hello("ps1-b")); err != nil {
		t.Errorf("a stream after its replica died = %v, want it to open", err)
	}
}
