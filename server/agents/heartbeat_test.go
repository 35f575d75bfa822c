package agents_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/store"
	"github.com/osvc/osvc/server/store/storetest"
)

// clock is a settable clock for the registry.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

func newBeatRegistry(t *testing.T, clk *clock) (*agents.Registry, *store.Store) {
	t.Helper()
	st := storetest.New(t)
	r, err := agents.New(agents.Config{Store: st, ServerID: "test", Now: clk.Now, RefreshEvery: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	createSite(t, st, "PS1")
	return r, st
}

func drive(free int64) []*osvcv1.Drive {
	return []*osvcv1.Drive{{Path: "/srv", FreeBytes: free, TotalBytes: 100 << 30}}
}

func record(t *testing.T, st *store.Store, id string) (*osvcv1.Agent, int64) {
	t.Helper()
	a, rev, err := store.Get[*osvcv1.Agent](context.Background(), st, st.AgentKey(id))
	if err != nil {
		t.Fatal(err)
	}
	return a, rev
}

func flush(t *testing.T, r *agents.Registry) {
	t.Helper()
	if err := r.Flush(context.Background()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
}

func TestHeartbeatsRewriteTheRecordOnlyWhenDrivesMoveOrItIsOld(t *testing.T) {
	t.Parallel()
	clk := &clock{now: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)}
	r, st := newBeatRegistry(t, clk)
	ctx := context.Background()
	h := hello("ps1-a")
	h.Drives = drive(50 << 30)
	s, err := r.Open(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	_, opened := record(t, st, "ps1-a")

	// Beats with free space moving by less than a twentieth of the drive:
	// nothing to write.
	for i := range 10 {
		clk.now = clk.now.Add(10 * time.Second)
		r.Heartbeat(s, clk.now, drive(50<<30-int64(i)<<20))
	}
	flush(t, r)
	if _, rev := record(t, st, "ps1-a"); rev != opened {
		t.Errorf("the record was rewritten (revision %d → %d) for beats that changed nothing worth it", opened, rev)
	}

	// Free space moved by 10 GiB of 100: written at the next flush.
	r.Heartbeat(s, clk.now, drive(40<<30))
	flush(t, r)
	a, moved := record(t, st, "ps1-a")
	if moved == opened || a.GetDrives()[0].GetFreeBytes() != 40<<30 || !a.GetLastSeenTime().AsTime().Equal(clk.now) {
		t.Errorf("after the drive moved: revision %d (was %d), free %d, last seen %v; want the beat written", moved, opened, a.GetDrives()[0].GetFreeBytes(), a.GetLastSeenTime().AsTime())
	}

	// Five minutes on, the same drives are written to refresh last seen.
	clk.now = clk.now.Add(5 * time.Minute)
	r.Heartbeat(s, clk.now, drive(40<<30))
	flush(t, r)
	if a, rev := record(t, st, "ps1-a"); rev == moved || !a.GetLastSeenTime().AsTime().Equal(clk.now) {
		t.Errorf("after RefreshEvery: revision %d (was %d), last seen %v; want refreshed to %v", rev, moved, a.GetLastSeenTime().AsTime(), clk.now)
	}
}

// Not parallel: it counts etcd's revisions, which other tests' writes move.
func TestAFlushWritesManyAgentsInFewTransactions(t *testing.T) {
	clk := &clock{now: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)}
	r, st := newBeatRegistry(t, clk)
	ctx := context.Background()
	const n = 250
	sessions := make([]*agents.Session, n)
	for i := range sessions {
		s, err := r.Open(ctx, hello(fmt.Sprintf("ps1-%03d", i)))
		if err != nil {
			t.Fatal(err)
		}
		sessions[i] = s
	}
	before, err := st.Client().Get(ctx, "unused")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sessions {
		r.Heartbeat(s, clk.now, drive(1<<30))
	}
	flush(t, r)
	after, err := st.Client().Get(ctx, "unused")
	if err != nil {
		t.Fatal(err)
	}
	if txns, want := after.Header.Revision-before.Header.Revision, int64((n+99)/100); txns != want {
		t.Errorf("%d records took %d etcd transactions, want %d", n, txns, want)
	}
	for i := range sessions {
		if a, _ := record(t, st, fmt.Sprintf("ps1-%03d", i)); len(a.GetDrives()) != 1 {
			t.Fatalf("agent %d: drives %v, want the beat's", i, a.GetDrives())
		}
	}
}

func TestAPendingBeatNeverOverwritesARecordTheStreamNoLongerOwns(t *testing.T) {
	t.Parallel()
	clk := &clock{now: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)}
	r, st := newBeatRegistry(t, clk)
	other, _ := newBeatRegistryOn(t, st, clk)
	ctx := context.Background()
	old, err := r.Open(ctx, hello("ps1-a"))
	if err != nil {
		t.Fatal(err)
	}
	r.Heartbeat(old, clk.now, drive(1<<30))
	// A newer stream on another replica writes the record first.
	h := hello("ps1-a")
	h.Host = "newer"
	if _, err := other.Open(ctx, h); err != nil {
		t.Fatal(err)
	}
	flush(t, r)
	a, rev := record(t, st, "ps1-a")
	if a.GetHost() != "newer" || len(a.GetDrives()) != 0 {
		t.Errorf("record = host %q drives %v, want the newer stream's (host newer, no drives)", a.GetHost(), a.GetDrives())
	}
	// The old stream's later beats write nothing either.
	clk.now = clk.now.Add(time.Hour)
	r.Heartbeat(old, clk.now, drive(2<<30))
	flush(t, r)
	if _, again := record(t, st, "ps1-a"); again != rev {
		t.Errorf("the replaced stream's beat rewrote the record (revision %d → %d)", rev, again)
	}
}

func newBeatRegistryOn(t *testing.T, st *store.Store, clk *clock) (*agents.Registry, *store.Store) {
	t.Helper()
	r, err := agents.New(agents.Config{Store: st, ServerID: "test-2", Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return r, st
}
