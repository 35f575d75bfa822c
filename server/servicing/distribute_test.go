package servicing_test

import (
	"context"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/servicing/servicingtest"
)

// succeed schedules cu for img (asking to update the distribution points or
// not), leases the run and reports it SUCCEEDED with result.
func succeed(t *testing.T, env *servicingtest.Env, img *osvcv1.Image, updateDPs bool, result *osvcv1.Content) {
	t.Helper()
	ctx := context.Background()
	_, run, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}, UpdateDistributionPoints: updateDPs}, false)
	if err != nil {
		t.Fatalf("CreateSchedule: %v", err)
	}
	lease := env.Connect(t, agents.ID(agent), img.GetSite(), 1, 30*time.Second)
	leased, err := env.Service.Lease(ctx, run.GetName(), 0, agent, int64(lease))
	if err != nil {
		t.Fatalf("Lease: %v", err)
	}
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: leased.GetName(), FencingToken: leased.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: result.GetSha256(), ResultSizeBytes: result.GetSizeBytes()}); err != nil {
		t.Fatalf("result: %v", err)
	}
}

func TestARunThatUpdatesTheDistributionPointsMakesItsVersionTheOneToDistribute(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})

	succeed(t, env, img, false, env.Blob(t, "wim of win11 version 2"))
	if got := env.GetImage(t, img.Name); got.GetCurrentVersion() != 2 || got.GetDistributionVersion() != 0 {
		t.Fatalf("after a run without update_distribution_points: current %d, distribution version %d; want 2 and 0",
			got.GetCurrentVersion(), got.GetDistributionVersion())
	}
	succeed(t, env, img, true, env.Blob(t, "wim of win11 version 3"))
	if got := env.GetImage(t, img.Name); got.GetCurrentVersion() != 3 || got.GetDistributionVersion() != 3 {
		t.Fatalf("after a run with update_distribution_points: current %d, distribution version %d; want 3 and 3",
			got.GetCurrentVersion(), got.GetDistributionVersion())
	}
}
