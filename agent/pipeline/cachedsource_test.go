package pipeline

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc"

	"github.com/osvc/osvc/agent/cache"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/transfer"
	"github.com/osvc/osvc/pkg/transfer/transfertest"
)

// TestNextMonthsSourceComesThroughTheCacheAsTheChunksLastMonthsVersionLacks
// services the sample image on an agent whose cache fetches over the
// network (as on another machine than the library): a run that fails
// after committing into its copy leaves the cached version 1 as it was; a
// run that succeeds makes version 2; servicing version 2 then fetches it
// through the cache, which holds version 1, as the chunks version 1 lacks:
// fewer bytes cross the connection than version 2 has.
func TestNextMonthsSourceComesThroughTheCacheAsTheChunksLastMonthsVersionLacks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// Large enough to be cut into chunks (several times chunks.MinBlobBytes).
	f := newFixtureOf(t, 32<<20)
	wire := &transfertest.WireCounter{}
	agentCache, err := cache.New(cache.Config{Dir: t.TempDir(), Source: transfertest.OverNetwork{C: f.dial(t, grpc.WithStatsHandler(wire))}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(agentCache.Close)
	cfg := newConfig(t, f)
	cfg.Sources, cfg.UpdateFiles = agentCache, agentCache
	eng := recordCalls(&cfg)
	v1 := f.source.GetSha256()

	eng.before = func(_ context.Context, call string) error {
		if strings.HasPrefix(call, "export") {
			return errors.New("the drive filled up")
		}
		return nil
	}
	failed := &recorder{}
	if err := Run(ctx, cfg, f.assign(&osvcv1.Run{RemoveSuperseded: true}), failed); err != nil {
		t.Fatal(err)
	}
	if got := failed.result.GetState(); got != osvcv1.RunState_RUN_STATE_FAILED {
		t.Fatalf("the run whose export fails ended %s", got)
	}
	if !containsCall(eng.servicing(), "unmount 1 commit") {
		t.Fatalf("the failed run never committed into its copy: %v", eng.servicing())
	}
	if got, _, err := transfer.HashFile(ctx, agentCache.Path(v1)); err != nil || got != v1 {
		t.Fatalf("after a failed run the cached version 1 hashes to %s (%v), not its name %s", got, err, v1)
	}

	eng.mu.Lock()
	eng.before = nil
	eng.mu.Unlock()
	serviced := &recorder{}
	if err := Run(ctx, cfg, f.assign(&osvcv1.Run{Name: "runs/r2", RemoveSuperseded: true}), serviced); err != nil {
		t.Fatal(err)
	}
	res := serviced.result
	if res.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || res.GetResultSha256() == v1 {
		t.Fatalf("servicing version 1 ended %s with %s: %s", res.GetState(), res.GetResultSha256(), res.GetError())
	}
	if got, _, err := transfer.HashFile(ctx, agentCache.Path(v1)); err != nil || got != v1 {
		t.Fatalf("after a run the cached version 1 hashes to %s (%v), not its name %s", got, err, v1)
	}

	// Next month: version 2 is the source.
	f.source = &osvcv1.ImageVersion{Version: 2, Sha256: res.GetResultSha256(), SizeBytes: res.GetResultSizeBytes()}
	wire.N.Store(0)
	next := &recorder{}
	if err := Run(ctx, cfg, f.assign(&osvcv1.Run{RemoveSuperseded: true}), next); err != nil {
		t.Fatal(err)
	}
	if got := next.result.GetState(); got != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("servicing version 2 ended %s: %s", got, next.result.GetError())
	}
	sent, size := wire.N.Load(), res.GetResultSizeBytes()
	t.Logf("version 2 (%d bytes) came as %d bytes over the connection (%.2f)", size, sent, float64(sent)/float64(size))
	if sent >= size {
		t.Errorf("version 2 came as %d bytes over the connection, not fewer than its %d", sent, size)
	}
	if !loggedText(next, "source version copied", "fetched through the agent's cache, copied from there") {
		t.Errorf("no log line says the source came through the agent's cache as a copy")
	}
}

func containsCall(calls []string, want string) bool {
	for _, c := range calls {
		if c == want {
			return true
		}
	}
	return false
}

// loggedText tells whether a log line of rec holds all of texts.
func loggedText(rec *recorder, texts ...string) bool {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, l := range rec.logs {
		all := true
		for _, s := range texts {
			all = all && strings.Contains(l.GetMessage(), s)
		}
		if all {
			return true
		}
	}
	return false
}
