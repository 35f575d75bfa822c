package integration

import (
	"context"
	"testing"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/integration/sampledata"
)

// TestARunThatChangesNothingKeepsTheRollbackPoint services the sample once,
// then schedules an update it already has: the run succeeds with the update
// ALREADY_INSTALLED, and the image stays at version 2 with version 1, the
// image as it was before servicing, still there to roll back to.
func TestARunThatChangesNothingKeepsTheRollbackPoint(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t)
	sample, err := sampledata.Create(ctx, sampledata.Options{Dir: t.TempDir(), PayloadBytes: 512 << 10})
	if err != nil {
		t.Fatal(err)
	}
	sourceSHA := fileSHA256(t, sample.WIM)
	img, updates := c.importSample(t, sample)

	first, err := c.svc.CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{Parent: img.GetName(), Schedule: &osvcv1.Schedule{}, AllApplicable: true})
	if err != nil {
		t.Fatalf("schedule every applicable update: %v", err)
	}
	if run, _ := c.watch(t, first.GetRun().GetName()); run.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || run.GetResultVersion() != 2 {
		t.Fatalf("first run ended %v at version %d (%s), want SUCCEEDED at version 2", run.GetState(), run.GetResultVersion(), run.GetError())
	}
	serviced := c.image(t, img.GetName())
	v2 := version(serviced, 2)
	if serviced.GetCurrentVersion() != 2 || v2 == nil {
		t.Fatalf("after servicing the image is at version %d with %v, want version 2", serviced.GetCurrentVersion(), serviced.GetVersions())
	}

	// The servicing stack update was applied by the first run.
	var ssu *osvcv1.Update
	for i, u := range updates {
		if sample.Updates[i].Classification == osvcv1.Classification_CLASSIFICATION_SERVICING_STACK {
			ssu = u
		}
	}
	if ssu == nil {
		t.Fatal("the sample has no servicing stack update")
	}
	again, err := c.svc.CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{
		Parent:   img.GetName(),
		Schedule: &osvcv1.Schedule{Updates: []string{ssu.GetName()}},
	})
	if err != nil {
		t.Fatalf("schedule %s again: %v", ssu.GetKb(), err)
	}
	run, _ := c.watch(t, again.GetRun().GetName())

	t.Run("the run succeeds with the update already installed", func(t *testing.T) {
		if run.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
			t.Fatalf("run ended %v: %s", run.GetState(), run.GetError())
		}
		if len(run.GetUpdateResults()) != 1 || run.GetUpdateResults()[0].GetState() != osvcv1.UpdateState_UPDATE_STATE_ALREADY_INSTALLED {
			t.Errorf("update results %v, want %s ALREADY_INSTALLED", run.GetUpdateResults(), ssu.GetKb())
		}
		if run.GetSourceVersion() != 2 || run.GetResultVersion() != 2 || run.GetResultSha256() != v2.GetSha256() {
			t.Errorf("run serviced version %d into version %d (%s), want version 2 (%s) left as it was",
				run.GetSourceVersion(), run.GetResultVersion(), run.GetResultSha256(), v2.GetSha256())
		}
		for _, s := range run.GetSteps() {
			if (s.GetStep() == osvcv1.Step_STEP_EXPORT || s.GetStep() == osvcv1.Step_STEP_SWAP) && s.GetState() != osvcv1.StepState_STEP_STATE_SKIPPED {
				t.Errorf("%s %s (%s), want SKIPPED: nothing changed the image", s.GetStep(), s.GetState(), s.GetDetail())
			}
		}
	})

	t.Run("the image stays at version 2 and keeps version 1", func(t *testing.T) {
		got := c.image(t, img.GetName())
		if got.GetCurrentVersion() != 2 || len(got.GetVersions()) != 2 {
			t.Fatalf("image at version %d with %v, want version 2 with versions 1 and 2", got.GetCurrentVersion(), got.GetVersions())
		}
		if v := version(got, 2); v.GetSha256() != v2.GetSha256() || v.GetCreatedByRun() != first.GetRun().GetName() {
			t.Errorf("version 2 is now %v, want it as the first run made it", v)
		}
		v1 := version(got, 1)
		if v1.GetSha256() != sourceSHA {
			t.Fatalf("version 1 is %v, want the imported file %s", v1, sourceSHA)
		}
		if _, err := c.contents.GetContent(ctx, &osvcv1.GetContentRequest{Sha256: sourceSHA}); err != nil {
			t.Errorf("the blob of version 1 is gone from the library: %v", err)
		}
		if got.GetServicingStatus() != osvcv1.ServicingStatus_SERVICING_STATUS_SUCCEEDED || got.GetLastRun() != run.GetName() {
			t.Errorf("image status %s, last run %s; want SUCCEEDED and %s", got.GetServicingStatus(), got.GetLastRun(), run.GetName())
		}
	})
}

// image gets an image through the API.
func (c *cluster) image(t *testing.T, name string) *osvcv1.Image {
	t.Helper()
	resp, err := c.images.GetImage(context.Background(), &osvcv1.GetImageRequest{Name: name})
	if err != nil {
		t.Fatalf("get %s: %v", name, err)
	}
	return resp.GetImage()
}

// version is the image's version n, nil when it has none.
func version(img *osvcv1.Image, n int32) *osvcv1.ImageVersion {
	for _, v := range img.GetVersions() {
		if v.GetVersion() == n {
			return v
		}
	}
	return nil
}
