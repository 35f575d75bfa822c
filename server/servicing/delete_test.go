package servicing_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/servicing/servicingtest"
)

// collectAfterGrace runs one pass of a content collector whose clock is a
// grace period and an hour past now, and returns what it removed.
func collectAfterGrace(t *testing.T, env *servicingtest.Env) []string {
	t.Helper()
	const grace = time.Hour
	later := func() time.Time { return time.Now().Add(grace + time.Hour) }
	col, err := content.NewCollector(content.CollectorConfig{Store: env.Store, Library: env.Library, ServerID: "test", Grace: grace, Now: later})
	if err != nil {
		t.Fatal(err)
	}
	removed, err := col.Collect(context.Background())
	if err != nil {
		t.Fatalf("Collect: %v", err)
	}
	return removed
}

func TestDeletingAnImageIsRefusedWhileARunOfItHasNotEnded(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	_, run, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	err = env.Service.DeleteImage(ctx, img.Name)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), run.GetName()) {
		t.Fatalf("DeleteImage with PENDING %s = %v; want FailedPrecondition naming it", run.GetName(), err)
	}
	if _, err := env.Service.CancelRun(ctx, run.GetName(), "test"); err != nil {
		t.Fatal(err)
	}
	_, inspection, err := env.Service.Inspect(ctx, img.Name)
	if err != nil {
		t.Fatal(err)
	}
	err = env.Service.DeleteImage(ctx, img.Name)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), inspection.GetName()) {
		t.Fatalf("DeleteImage with inspection %s PENDING = %v; want FailedPrecondition naming it", inspection.GetName(), err)
	}
	env.GetImage(t, img.Name) // still there
}

func TestADeletedImageIsGoneWithItsRunIndexAndItsFileIsCollectedAfterTheGrace(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	inspectCurrent(t, env, img, indexesWith("KB1"))
	serviceTo(t, env, img, false, "KB2")
	versions := env.GetImage(t, img.Name).GetVersions()
	runs, _, err := env.Service.ListRuns(ctx, img.Name, 0, "")
	if err != nil || len(runs) == 0 {
		t.Fatalf("ListRuns = %d runs, %v", len(runs), err)
	}
	// Referenced, the versions' files outlive the grace period.
	for _, v := range versions {
		if removed := collectAfterGrace(t, env); slices.Contains(removed, v.GetSha256()) {
			t.Fatalf("the collector removed version %d's file while the image names it", v.GetVersion())
		}
	}

	if err := env.Service.DeleteImage(ctx, img.Name); err != nil {
		t.Fatalf("DeleteImage: %v", err)
	}
	if _, err := env.Catalog.GetImage(ctx, img.Name); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("GetImage after the delete = %v, want NotFound", err)
	}
	if err := env.Service.DeleteImage(ctx, img.Name); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("DeleteImage again = %v, want NotFound", err)
	}
	index, err := env.Store.Client().Get(ctx, env.Store.ImageRunsPrefix("win11"), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || index.Count != 0 {
		t.Errorf("run index after the delete: %d keys, %v; want none", index.Count, err)
	}
	// The runs stay, as history.
	if got := env.Run(t, runs[0].GetName()); got.GetImage() != img.Name {
		t.Errorf("run %s after the delete names %s", got.GetName(), got.GetImage())
	}

	removed := collectAfterGrace(t, env)
	for _, v := range versions {
		if !slices.Contains(removed, v.GetSha256()) {
			t.Errorf("version %d's file (%s) is not collected once nothing names it past the grace", v.GetVersion(), v.GetSha256())
		}
	}
}

func TestDeletingAnUpdateIsRefusedWhileARunAppliesIt(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	err := env.Service.DeleteUpdate(ctx, "updates/cu")
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), run.GetName()) {
		t.Fatalf("DeleteUpdate while %s applies it = %v; want FailedPrecondition naming it", run.GetName(), err)
	}
	if _, err := env.Catalog.GetUpdate(ctx, "updates/cu"); err != nil {
		t.Errorf("the update after the refusal: %v", err)
	}
}

func TestADeletedUpdateLeavesTheCatalogAndItsFileIsCollectedAfterTheGrace(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	ssu := env.Update(t, "ssu", osvcv1.Classification_CLASSIFICATION_SERVICING_STACK, month(9))
	file := ssu.GetFiles()[0].GetSha256()
	if removed := collectAfterGrace(t, env); slices.Contains(removed, file) {
		t.Fatal("the collector removed the update's file while the catalog names it")
	}
	// A run that ended does not hold its updates.
	_, run, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{ssu.GetName()}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Service.CancelRun(ctx, run.GetName(), "test"); err != nil {
		t.Fatal(err)
	}

	if err := env.Service.DeleteUpdate(ctx, ssu.GetName()); err != nil {
		t.Fatalf("DeleteUpdate: %v", err)
	}
	if _, err := env.Catalog.GetUpdate(ctx, ssu.GetName()); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("GetUpdate after the delete = %v, want NotFound", err)
	}
	if err := env.Service.DeleteUpdate(ctx, ssu.GetName()); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("DeleteUpdate again = %v, want NotFound", err)
	}
	applicable, err := env.Catalog.ApplicableUpdates(ctx, env.GetImage(t, img.Name), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range applicable {
		if u.GetName() == ssu.GetName() {
			t.Errorf("the deleted update is still applicable")
		}
	}
	if removed := collectAfterGrace(t, env); !slices.Contains(removed, file) {
		t.Errorf("the deleted update's file is not collected past the grace")
	}
	// Its name and identity are free again: the same package is recorded anew.
	again, err := env.Catalog.RecordUpdate(ctx, ssu)
	if err != nil || again.GetName() != ssu.GetName() {
		t.Errorf("recording the package again = %v, %v; want it recorded as %s", again.GetName(), err, ssu.GetName())
	}
}

func TestDeletingAnUpdateIsRefusedWhileAScheduleListsIt(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	ctx := context.Background()
	img := env.Image(t, "win11", "PS1", 1)
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(10))
	sched, _, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"},
		StartTime: timestamppb.New(time.Now().Add(24 * time.Hour))}, false)
	if err != nil {
		t.Fatal(err)
	}
	err = env.Service.DeleteUpdate(ctx, "updates/cu")
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), sched.GetName()) {
		t.Fatalf("DeleteUpdate while %s lists it = %v, want FailedPrecondition naming the schedule", sched.GetName(), err)
	}
	if err := env.Service.DeleteSchedule(ctx, sched.GetName()); err != nil {
		t.Fatal(err)
	}
	if err := env.Service.DeleteUpdate(ctx, "updates/cu"); err != nil {
		t.Errorf("DeleteUpdate once no schedule lists it = %v", err)
	}
}
