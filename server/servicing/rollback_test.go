package servicing_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/servicing/servicingtest"
)

const admin = "token:0123456789abcdef"

// indexesWith is one index of img with kb installed, as an agent reports it.
func indexesWith(kb string) []*osvcv1.ImageIndex {
	return []*osvcv1.ImageIndex{{Index: 1, Name: "Windows 11 Enterprise", Architecture: osvcv1.Architecture_ARCHITECTURE_X64, Build: 22631,
		InstalledUpdates: []*osvcv1.InstalledUpdate{{PackageIdentity: "Package_for_" + kb + "~31bf3856ad364e35~amd64~~22621.1.1.0", Kb: kb, State: "Installed"}}}}
}

// inspectCurrent inspects img's version that its active inspection run
// names, reporting indexes; with none queued, it queues one of the current
// version first.
func inspectCurrent(t *testing.T, env *servicingtest.Env, img *osvcv1.Image, indexes []*osvcv1.ImageIndex) {
	t.Helper()
	ctx := context.Background()
	got := env.GetImage(t, img.Name)
	v := findVersion(got, got.GetCurrentVersion())
	runName := v.GetInspectionRun()
	if v.GetInspection() != osvcv1.InspectionState_INSPECTION_STATE_PENDING {
		_, run, err := env.Service.Inspect(ctx, img.Name)
		if err != nil {
			t.Fatalf("Inspect: %v", err)
		}
		runName = run.GetName()
	}
	leased := leaseInspection(t, env, env.Run(t, runName), img.GetSite())
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: runName, FencingToken: leased.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: v.GetSha256(), Indexes: indexes}); err != nil {
		t.Fatalf("inspection result: %v", err)
	}
}

// serviceTo services img into a new version with indexes, inspected.
func serviceTo(t *testing.T, env *servicingtest.Env, img *osvcv1.Image, updateDPs bool, kb string) {
	t.Helper()
	n := len(env.GetImage(t, img.Name).GetVersions())
	succeed(t, env, img, updateDPs, env.Blob(t, fmt.Sprintf("wim of %s with %s (%d)", img.GetName(), kb, n)))
	inspectCurrent(t, env, img, indexesWith(kb))
}

func findVersion(img *osvcv1.Image, version int32) *osvcv1.ImageVersion {
	for _, v := range img.GetVersions() {
		if v.GetVersion() == version {
			return v
		}
	}
	return nil
}

func versionNumbers(img *osvcv1.Image) []int32 {
	var out []int32
	for _, v := range img.GetVersions() {
		out = append(out, v.GetVersion())
	}
	return out
}

func installedKB(img *osvcv1.Image) string {
	return img.GetIndexes()[0].GetInstalledUpdates()[0].GetKb()
}

func TestARollbackMakesThePreviousVersionCurrentAndKeepsTheOneItLeftToRollForwardTo(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	inspectCurrent(t, env, img, indexesWith("KB1"))
	serviceTo(t, env, img, false, "KB2")
	if got := env.GetImage(t, img.Name); got.GetCurrentVersion() != 2 || installedKB(got) != "KB2" {
		t.Fatalf("after servicing: current %d with %s; want 2 with KB2", got.GetCurrentVersion(), installedKB(got))
	}

	back, err := env.Service.Rollback(ctx, img.Name, 0, admin, "  KB2 breaks BitLocker  ")
	if err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	got := env.GetImage(t, img.Name)
	if got.GetCurrentVersion() != 1 || !slices.Equal(versionNumbers(got), []int32{1, 2}) || installedKB(got) != "KB1" {
		t.Errorf("after the rollback: current %d, versions %v, %s installed; want 1, [1 2], KB1 (what version 1's inspection read)",
			got.GetCurrentVersion(), versionNumbers(got), installedKB(got))
	}
	rb := got.GetRollbacks()
	if len(rb) != 1 || rb[0].GetFromVersion() != 2 || rb[0].GetToVersion() != 1 || rb[0].GetPrincipal() != admin ||
		rb[0].GetReason() != "KB2 breaks BitLocker" || rb[0].GetTime() == nil || rb[0].GetDistributed() {
		t.Errorf("rollback records %v; want one from 2 to 1 by %s with its reason, not distributed", rb, admin)
	}
	if back.GetCurrentVersion() != 1 {
		t.Errorf("Rollback returned current version %d, want 1", back.GetCurrentVersion())
	}

	if _, err := env.Service.Rollback(ctx, img.Name, 2, admin, "KB2 was not the cause"); err != nil {
		t.Fatalf("roll forward: %v", err)
	}
	if got := env.GetImage(t, img.Name); got.GetCurrentVersion() != 2 || installedKB(got) != "KB2" || len(got.GetRollbacks()) != 2 {
		t.Errorf("after rolling forward: current %d with %s, %d records; want 2 with KB2, 2 records", got.GetCurrentVersion(), installedKB(got), len(got.GetRollbacks()))
	}
}

func TestRetentionKeepsTheVersionARunReplacedThenTheNewest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		keep int
		// steps: "s" services, "rN" rolls back to N.
		steps []string
		want  []int32
	}{
		{"one kept: a run keeps only the version it replaced", 1, []string{"s", "s", "s"}, []int32{3, 4}},
		{"two kept: the two before the new one", 2, []string{"s", "s", "s"}, []int32{2, 3, 4}},
		{"one kept: after a rollback the run keeps the version rolled back to, not the one left", 1, []string{"s", "s", "r2", "s"}, []int32{2, 4}},
		{"two kept: after a rollback the version left is the newest other", 2, []string{"s", "s", "s", "r2", "s"}, []int32{2, 4, 5}},
		{"a rollback adds and drops nothing", 1, []string{"s", "r1"}, []int32{1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env, img := newEnv(t, servicingtest.Options{KeepVersions: tt.keep})
			inspectCurrent(t, env, img, indexesWith("KB0"))
			for i, step := range tt.steps {
				if step == "s" {
					serviceTo(t, env, img, false, fmt.Sprintf("KB%d", i+1))
					continue
				}
				var to int32
				fmt.Sscanf(step, "r%d", &to)
				if _, err := env.Service.Rollback(context.Background(), img.Name, to, admin, "test"); err != nil {
					t.Fatalf("step %d, rollback to %d: %v", i, to, err)
				}
			}
			if got := versionNumbers(env.GetImage(t, img.Name)); !slices.Equal(got, tt.want) {
				t.Errorf("versions kept %v, want %v", got, tt.want)
			}
		})
	}
}

func TestARollbackIsRefusedWhileARunOfTheImageIsLeased(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	inspectCurrent(t, env, img, indexesWith("KB1"))
	serviceTo(t, env, img, false, "KB2")
	run, _ := leasedRun(t, env, img)
	_, err := env.Service.Rollback(context.Background(), img.Name, 0, admin, "test")
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), run.GetName()) {
		t.Fatalf("Rollback while %s is leased = %v; want FailedPrecondition naming it", run.GetName(), err)
	}
	if got := env.GetImage(t, img.Name); got.GetCurrentVersion() != 2 || len(got.GetRollbacks()) != 0 {
		t.Errorf("after the refusal: current %d, %d rollbacks; want 2 and none", got.GetCurrentVersion(), len(got.GetRollbacks()))
	}
}

func TestARollbackGoesOnWhileAnotherVersionIsInspectedAndTheInspectionLeavesTheIndexes(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	inspectCurrent(t, env, img, indexesWith("KB1"))
	succeed(t, env, img, false, env.Blob(t, "wim of win11 version 2"))
	got := env.GetImage(t, img.Name)
	inspection := findVersion(got, 2).GetInspectionRun()
	leased := leaseInspection(t, env, env.Run(t, inspection), "PS1")
	if _, err := env.Service.Rollback(ctx, img.Name, 0, admin, "test"); err != nil {
		t.Fatalf("Rollback while version 2's inspection is leased: %v", err)
	}
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: inspection, FencingToken: leased.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: findVersion(got, 2).GetSha256(), Indexes: indexesWith("KB2")}); err != nil {
		t.Fatalf("the inspection's result: %v", err)
	}
	got = env.GetImage(t, img.Name)
	if got.GetCurrentVersion() != 1 || installedKB(got) != "KB1" || findVersion(got, 2).GetInspection() != osvcv1.InspectionState_INSPECTION_STATE_INSPECTED {
		t.Errorf("after the inspection: current %d with %s, version 2 %s; want 1 with KB1, version 2 INSPECTED",
			got.GetCurrentVersion(), installedKB(got), findVersion(got, 2).GetInspection())
	}
}

func TestAPendingRunServicesTheVersionRolledBackTo(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	inspectCurrent(t, env, img, indexesWith("KB1"))
	serviceTo(t, env, img, false, "KB2")
	_, run, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if run.GetSourceVersion() != 2 {
		t.Fatalf("scheduled on version %d, want 2", run.GetSourceVersion())
	}
	if _, err := env.Service.Rollback(ctx, img.Name, 0, admin, "test"); err != nil {
		t.Fatalf("Rollback with a PENDING run: %v", err)
	}
	if got := env.Run(t, run.GetName()); got.GetSourceVersion() != 1 || got.GetState() != osvcv1.RunState_RUN_STATE_PENDING {
		t.Errorf("the pending run after the rollback: %s on version %d; want PENDING on version 1", got.GetState(), got.GetSourceVersion())
	}
}

func TestARollbackRefusesWhatItCannotDo(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	inspectCurrent(t, env, img, indexesWith("KB1"))
	if _, err := env.Service.Rollback(ctx, img.Name, 0, admin, "test"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Rollback of an image with one version = %v, want FailedPrecondition", err)
	}
	serviceTo(t, env, img, false, "KB2")
	serviceTo(t, env, img, false, "KB3")
	tests := []struct {
		name   string
		image  string
		to     int32
		reason string
		want   error
		says   string
	}{
		{"a version pushed out", img.Name, 1, "test", errdefs.ErrNotFound, "it keeps 2, 3"},
		{"the current version", img.Name, 3, "test", errdefs.ErrInvalidArgument, "to_version"},
		{"a negative version", img.Name, -1, "test", errdefs.ErrInvalidArgument, "to_version"},
		{"no reason", img.Name, 0, " ", errdefs.ErrInvalidArgument, "reason"},
		{"a reason too long", img.Name, 0, strings.Repeat("x", 1025), errdefs.ErrInvalidArgument, "reason"},
		{"an image that does not exist", "images/nope", 0, "test", errdefs.ErrNotFound, "images/nope"},
		{"a bad image name", "nope", 0, "test", errdefs.ErrInvalidArgument, "name"},
	}
	for _, tt := range tests {
		_, err := env.Service.Rollback(ctx, tt.image, tt.to, admin, tt.reason)
		if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.says) {
			t.Errorf("%s: %v; want %v saying %q", tt.name, err, tt.want, tt.says)
		}
	}
	if got := env.GetImage(t, img.Name); got.GetCurrentVersion() != 3 || len(got.GetRollbacks()) != 0 {
		t.Errorf("after refusals: current %d, %d rollbacks; want 3, none", got.GetCurrentVersion(), len(got.GetRollbacks()))
	}
}

func TestARollbackToAVersionThatFailedItsInspectionIsRefused(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	inspectCurrent(t, env, img, indexesWith("KB1"))
	succeed(t, env, img, false, env.Blob(t, "wim of win11 version 2"))
	inspection := findVersion(env.GetImage(t, img.Name), 2).GetInspectionRun()
	leased := leaseInspection(t, env, env.Run(t, inspection), "PS1")
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: inspection, FencingToken: leased.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_FAILED, Error: "a resource is corrupted"}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Service.Rollback(ctx, img.Name, 1, admin, "version 2 is damaged"); err != nil {
		t.Fatalf("Rollback away from a damaged version: %v", err)
	}
	_, err := env.Service.Rollback(ctx, img.Name, 2, admin, "test")
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "inspection") {
		t.Errorf("Rollback to the damaged version = %v, want FailedPrecondition about its inspection", err)
	}
}

func TestTheDistributionPointsFollowARollbackWhenTheyHeldTheVersionLeft(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	t.Run("a run that updated the distribution points", func(t *testing.T) {
		t.Parallel()
		env, img := newEnv(t, servicingtest.Options{})
		inspectCurrent(t, env, img, indexesWith("KB1"))
		serviceTo(t, env, img, true, "KB2")
		serviceTo(t, env, img, true, "KB3")
		if _, err := env.Service.Rollback(ctx, img.Name, 0, admin, "test"); err != nil {
			t.Fatal(err)
		}
		got := env.GetImage(t, img.Name)
		if got.GetDistributionVersion() != 2 || !got.GetRollbacks()[0].GetDistributed() {
			t.Errorf("distribution version %d, record %v; want 2, distributed", got.GetDistributionVersion(), got.GetRollbacks()[0])
		}
	})
	t.Run("runs that did not", func(t *testing.T) {
		t.Parallel()
		env, img := newEnv(t, servicingtest.Options{})
		inspectCurrent(t, env, img, indexesWith("KB1"))
		serviceTo(t, env, img, true, "KB2")
		serviceTo(t, env, img, false, "KB3")
		if _, err := env.Service.Rollback(ctx, img.Name, 0, admin, "test"); err != nil {
			t.Fatal(err)
		}
		if got := env.GetImage(t, img.Name); got.GetDistributionVersion() != 2 || got.GetRollbacks()[0].GetDistributed() {
			t.Errorf("distribution version %d, record %v; want 2 as it was, not distributed", got.GetDistributionVersion(), got.GetRollbacks()[0])
		}
	})
}

func TestAVersionNoRunDescribedIsInspectedAgainWhenRolledBackTo(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	// Version 1 predates inspections: no run read its indexes.
	serviceTo(t, env, img, false, "KB2")
	if _, err := env.Service.Rollback(ctx, img.Name, 1, admin, "test"); err != nil {
		t.Fatal(err)
	}
	v := findVersion(env.GetImage(t, img.Name), 1)
	if v.GetInspection() != osvcv1.InspectionState_INSPECTION_STATE_PENDING || v.GetInspectionRun() == "" {
		t.Fatalf("version 1 after the rollback: %v; want an inspection PENDING", v)
	}
	inspectCurrent(t, env, img, indexesWith("KB1"))
	if got := env.GetImage(t, img.Name); installedKB(got) != "KB1" {
		t.Errorf("after the inspection: %s installed, want KB1", installedKB(got))
	}
}
