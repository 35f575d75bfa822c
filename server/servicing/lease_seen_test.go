package servicing_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/servicing/servicingtest"
	"github.com/osvc/osvc/server/store"
)

// seen is what a scheduling pass reads: the PENDING run and the connected
// agent, each at its revision.
func seen(t *testing.T, env *servicingtest.Env, run, agent string) (servicing.ActiveRun, agents.Connected) {
	t.Helper()
	ctx := context.Background()
	active, err := env.Service.ActiveRuns(ctx)
	if err != nil {
		t.Fatal(err)
	}
	connected, err := env.Agents.Scan(ctx, func(string, int64) {})
	if err != nil {
		t.Fatal(err)
	}
	var ar servicing.ActiveRun
	for _, a := range active {
		if a.Run.GetName() == run {
			ar = a
		}
	}
	for _, c := range connected {
		if c.Agent.GetName() == agent {
			return ar, c
		}
	}
	t.Fatalf("agent %s is not connected", agent)
	return ar, agents.Connected{}
}

func scheduled(t *testing.T, env *servicingtest.Env, img *osvcv1.Image) *osvcv1.Run {
	t.Helper()
	_, run, err := env.Service.CreateSchedule(context.Background(), img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false)
	if err != nil {
		t.Fatalf("CreateSchedule: %v", err)
	}
	return run
}

// notAssigned fails the test when run has an assignment: a refused lease must
// leave none behind.
func notAssigned(t *testing.T, env *servicingtest.Env, run string) {
	t.Helper()
	id, _ := servicing.RunID(run)
	resp, err := env.Store.Client().Get(context.Background(), env.Store.AssignmentKey(id))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 0 {
		t.Errorf("run %s has an assignment after a refused lease", run)
	}
}

func TestLeaseSeenTakesTheRunInOneTransactionAndTheFirstReportStoresTheToken(t *testing.T) {
	t.Parallel()
	commits := 0
	env, img := newEnv(t, servicingtest.Options{BeforeCommit: func(txn string) {
		if strings.HasPrefix(txn, "lease ") {
			commits++
		}
	}})
	ctx := context.Background()
	run := scheduled(t, env, img)
	env.Connect(t, agents.ID(agent), "PS1", 1, 30*time.Second)
	ar, a := seen(t, env, run.GetName(), agent)

	leased, err := env.Service.LeaseSeen(ctx, ar, a)
	if err != nil {
		t.Fatalf("LeaseSeen: %v", err)
	}
	if commits != 1 {
		t.Errorf("the lease committed %d times, want once", commits)
	}
	token := env.AssignmentRevision(t, run.GetName())
	if leased.GetFencingToken() != token || leased.GetState() != osvcv1.RunState_RUN_STATE_LEASED || leased.GetAgent() != agent {
		t.Errorf("leased = %s to %s token %d, want LEASED to %s with the assignment's revision %d", leased.GetState(), leased.GetAgent(), leased.GetFencingToken(), agent, token)
	}
	// GetRun takes the token from the assignment until the agent reports.
	if got := env.Run(t, run.GetName()).GetFencingToken(); got != token {
		t.Errorf("GetRun token = %d, want %d", got, token)
	}
	if err := env.Service.ReportProgress(ctx, agent, &osvcv1.Progress{Run: run.GetName(), FencingToken: token, Percent: 5}); err != nil {
		t.Fatalf("first report: %v", err)
	}
	id, _ := servicing.RunID(run.GetName())
	stored, err := env.Store.Client().Get(ctx, env.Store.RunKey(id))
	if err != nil {
		t.Fatal(err)
	}
	r, err := store.Unmarshal[*osvcv1.Run](stored.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	if r.GetFencingToken() != token {
		t.Errorf("stored token after the first report = %d, want %d", r.GetFencingToken(), token)
	}
}

func TestLeaseSeenRefusesARunCanceledSinceThePassReadIt(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run := scheduled(t, env, img)
	env.Connect(t, agents.ID(agent), "PS1", 1, 30*time.Second)
	ar, a := seen(t, env, run.GetName(), agent)
	if _, err := env.Service.CancelRun(ctx, run.GetName(), "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Service.LeaseSeen(ctx, ar, a); err == nil {
		t.Fatal("LeaseSeen of a run canceled since it was read succeeded")
	}
	notAssigned(t, env, run.GetName())
	if r := env.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_CANCELED {
		t.Errorf("run = %s, want CANCELED", r.GetState())
	}
}

func TestLeaseSeenRefusesAnAgentWhoseSessionEndedSinceThePassReadIt(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run := scheduled(t, env, img)
	old := env.Connect(t, agents.ID(agent), "PS1", 1, 30*time.Second)
	ar, a := seen(t, env, run.GetName(), agent)
	// The agent reconnects on a new session: the old one is gone.
	if _, err := env.Store.Client().Revoke(ctx, old); err != nil {
		t.Fatal(err)
	}
	env.Connect(t, agents.ID(agent), "PS1", 1, 30*time.Second)

	_, err := env.Service.LeaseSeen(ctx, ar, a)
	if !errors.Is(err, errdefs.ErrContended) {
		t.Fatalf("LeaseSeen on an ended session = %v, want ErrContended", err)
	}
	notAssigned(t, env, run.GetName())
	if r := env.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_PENDING || r.GetAttempt() != 0 {
		t.Errorf("run = %s attempt %d, want PENDING untouched", r.GetState(), r.GetAttempt())
	}
}

func TestLeaseSeenRefusesARunAnotherPassLeasedMeanwhile(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run := scheduled(t, env, img)
	env.Connect(t, agents.ID(agent), "PS1", 1, 30*time.Second)
	other := env.Connect(t, "ps1-b", "PS1", 1, 30*time.Second)
	ar, a := seen(t, env, run.GetName(), agent)
	first, err := env.Service.Lease(ctx, run.GetName(), 0, "agents/ps1-b", int64(other))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Service.LeaseSeen(ctx, ar, a); err == nil {
		t.Fatal("LeaseSeen of a run leased meanwhile succeeded")
	}
	if r := env.Run(t, run.GetName()); r.GetAgent() != "agents/ps1-b" || r.GetFencingToken() != first.GetFencingToken() || r.GetAttempt() != 1 {
		t.Errorf("run = %s attempt %d token %d, want still the first lease's (ps1-b, %d)", r.GetAgent(), r.GetAttempt(), r.GetFencingToken(), first.GetFencingToken())
	}
}
