package scheduler

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/servicing/servicingtest"
)

// A new leader's first pass and its watches start together; a watch that
// began at "now" once its goroutine ran missed what was written between the
// pass's reads and that moment, and the run waited for the resync. Here the
// write comes before the watch starts, as it did then.
func TestWatchReportsEventsAfterItsStartRevisionThoughItStartsLate(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	s, err := New(Config{Store: env.Store, Servicing: env.Service, Agents: env.Agents, Logger: env.Logger, ServerID: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := env.Store.Client().Get(ctx, env.Store.RunsPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	start := resp.Header.Revision
	if _, err := env.Store.Put(ctx, env.Store.RunKey("r-late"), &osvcv1.Run{Name: "runs/r-late", State: osvcv1.RunState_RUN_STATE_PENDING}); err != nil {
		t.Fatal(err)
	}

	poked := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.watch(ctx, env.Store.RunsPrefix(), start, relevantRunEvent, func() {
			select {
			case poked <- struct{}{}:
			default:
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-poked:
	case <-time.After(20 * time.Second):
		t.Fatal("a PENDING run written after the watch's start revision, before the watch began, woke nothing in 20s")
	}
}
