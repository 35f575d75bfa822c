package servicing_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/servicing/servicingtest"
)

// leaseEnder ends the agent's etcd lease from inside the store's commit
// hook: after a transaction named like prefix has read the run and its
// assignment and before it commits, exactly once.
type leaseEnder struct {
	env    *servicingtest.Env
	lease  clientv3.LeaseID
	prefix atomic.Pointer[string]
	ended  atomic.Bool
	t      *testing.T
}

func (e *leaseEnder) hook(txn string) {
	p := e.prefix.Load()
	if p == nil || !strings.HasPrefix(txn, *p) || !e.ended.CompareAndSwap(false, true) {
		return
	}
	if _, err := e.env.Store.Client().Revoke(context.Background(), e.lease); err != nil {
		e.t.Errorf("revoke the agent's lease: %v", err)
	}
}

func (e *leaseEnder) armFor(txn string) { e.prefix.Store(&txn) }

func newFencedEnv(t *testing.T) (*servicingtest.Env, *osvcv1.Image, *leaseEnder) {
	ender := &leaseEnder{t: t}
	env, img := newEnv(t, servicingtest.Options{BeforeCommit: ender.hook})
	ender.env = env
	return env, img, ender
}

func TestAReportWhoseLeaseEndsBeforeItsCommitIsRefused(t *testing.T) {
	t.Parallel()
	env, img, ender := newFencedEnv(t)
	ctx := context.Background()
	run, lease := leasedRun(t, env, img)
	ender.lease = lease
	ender.armFor("report for " + run.GetName())

	err := env.Service.ReportProgress(ctx, agent, &osvcv1.Progress{Run: run.GetName(), FencingToken: run.GetFencingToken(), Percent: 40})
	if !ender.ended.Load() {
		t.Fatal("the report's transaction never reached its commit")
	}
	if !errors.Is(err, errdefs.ErrStaleLease) {
		t.Fatalf("ReportProgress = %v, want ErrStaleLease: the lease ended before the commit", err)
	}
	if r := env.Run(t, run.GetName()); r.GetPercent() != 0 || r.GetLastProgressTime() != nil || r.GetState() != osvcv1.RunState_RUN_STATE_LEASED {
		t.Errorf("the refused report changed the run: state %s, percent %d, last progress %v", r.GetState(), r.GetPercent(), r.GetLastProgressTime())
	}
}

func TestASwapWhoseLeaseEndsBeforeItsCommitIsRefused(t *testing.T) {
	t.Parallel()
	env, img, ender := newFencedEnv(t)
	ctx := context.Background()
	run, lease := leasedRun(t, env, img)
	ender.lease = lease
	token := run.GetFencingToken()
	// The run is in process before the swap, as it is when an agent reports its result.
	if err := env.Service.ReportStep(ctx, agent, &osvcv1.StepChanged{Run: run.GetName(), FencingToken: token,
		Step: &osvcv1.StepRecord{Step: osvcv1.Step_STEP_SWAP, State: osvcv1.StepState_STEP_STATE_RUNNING}}); err != nil {
		t.Fatal(err)
	}
	v2 := env.Blob(t, "wim of win11 version 2")
	ender.armFor("report for " + run.GetName())

	err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: token,
		State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: v2.GetSha256(), ResultSizeBytes: v2.GetSizeBytes()})
	if !ender.ended.Load() {
		t.Fatal("the swap's transaction never reached its commit")
	}
	if !errors.Is(err, errdefs.ErrStaleLease) {
		t.Fatalf("ReportRunResult = %v, want ErrStaleLease: the lease ended before the swap committed", err)
	}
	got := env.GetImage(t, img.Name)
	if got.GetCurrentVersion() != 1 || len(got.GetVersions()) != 1 || got.GetVersions()[0].GetSha256() != img.GetVersions()[0].GetSha256() {
		t.Errorf("the refused swap changed the image: current %d, versions %v", got.GetCurrentVersion(), got.GetVersions())
	}
	if r := env.Run(t, run.GetName()); r.GetState() == osvcv1.RunState_RUN_STATE_SUCCEEDED || r.GetResultSha256() != "" {
		t.Errorf("the refused swap ended the run: %s with result %q", r.GetState(), r.GetResultSha256())
	}
}

func TestALeaseWhoseAgentLeavesBeforeItsCommitIsRefused(t *testing.T) {
	t.Parallel()
	env, img, ender := newFencedEnv(t)
	ctx := context.Background()
	_, run, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	ender.lease = env.Connect(t, "ps1-a", img.GetSite(), 1, 30*time.Second)
	ender.armFor("lease " + run.GetName())

	_, err = env.Service.Lease(ctx, run.GetName(), 0, agent, int64(ender.lease))
	if !ender.ended.Load() {
		t.Fatal("the lease's transaction never reached its commit")
	}
	if !errors.Is(err, errdefs.ErrContended) {
		t.Fatalf("Lease = %v, want ErrContended: the agent's etcd lease ended before the commit", err)
	}
	if r := env.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_PENDING || r.GetAttempt() != 0 {
		t.Errorf("the refused lease changed the run: %s attempt %d", r.GetState(), r.GetAttempt())
	}
	if rev := env.AssignmentRevision(t, run.GetName()); rev != 0 {
		t.Errorf("the refused lease left an assignment at revision %d", rev)
	}
}
