package integration

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/integration/sampledata"
)

// TestAnImageRolledBackThenDeletedWithItsUpdate services the sample twice
// (its servicing stack, then every other applicable update), rolls it back
// with osvcctl to the first run's version, which osvcctl image get then
// shows with who and why, and deletes the image and the servicing stack
// update.
func TestAnImageRolledBackThenDeletedWithItsUpdate(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t)
	sample, err := sampledata.Create(ctx, sampledata.Options{Dir: t.TempDir(), PayloadBytes: 512 << 10})
	if err != nil {
		t.Fatal(err)
	}
	img, updates := c.importSample(t, sample)
	var ssu *osvcv1.Update
	for i, u := range updates {
		if sample.Updates[i].Classification == osvcv1.Classification_CLASSIFICATION_SERVICING_STACK {
			ssu = u
		}
	}
	if ssu == nil {
		t.Fatal("the sample has no servicing stack update")
	}
	serviceAndInspect := func(sched *osvcv1.CreateScheduleRequest, want int32) {
		t.Helper()
		resp, err := c.svc.CreateSchedule(ctx, sched)
		if err != nil {
			t.Fatalf("schedule: %v", err)
		}
		if run, _ := c.watch(t, resp.GetRun().GetName()); run.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || run.GetResultVersion() != want {
			t.Fatalf("run ended %v at version %d (%s), want SUCCEEDED at version %d", run.GetState(), run.GetResultVersion(), run.GetError(), want)
		}
		// A rollback waits for no inspection, but is refused while one is with an agent.
		eventually(t, 2*time.Minute, "the new version's inspection", func() bool {
			return version(c.image(t, img.GetName()), want).GetInspection() == osvcv1.InspectionState_INSPECTION_STATE_INSPECTED
		})
	}
	serviceAndInspect(&osvcv1.CreateScheduleRequest{Parent: img.GetName(), Schedule: &osvcv1.Schedule{Updates: []string{ssu.GetName()}}}, 2)
	serviceAndInspect(&osvcv1.CreateScheduleRequest{Parent: img.GetName(), Schedule: &osvcv1.Schedule{}, AllApplicable: true}, 3)
	v2 := version(c.image(t, img.GetName()), 2)

	out := c.osvcctl(t, "image", "rollback", "win11-ent", "--reason", "the cumulative update breaks BitLocker")
	if !strings.Contains(out, "rolled back from version 3 to version 2") {
		t.Errorf("osvcctl image rollback printed %q", out)
	}
	got := c.image(t, img.GetName())
	if got.GetCurrentVersion() != 2 || version(got, 3) == nil || version(got, 1) != nil {
		t.Errorf("after the rollback: current %d, versions %v; want 2, with 3 kept to roll forward to", got.GetCurrentVersion(), got.GetVersions())
	}
	if cur := version(got, got.GetCurrentVersion()); cur.GetSha256() != v2.GetSha256() {
		t.Errorf("the current version's file is %s, want version 2's %s", cur.GetSha256(), v2.GetSha256())
	}
	view := c.osvcctl(t, "image", "get", "win11-ent")
	for _, want := range []string{"Current version:  2", "Rollbacks:", "the cumulative update breaks BitLocker", "token:"} {
		if !strings.Contains(view, want) {
			t.Errorf("osvcctl image get does not show %q:\n%s", want, view)
		}
	}
	audit := c.osvcctl(t, "audit", "list", "--since", "1h")
	if !strings.Contains(audit, "ImageService/RollbackImage") || !strings.Contains(audit, "reason: the cumulative update breaks BitLocker") {
		t.Errorf("osvcctl audit list does not show the rollback with its reason:\n%s", audit)
	}

	if out := c.osvcctl(t, "image", "delete", "win11-ent"); out != "deleted images/win11-ent\n" {
		t.Errorf("osvcctl image delete printed %q", out)
	}
	if out := c.osvcctl(t, "update", "delete", ssu.GetName()); out != "deleted "+ssu.GetName()+"\n" {
		t.Errorf("osvcctl update delete printed %q", out)
	}
	for _, args := range [][]string{{"image", "get", "win11-ent"}, {"update", "get", ssu.GetName()}} {
		err := c.osvcctlCmd(args...).Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 3 {
			t.Errorf("osvcctl %s after the delete: %v, want exit 3 (not found)", strings.Join(args, " "), err)
		}
	}
}
