package integration

import (
	"context"
	"errors"
	"strings"
	"testing"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/integration/sampledata"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/transfer"
)

// TestADamagedImageIsRefusedByItsInspectionAndNeverServiced imports a WIM
// whose header and XML info are intact but whose body is damaged: the
// server's import, which reads only those, accepts it; the agent's
// inspection verifies the whole file and fails it, naming the image and the
// version; the image is not serviced, and a schedule says why.
func TestADamagedImageIsRefusedByItsInspectionAndNeverServiced(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t)
	sample, err := sampledata.Create(ctx, sampledata.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := sampledata.DamageBody(sample.WIM); err != nil {
		t.Fatal(err)
	}
	wim, err := transfer.Upload(ctx, c.contents, sample.WIM, "application/x-ms-wim", nil)
	if err != nil {
		t.Fatal(err)
	}
	imported, err := c.images.ImportImage(ctx, &osvcv1.ImportImageRequest{ImageId: "damaged", Site: "PS1", ContentSha256: wim.GetSha256()})
	if err != nil {
		t.Fatalf("import: %v (the header and XML are intact: the server's own reading accepts it)", err)
	}
	run, _ := c.watch(t, imported.GetInspectionRun())
	if run.GetState() != osvcv1.RunState_RUN_STATE_FAILED || !strings.Contains(run.GetError(), "image images/damaged version 1 is damaged") {
		t.Fatalf("inspection ended %s: %q; want FAILED naming the image and its version", run.GetState(), run.GetError())
	}
	img := c.image(t, "images/damaged")
	if v := img.GetVersions()[0]; v.GetInspection() != osvcv1.InspectionState_INSPECTION_STATE_FAILED || !strings.Contains(v.GetInspectionError(), "is damaged") {
		t.Errorf("version 1 = %v, want inspection FAILED with why", v)
	}
	_, err = c.svc.CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{Parent: img.GetName(), Schedule: &osvcv1.Schedule{}, AllApplicable: true})
	if !errors.Is(errdefs.ToNative(err), errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "failed its inspection") {
		t.Errorf("schedule of the damaged image: %v, want FailedPrecondition saying it failed its inspection", err)
	}
	if got := c.image(t, "images/damaged"); got.GetCurrentVersion() != 1 || len(got.GetVersions()) != 1 {
		t.Errorf("versions %v: the damaged image gained a version", got.GetVersions())
	}
}
