package content_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/store"
	"github.com/osvc/osvc/server/store/storetest"
)

// clock is a settable clock shared by a library and its collector.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

var t0 = time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)

// collectFixture is a library on a backend and a collector on a fresh
// store prefix, both on one clock, with a grace period of a day.
type collectFixture struct {
	store *store.Store
	lib   *library
	col   *content.Collector
	clock *clock
}

func newCollectFixture(t *testing.T, b backend) *collectFixture {
	t.Helper()
	st := storetest.New(t)
	clk := &clock{t: t0}
	lib := b.newLibrary(t, content.Config{Store: st, Now: clk.Now})
	col, err := content.NewCollector(content.CollectorConfig{Store: st, Library: lib.Library, ServerID: "test", Grace: 24 * time.Hour, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return &collectFixture{store: st, lib: lib, col: col, clock: clk}
}

// write stores data at time at and returns its sha256.
func (f *collectFixture) write(t *testing.T, data string, at time.Time) string {
	t.Helper()
	f.clock.Set(at)
	c, _, err := f.lib.Write(context.Background(), content.WriteHeader{}, bytes.NewReader([]byte(data)))
	if err != nil {
		t.Fatal(err)
	}
	return c.GetSha256()
}

// held tells whether the library still holds sha: its record and its data.
func (f *collectFixture) held(t *testing.T, sha string) bool {
	t.Helper()
	stored := slices.Contains(f.lib.contents(t), blobEntry(sha))
	_, err := f.lib.Stat(context.Background(), sha)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		if stored {
			t.Errorf("blob %s lost its record but its data is still there", sha)
		}
		return false
	case err != nil:
		t.Fatal(err)
	}
	if !stored {
		t.Errorf("blob %s is recorded but its data is gone", sha)
	}
	return true
}

func (f *collectFixture) collect(t *testing.T, at time.Time) []string {
	t.Helper()
	f.clock.Set(at)
	removed, err := f.col.Collect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	return removed
}

// put stores v under key, as the catalog and servicing store it.
func (f *collectFixture) put(t *testing.T, key string, v proto.Message) {
	t.Helper()
	data, err := f.store.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Client().Put(context.Background(), key, string(data)); err != nil {
		t.Fatal(err)
	}
}

func TestCollectRemovesOnlyOldBlobsNothingReferences(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		f := newCollectFixture(t, b)
		h := time.Hour

		unreferenced := f.write(t, "an upload never imported", t0)
		version := f.write(t, "an image version", t0)
		updateFile := f.write(t, "an update file", t0)
		endedResult := f.write(t, "the result of a run that ended without a swap", t0)
		namedResult := f.write(t, "a result named by a run in progress", t0)
		claimed := f.write(t, "an old upload imported again", t0)
		f.put(t, f.store.ImageKey("win11"), &osvcv1.Image{Name: "images/win11", Versions: []*osvcv1.ImageVersion{{Version: 1, Sha256: version}}})
		f.put(t, f.store.UpdateKey("kb1"), &osvcv1.Update{Name: "updates/kb1", Files: []*osvcv1.UpdateFile{{FileName: "kb1.cab", Sha256: updateFile}}})
		f.put(t, f.store.RunKey("ended"), &osvcv1.Run{Name: "runs/ended", State: osvcv1.RunState_RUN_STATE_FAILED, ResultSha256: endedResult})
		f.put(t, f.store.RunKey("named"), &osvcv1.Run{Name: "runs/named", State: osvcv1.RunState_RUN_STATE_LEASED,
			StartTime: timestamppb.New(t0.Add(3 * h)), ResultSha256: namedResult})
		// A run leased at t0+1h uploads its result at t0+2h and has not reported it yet.
		running := &osvcv1.Run{Name: "runs/running", State: osvcv1.RunState_RUN_STATE_IN_PROCESS, StartTime: timestamppb.New(t0.Add(h))}
		f.put(t, f.store.RunKey("running"), running)
		uploadedByRun := f.write(t, "a result uploaded, not yet reported", t0.Add(2*h))
		young := f.write(t, "an upload of the last day", t0.Add(30*h))
		f.clock.Set(t0.Add(30 * h))
		if _, err := f.lib.Claim(ctx, claimed); err != nil {
			t.Fatal(err)
		}

		removed := f.collect(t, t0.Add(40*h))
		want := []string{unreferenced, endedResult}
		slices.Sort(want)
		if !slices.Equal(removed, want) {
			t.Errorf("removed %v, want the unreferenced upload and the ended run's result %v", removed, want)
		}
		for name, sha := range map[string]string{"an unreferenced old blob": unreferenced, "an ended run's result": endedResult} {
			if f.held(t, sha) {
				t.Errorf("%s is still held", name)
			}
		}
		for name, sha := range map[string]string{
			"an image version":                       version,
			"an update file":                         updateFile,
			"the result named by a run in progress":  namedResult,
			"an upload of a run in progress":         uploadedByRun,
			"a blob younger than the grace period":   young,
			"a blob claimed within the grace period": claimed,
		} {
			if !f.held(t, sha) {
				t.Errorf("%s was removed", name)
			}
		}

		// Once the runs end, what only they protected goes.
		running.State = osvcv1.RunState_RUN_STATE_FAILED
		f.put(t, f.store.RunKey("running"), running)
		f.put(t, f.store.RunKey("named"), &osvcv1.Run{Name: "runs/named", State: osvcv1.RunState_RUN_STATE_CANCELED})
		removed = f.collect(t, t0.Add(41*h))
		want = []string{uploadedByRun, namedResult}
		slices.Sort(want)
		if !slices.Equal(removed, want) {
			t.Errorf("after the runs ended removed %v, want their uploads %v", removed, want)
		}
	})
}

func TestCollectKeepsABlobClaimedAfterItWasJudged(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		f := newCollectFixture(t, b)
		sha := f.write(t, "judged old, then imported", t0)
		resp, err := f.store.Client().Get(ctx, f.store.ContentKey(sha))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("read the record: %v", err)
		}
		judged := resp.Kvs[0].ModRevision
		f.clock.Set(t0.Add(48 * time.Hour))
		if _, err := f.lib.Claim(ctx, sha); err != nil {
			t.Fatal(err)
		}
		removed, err := f.lib.CollectAt(ctx, sha, judged)
		if err != nil || removed {
			t.Fatalf("removal at the judged revision after a claim = %v, %v; want the blob kept", removed, err)
		}
		if !f.held(t, sha) {
			t.Error("a blob claimed after it was judged was removed")
		}
	})
}

func TestCollectorRunsPassesWhileElected(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		f := newCollectFixture(t, b)
		sha := f.write(t, "old and unreferenced", t0)
		f.clock.Set(t0.Add(48 * time.Hour))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- f.col.Run(ctx) }()
		deadline := time.Now().Add(time.Minute)
		// The collector removes the record, then the data: the pass is
		// done once both are gone.
		for {
			_, err := f.lib.Stat(context.Background(), sha)
			if errors.Is(err, errdefs.ErrNotFound) {
				if !slices.Contains(f.lib.contents(t), blobEntry(sha)) {
					break
				}
				err = nil
			}
			if err != nil {
				t.Fatal(err)
			}
			if time.Now().After(deadline) {
				t.Fatal("the elected collector did not remove an old unreferenced blob within a minute")
			}
			select {
			case err := <-done:
				t.Fatalf("Run ended early: %v", err)
			case <-time.After(20 * time.Millisecond):
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run after its context ended = %v, want nil", err)
		}
		if f.held(t, sha) {
			t.Error("the blob is still held after the pass")
		}
	})
}

func TestNewCollectorValidatesItsConfig(t *testing.T) {
	t.Parallel()
	f := newCollectFixture(t, backends[0])
	lib := f.lib.Library
	for name, cfg := range map[string]content.CollectorConfig{
		"without a store":       {Library: lib, ServerID: "s"},
		"without a server id":   {Store: f.store, Library: lib},
		"with a negative grace": {Store: f.store, Library: lib, ServerID: "s", Grace: -time.Hour},
		"with a sub-second TTL": {Store: f.store, Library: lib, ServerID: "s", ElectionTTL: time.Millisecond},
	} {
		if _, err := content.NewCollector(cfg); err == nil {
			t.Errorf("NewCollector %s succeeded", name)
		}
	}
}

func TestAnUploadOfHeldBytesRestartsTheGracePeriod(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		f := newCollectFixture(t, b)
		data := "uploaded long ago, sent again to be imported"
		for _, h := range []func(sha string) content.WriteHeader{
			func(sha string) content.WriteHeader { return content.WriteHeader{SHA256: sha} },
			func(string) content.WriteHeader { return content.WriteHeader{} },
		} {
			sha := f.write(t, data, t0)
			f.clock.Set(t0.Add(30 * time.Hour))
			if _, existed, err := f.lib.Write(context.Background(), h(sha), bytes.NewReader([]byte(data))); err != nil || !existed {
				t.Fatalf("Write again = existed %v, %v", existed, err)
			}
			if removed := f.collect(t, t0.Add(40*time.Hour)); len(removed) != 0 {
				t.Errorf("removed %v ten hours after the blob was sent again, want it kept for the grace period", removed)
			}
			if removed := f.collect(t, t0.Add(60*time.Hour)); len(removed) != 1 {
				t.Errorf("removed %v a grace period after the blob was sent again, want it removed", removed)
			}
		}
	})
}

func TestCollectKeepsARunsLogFilesWhileTheRunNamesThem(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		f := newCollectFixture(t, b)
		servicingLog := f.write(t, "2026-03-01 08:00:00.000Z [INFO]  run: step started: step=DRIVE\n", t0)
		engineLog := f.write(t, "wimlib-imagex mountrw source.wim 1 mount\n", t0)
		for _, state := range []osvcv1.RunState{osvcv1.RunState_RUN_STATE_SUCCEEDED, osvcv1.RunState_RUN_STATE_FAILED, osvcv1.RunState_RUN_STATE_CANCELED} {
			f.put(t, f.store.RunKey("ended"), &osvcv1.Run{Name: "runs/ended", State: state, Artifacts: []*osvcv1.RunArtifact{
				{Name: "OfflineServicingMgr.log", Sha256: servicingLog},
				{Name: "dism.log", Sha256: engineLog},
			}})
			if removed := f.collect(t, t0.Add(100*24*time.Hour)); len(removed) != 0 {
				t.Errorf("a %s run's log files: removed %v long past the grace period, want them kept while the run names them", state, removed)
			}
		}
		if _, err := f.store.Client().Delete(ctx, f.store.RunKey("ended")); err != nil {
			t.Fatal(err)
		}
		removed := f.collect(t, t0.Add(101*24*time.Hour))
		want := []string{servicingLog, engineLog}
		slices.Sort(want)
		if !slices.Equal(removed, want) {
			t.Errorf("once no run names them removed %v, want the log files %v", removed, want)
		}
	})
}

func TestCollectRemovesDataWithoutARecordOnceOld(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		f := newCollectFixture(t, b)
		// The store's times are the real clock's.
		now := time.Now()
		orphan := f.write(t, "data whose record was lost", now)
		if _, err := f.store.Client().Delete(ctx, f.store.ContentKey(orphan)); err != nil {
			t.Fatal(err)
		}
		version := f.write(t, "an image version", now)
		f.put(t, f.store.ImageKey("win11"), &osvcv1.Image{Name: "images/win11", Versions: []*osvcv1.ImageVersion{{Version: 1, Sha256: version}}})

		if removed := f.collect(t, now.Add(time.Hour)); len(removed) != 0 {
			t.Errorf("removed %v within the grace period, want nothing", removed)
		}
		f.lib.wantContents(t, blobEntry(orphan), blobEntry(version))
		if removed := f.collect(t, now.Add(25*time.Hour)); !slices.Equal(removed, []string{orphan}) {
			t.Errorf("removed %v past the grace period, want the data without a record %s", removed, orphan)
		}
		f.lib.wantContents(t, blobEntry(version))
	})
}

// A version kept as a package tree keeps its manifest and every file the
// manifest lists; once no version names the tree, they go.
func TestCollectKeepsTheFilesOfAPackageTreeWhileAVersionNamesIt(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		f := newCollectFixture(t, b)
		install := f.write(t, "MSWIM install image", t0)
		setup := f.write(t, "MZ setup", t0)
		boot := f.write(t, "boot configuration", t0)
		tree := &osvcv1.PackageTree{Files: []*osvcv1.PackageFile{
			{Path: "boot/bcd", Sha256: boot, SizeBytes: 18},
			{Path: "setup.exe", Sha256: setup, SizeBytes: 8},
			{Path: "sources/install.wim", Sha256: install, SizeBytes: 19},
		}}
		f.clock.Set(t0)
		ref, err := f.lib.PutTree(ctx, tree)
		if err != nil {
			t.Fatal(err)
		}
		f.put(t, f.store.ImageKey("upgrade"), &osvcv1.Image{Name: "images/upgrade", Versions: []*osvcv1.ImageVersion{{Version: 1, Sha256: install, Tree: ref}}})
		if removed := f.collect(t, t0.Add(100*24*time.Hour)); len(removed) != 0 {
			t.Errorf("removed %v while a version names their tree", removed)
		}
		if _, err := f.store.Client().Delete(ctx, f.store.ImageKey("upgrade")); err != nil {
			t.Fatal(err)
		}
		removed := f.collect(t, t0.Add(101*24*time.Hour))
		want := []string{install, setup, boot, ref.GetSha256()}
		slices.Sort(want)
		if !slices.Equal(removed, want) {
			t.Errorf("once no version names the tree removed %v, want its files and manifest %v", removed, want)
		}
	})
}
