package agents_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/sites"
	"github.com/osvc/osvc/server/store"
	"github.com/osvc/osvc/server/store/storetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	storetest.Close()
	os.Exit(code)
}

// newRegistry returns a registry on a fresh store where site PS1, the
// site of the tests' agents, exists.
func newRegistry(t *testing.T) (*agents.Registry, *store.Store) {
	t.Helper()
	st := storetest.New(t)
	createSite(t, st, "PS1")
	r, err := agents.New(agents.Config{Store: st, ServerID: "test", SessionTTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return r, st
}

// createSite creates site code, as an administrator does before its agents connect.
func createSite(t *testing.T, st *store.Store, code string) {
	t.Helper()
	r, err := sites.New(sites.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Create(context.Background(), &osvcv1.Site{Code: code}); err != nil {
		t.Fatal(err)
	}
}

func TestAnAgentOfASiteThatDoesNotExistIsRefusedWithTheWayToCreateIt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r, st := newRegistry(t)
	_, err := r.Open(ctx, &osvcv1.Hello{Name: "ps2-a", Site: "PS2", Capacity: 1})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "create it with: osvcctl site create PS2") {
		t.Fatalf("Open of an agent of PS2, which does not exist = %v; want FailedPrecondition saying how to create PS2", err)
	}
	if _, _, err := store.Get[*osvcv1.Agent](ctx, st, st.AgentKey("ps2-a")); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("the refused agent's record: %v, want none", err)
	}
	createSite(t, st, "PS2")
	if _, err := r.Open(ctx, &osvcv1.Hello{Name: "ps2-a", Site: "PS2", Capacity: 1}); err != nil {
		t.Errorf("Open once PS2 exists: %v", err)
	}
}

func hello(name string) *osvcv1.Hello {
	return &osvcv1.Hello{Name: name, Site: "PS1", Capacity: 1}
}

func agentState(t *testing.T, st *store.Store, id string) (osvcv1.AgentState, int64) {
	t.Helper()
	a, rev, err := store.Get[*osvcv1.Agent](context.Background(), st, st.AgentKey(id))
	if err != nil {
		t.Fatal(err)
	}
	return a.GetState(), rev
}

func TestValidateHello(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name  string
		hello *osvcv1.Hello
		field string
	}{
		{"no hello", nil, "hello"},
		{"an upper-case name (the agent's own rule refuses it too)", hello("PS1-A"), "hello.name"},
		{"a name with a dot", hello("ps1.example"), "hello.name"},
		{"a name starting with a digit", hello("1agent"), "hello.name"},
		{"a bad site", &osvcv1.Hello{Name: "ps1-a", Site: "ps1"}, "hello.site"},
		{"a negative capacity", &osvcv1.Hello{Name: "ps1-a", Site: "PS1", Capacity: -1}, "hello.capacity"},
		{"a distribution URL that is no URL", &osvcv1.Hello{Name: "ps1-a", Site: "PS1", DistributionUrl: "dp1:8090"}, "hello.distribution_url"},
		{"a distribution URL of another scheme", &osvcv1.Hello{Name: "ps1-a", Site: "PS1", DistributionUrl: "file:///etc/passwd"}, "hello.distribution_url"},
		{"too many distributed images", &osvcv1.Hello{Name: "ps1-a", Site: "PS1", DistributedImages: make([]string, agents.MaxDistributedImages+1)}, "hello.distributed_images"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var fv *errdefs.FieldViolation
			if err := agents.ValidateHello(tt.hello); !errors.As(err, &fv) || fv.Field != tt.field {
				t.Errorf("ValidateHello = %v, want a field violation on %s", err, tt.field)
			}
		})
	}
	if err := agents.ValidateHello(hello("ps1-a")); err != nil {
		t.Errorf("ValidateHello of a good hello = %v", err)
	}
}

func TestAReconnectWithinTheTTLResumesTheSessionAndTheOldStreamCannotCloseIt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r, st := newRegistry(t)
	first, err := r.Open(ctx, hello("ps1-a"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Client().Revoke(context.Background(), first.Lease) })
	second, err := r.Open(ctx, hello("ps1-a"))
	if err != nil {
		t.Fatal(err)
	}
	if !second.Resumed || second.Lease != first.Lease || first.Resumed {
		t.Fatalf("second session resumed %t on %x, first on %x: want the first's lease resumed", second.Resumed, second.Lease, first.Lease)
	}
	// The first stream ends after the second took over: the agent stays connected.
	if err := r.Close(ctx, first, time.Now()); err != nil {
		t.Fatal(err)
	}
	if state, _ := agentState(t, st, "ps1-a"); state != osvcv1.AgentState_AGENT_STATE_CONNECTED {
		t.Fatalf("after the replaced stream closed: %s, want CONNECTED", state)
	}
	if err := r.Close(ctx, second, time.Now()); err != nil {
		t.Fatal(err)
	}
	if state, _ := agentState(t, st, "ps1-a"); state != osvcv1.AgentState_AGENT_STATE_DISCONNECTED {
		t.Fatalf("after the current stream closed: %s, want DISCONNECTED", state)
	}
}

func TestMarkLostOnlyWhenThePresenceIsGoneAndTheRecordUnchanged(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r, st := newRegistry(t)
	s, err := r.Open(ctx, hello("ps1-a"))
	if err != nil {
		t.Fatal(err)
	}
	_, rev := agentState(t, st, "ps1-a")
	if lost, err := r.MarkLost(ctx, "ps1-a", rev); err != nil || lost {
		t.Fatalf("MarkLost of a present agent = %t, %v; want false", lost, err)
	}
	if _, err := st.Client().Revoke(ctx, s.Lease); err != nil {
		t.Fatal(err)
	}
	if lost, err := r.MarkLost(ctx, "ps1-a", rev-1); err != nil || lost {
		t.Fatalf("MarkLost at a stale revision = %t, %v; want false", lost, err)
	}
	if lost, err := r.MarkLost(ctx, "ps1-a", rev); err != nil || !lost {
		t.Fatalf("MarkLost after the session ended = %t, %v; want true", lost, err)
	}
	if state, _ := agentState(t, st, "ps1-a"); state != osvcv1.AgentState_AGENT_STATE_LOST {
		t.Fatalf("state %s, want LOST", state)
	}
}

func TestHeldRunsResumeOnlyWhenTheAssignmentIsTheAgentsWithTheSameToken(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r, st := newRegistry(t)
	s, err := r.Open(ctx, hello("ps1-a"))
	if err != nil {
		t.Fatal(err)
	}
	assign := func(run, agent string) int64 {
		t.Helper()
		data, err := st.Marshal(&storev1.Assignment{Run: "runs/" + run, Agent: agent})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := st.Client().Put(ctx, st.AssignmentKey(run), string(data), clientv3.WithLease(s.Lease))
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	mine := assign("r-mine", "agents/ps1-a")
	theirs := assign("r-theirs", "agents/ps1-b")
	resume, discard, resumed, err := r.Held(ctx, s, []*osvcv1.HeldRun{
		{Run: "runs/r-mine", FencingToken: mine},
		{Run: "runs/r-theirs", FencingToken: theirs},
		{Run: "runs/r-mine-old", FencingToken: mine - 1},
		{Run: "images/not-a-run", FencingToken: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(resume) != 1 || resume[0] != "runs/r-mine" || resumed["runs/r-mine"] != mine {
		t.Errorf("resume = %v (%v), want runs/r-mine at %d", resume, resumed, mine)
	}
	if len(discard) != 3 {
		t.Errorf("discard = %v, want the three others", discard)
	}
}

func TestDeletingAnAgentIsRefusedWhileItHoldsARunOrIsConnected(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r, st := newRegistry(t)
	s, err := r.Open(ctx, hello("ps1-a"))
	if err != nil {
		t.Fatal(err)
	}
	revoked := 0
	within := func(*store.Tx) error { revoked++; return nil }
	assignment, err := st.Marshal(&storev1.Assignment{Run: "runs/r-1", Agent: "agents/ps1-a"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Client().Put(ctx, st.AssignmentKey("r-1"), string(assignment), clientv3.WithLease(s.Lease)); err != nil {
		t.Fatal(err)
	}
	err = r.Delete(ctx, "agents/ps1-a", within)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "runs/r-1") {
		t.Fatalf("Delete of an agent holding runs/r-1 = %v; want FailedPrecondition naming the run", err)
	}
	if _, err := st.Client().Delete(ctx, st.AssignmentKey("r-1")); err != nil {
		t.Fatal(err)
	}
	err = r.Delete(ctx, "agents/ps1-a", within)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "connected") {
		t.Fatalf("Delete of a connected agent = %v; want FailedPrecondition saying it is connected", err)
	}
	// Its stream closed, its session lives on until the TTL: still refused.
	if err := r.Close(ctx, s, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := r.Delete(ctx, "agents/ps1-a", within); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("Delete within the session's TTL = %v; want FailedPrecondition", err)
	}
	if revoked != 0 {
		t.Fatalf("a refused delete revoked the agent %d times", revoked)
	}
	// The session ended: the agent goes, revoked in the same transaction.
	if _, err := st.Client().Revoke(ctx, s.Lease); err != nil {
		t.Fatal(err)
	}
	if err := r.Delete(ctx, "agents/ps1-a", within); err != nil {
		t.Fatalf("Delete once the session ended: %v", err)
	}
	if _, _, err := store.Get[*osvcv1.Agent](ctx, st, st.AgentKey("ps1-a")); !errors.Is(err, errdefs.ErrNotFound) || revoked != 1 {
		t.Errorf("after the delete: record %v, revoked %d times; want none, once", err, revoked)
	}
}

func TestDeletingAnAgentTheServerDoesNotKnowIsNotFound(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r, _ := newRegistry(t)
	neverEnrolled := func(*store.Tx) error { return errdefs.Newf(errdefs.ErrNotFound, "never enrolled") }
	if err := r.Delete(ctx, "agents/nobody", neverEnrolled); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Delete of an agent neither recorded nor enrolled = %v, want NotFound", err)
	}
	if err := r.Delete(ctx, "nobody", neverEnrolled); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Delete of a name without agents/ = %v, want InvalidArgument", err)
	}
}
