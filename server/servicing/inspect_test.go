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
)

// leaseInspection leases an image's inspection run to agent.
func leaseInspection(t *testing.T, env *servicingtest.Env, run *osvcv1.Run, site string) *osvcv1.Run {
	t.Helper()
	lease := env.Connect(t, agents.ID(agent), site, 1, 30*time.Second)
	leased, err := env.Service.Lease(context.Background(), run.GetName(), 0, agent, int64(lease))
	if err != nil {
		t.Fatalf("Lease: %v", err)
	}
	return leased
}

func TestAnImportQueuesTheInspectionOfVersion1(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	img, run := env.ImportWIM(t, "win11", "PS1")
	v := img.GetVersions()[0]
	if run.GetKind() != osvcv1.RunKind_RUN_KIND_INSPECTION || run.GetState() != osvcv1.RunState_RUN_STATE_PENDING ||
		run.GetSourceVersion() != 1 || len(run.GetUpdates()) != 0 {
		t.Errorf("inspection run = %v", run)
	}
	if v.GetInspection() != osvcv1.InspectionState_INSPECTION_STATE_PENDING || v.GetInspectionRun() != run.GetName() {
		t.Errorf("version 1 = %v, want PENDING inspection by %s", v, run.GetName())
	}
	if got := env.GetImage(t, img.Name); got.GetVersions()[0].GetInspectionRun() != run.GetName() {
		t.Errorf("stored version 1 = %v", got.GetVersions()[0])
	}
	active, err := env.Service.ActiveRuns(context.Background())
	if err != nil || len(active) != 1 || active[0].Run.GetName() != run.GetName() {
		t.Errorf("active runs = %v, %v; want the inspection", active, err)
	}
}

func TestASucceededInspectionRecordsTheIndexesAndLetsTheImageBeServiced(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	ctx := context.Background()
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(10))
	installed := env.Update(t, "ssu", osvcv1.Classification_CLASSIFICATION_SERVICING_STACK, month(9))
	img, run := env.ImportWIM(t, "win11", "PS1")
	// A schedule made before the inspection ended waits for it.
	_, waiting, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false)
	if err != nil {
		t.Fatalf("CreateSchedule before the inspection: %v", err)
	}
	if pending, err := servicing.ServiceableVersion(env.GetImage(t, img.Name), 1); !pending || err == nil {
		t.Fatalf("ServiceableVersion before the inspection = %t, %v; want pending", pending, err)
	}
	leased := leaseInspection(t, env, run, "PS1")
	indexes := []*osvcv1.ImageIndex{{Index: 1, Name: "Windows 11 Pro", Architecture: osvcv1.Architecture_ARCHITECTURE_X64, Build: 22631,
		InstalledUpdates: []*osvcv1.InstalledUpdate{{PackageIdentity: installed.GetPackageIdentity(), State: "Installed"}}}}
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: leased.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: img.GetVersions()[0].GetSha256(), Indexes: indexes}); err != nil {
		t.Fatal(err)
	}
	got := env.GetImage(t, img.Name)
	if v := got.GetVersions()[0]; v.GetInspection() != osvcv1.InspectionState_INSPECTION_STATE_INSPECTED || len(got.GetVersions()) != 1 || got.GetCurrentVersion() != 1 {
		t.Errorf("versions after the inspection = %v, current %d; want version 1 INSPECTED and no other", got.GetVersions(), got.GetCurrentVersion())
	}
	if in := got.GetIndexes()[0].GetInstalledUpdates(); len(in) != 1 || in[0].GetUpdate() != installed.GetName() {
		t.Errorf("installed updates = %v, want %s linked", in, installed.GetName())
	}
	if got.GetServicingStatus() != osvcv1.ServicingStatus_SERVICING_STATUS_SCHEDULED || got.GetLastRun() != "" {
		t.Errorf("an inspection changed the servicing status: %s, last run %q", got.GetServicingStatus(), got.GetLastRun())
	}
	if r := env.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || r.GetResultVersion() != 1 {
		t.Errorf("inspection run = %v", r)
	}
	if _, err := servicing.ServiceableVersion(got, 1); err != nil {
		t.Errorf("ServiceableVersion after the inspection: %v", err)
	}
	if r := env.Run(t, waiting.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_PENDING {
		t.Errorf("the waiting servicing run is %s, want still PENDING for the scheduler", r.GetState())
	}
}

func TestAFailedInspectionKeepsTheVersionFromServicingUntilInspectedAgain(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	ctx := context.Background()
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(10))
	img, run := env.ImportWIM(t, "win11", "PS1")
	leased := leaseInspection(t, env, run, "PS1")
	damage := "image images/win11 version 1 is damaged: the WIM file is damaged: A WIM resource is corrupted"
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: leased.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_FAILED, Error: damage}); err != nil {
		t.Fatal(err)
	}
	v := env.GetImage(t, img.Name).GetVersions()[0]
	if v.GetInspection() != osvcv1.InspectionState_INSPECTION_STATE_FAILED || !strings.Contains(v.GetInspectionError(), "A WIM resource is corrupted") {
		t.Fatalf("version 1 = %v, want FAILED with the agent's reason", v)
	}
	_, _, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "failed its inspection") {
		t.Fatalf("CreateSchedule of a version that failed inspection = %v, want FailedPrecondition", err)
	}
	// Inspecting again queues a new run; the version is PENDING again.
	_, again, err := env.Service.Inspect(ctx, img.Name)
	if err != nil {
		t.Fatal(err)
	}
	if v := env.GetImage(t, img.Name).GetVersions()[0]; v.GetInspection() != osvcv1.InspectionState_INSPECTION_STATE_PENDING || v.GetInspectionRun() != again.GetName() {
		t.Errorf("after Inspect: version 1 = %v, want PENDING by %s", v, again.GetName())
	}
	if _, _, err := env.Service.Inspect(ctx, img.Name); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("a second Inspect while one runs = %v, want FailedPrecondition", err)
	}
}

func TestAnInspectionMustReportTheVersionItInspected(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	img, run := env.ImportWIM(t, "win11", "PS1")
	leased := leaseInspection(t, env, run, "PS1")
	other := env.Blob(t, "another file")
	err := env.Service.ReportRunResult(context.Background(), agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: leased.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: other.GetSha256(), Indexes: []*osvcv1.ImageIndex{{Index: 1}}})
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("an inspection reporting another file = %v, want InvalidArgument", err)
	}
	if v := env.GetImage(t, img.Name).GetVersions()[0]; v.GetInspection() != osvcv1.InspectionState_INSPECTION_STATE_PENDING {
		t.Errorf("version 1 = %s after a refused result, want PENDING", v.GetInspection())
	}
}

func TestASwapQueuesTheInspectionOfTheNewVersion(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	v2 := env.Blob(t, "wim of win11 version 2")
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: v2.GetSha256(), ResultSizeBytes: v2.GetSizeBytes()}); err != nil {
		t.Fatal(err)
	}
	got := env.GetImage(t, img.Name)
	v := got.GetVersions()[len(got.GetVersions())-1]
	if v.GetVersion() != 2 || v.GetInspection() != osvcv1.InspectionState_INSPECTION_STATE_PENDING {
		t.Fatalf("new version = %v, want version 2 PENDING inspection", v)
	}
	inspection := env.Run(t, v.GetInspectionRun())
	if inspection.GetKind() != osvcv1.RunKind_RUN_KIND_INSPECTION || inspection.GetSourceVersion() != 2 {
		t.Errorf("inspection of version 2 = %v", inspection)
	}
}
