package servicing_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/servicing/servicingtest"
	"github.com/osvc/osvc/server/store"
)

// record records an update as the catalog would import it.
func record(t *testing.T, env *servicingtest.Env, u *osvcv1.Update) *osvcv1.Update {
	t.Helper()
	blob := env.Blob(t, "package "+u.GetName())
	u.Files = []*osvcv1.UpdateFile{{FileName: catalog.UpdateName(u.GetName())[len("updates/"):] + ".cab", Sha256: blob.GetSha256(), SizeBytes: blob.GetSizeBytes()}}
	u.Name = catalog.UpdateName(u.GetName())
	if u.GetReleaseTime() == nil {
		u.ReleaseTime = timestamppb.New(month(10))
	}
	stored, err := env.Catalog.RecordUpdate(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	return stored
}

func TestAPlanSaysWhatEachUpdateIsExpectedToDoAndWarns(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	ctx := context.Background()
	img := env.Image(t, "win11", "PS1", 1)
	x64 := osvcv1.Architecture_ARCHITECTURE_X64
	wimlib := []string{"wimlib", "dism"}
	installed := record(t, env, &osvcv1.Update{Name: "ssu", Kb: "KB1", Architecture: x64, Engines: wimlib,
		Classification: osvcv1.Classification_CLASSIFICATION_SERVICING_STACK, PackageIdentity: "Package_for_SSU~31bf3856ad364e35~amd64~~22631.1.1.1"})
	record(t, env, &osvcv1.Update{Name: "arm", Kb: "KB2", Architecture: osvcv1.Architecture_ARCHITECTURE_ARM64, Engines: wimlib,
		PackageIdentity: "Package_for_RollupFix~31bf3856ad364e35~arm64~~22631.9.1.1"})
	record(t, env, &osvcv1.Update{Name: "mrt", Kb: "KB3", Architecture: x64, UnsupportedReason: "an .exe is no package"})
	sep := record(t, env, &osvcv1.Update{Name: "cu-sep", Kb: "KB4", Architecture: x64, Engines: wimlib, Classification: osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE,
		ReleaseTime: timestamppb.New(month(9)), PackageIdentity: "Package_for_RollupFix~31bf3856ad364e35~amd64~~22631.4169.1.1"})
	record(t, env, &osvcv1.Update{Name: "cu-oct", Kb: "KB5", Architecture: x64, Engines: wimlib, Classification: osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE,
		PackageIdentity: "Package_for_RollupFix~31bf3856ad364e35~amd64~~22631.4317.1.1", Supersedes: []string{sep.GetPackageIdentity()}})
	// The image has the servicing stack installed.
	key := env.Store.ImageKey("win11")
	if _, err := env.Store.Txn(ctx, "install", func(tx *store.Tx) error {
		got, err := store.Load[*osvcv1.Image](tx, key)
		if err != nil {
			return err
		}
		got.Indexes[0].InstalledUpdates = []*osvcv1.InstalledUpdate{{PackageIdentity: installed.GetPackageIdentity(), Kb: "KB1"}}
		return tx.Put(key, got)
	}); err != nil {
		t.Fatal(err)
	}

	names := []string{"updates/ssu", "updates/arm", "updates/mrt", "updates/cu-sep", "updates/cu-oct"}
	plan, err := env.Service.PlanSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: names}, false)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		state  osvcv1.UpdateState
		reason string
	}{
		"updates/ssu":    {osvcv1.UpdateState_UPDATE_STATE_ALREADY_INSTALLED, "already installed"},
		"updates/arm":    {osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE, "is for arm64"},
		"updates/mrt":    {osvcv1.UpdateState_UPDATE_STATE_UNSUPPORTED, "no engine applies a file of this kind: an .exe is no package"},
		"updates/cu-sep": {osvcv1.UpdateState_UPDATE_STATE_APPLIED, "superseded by updates/cu-oct, also selected"},
		"updates/cu-oct": {osvcv1.UpdateState_UPDATE_STATE_APPLIED, ""},
	}
	var order []string
	for _, p := range plan.GetUpdates() {
		order = append(order, p.GetUpdate())
		w := want[p.GetUpdate()]
		if p.GetExpected() != w.state || !strings.Contains(p.GetReason(), w.reason) || (w.reason == "" && p.GetReason() != "") {
			t.Errorf("%s: expected %s (%q), want %s (%q)", p.GetUpdate(), p.GetExpected(), p.GetReason(), w.state, w.reason)
		}
	}
	if got := strings.Join(order, ","); got != "updates/ssu,updates/arm,updates/mrt,updates/cu-sep,updates/cu-oct" {
		t.Errorf("plan order %s, want the apply order", got)
	}
	var files int64
	for _, n := range names {
		u, _ := env.Catalog.GetUpdate(ctx, n)
		files += u.GetFiles()[0].GetSizeBytes()
	}
	if want := 3*img.GetVersions()[0].GetSizeBytes() + files; plan.GetDiskBytesNeeded() != want {
		t.Errorf("disk needed %d, want %d: three times the image and the update files", plan.GetDiskBytesNeeded(), want)
	}
	for _, w := range []string{"no agent of site PS1 is connected", "updates/cu-sep is superseded by updates/cu-oct", "3 of 5 updates are not expected to apply"} {
		if !anyContains(plan.GetWarnings(), w) {
			t.Errorf("warnings %q lack %q", plan.GetWarnings(), w)
		}
	}
	if !plan.GetFirstRunTime().AsTime().Before(time.Now().Add(time.Minute)) {
		t.Errorf("first run %s, want now", plan.GetFirstRunTime().AsTime())
	}
	// A plan changes nothing.
	if runs, _, _ := env.Service.ListRuns(ctx, img.Name, 0, ""); len(runs) != 0 {
		t.Errorf("planning queued runs %v", runs)
	}

	// An agent of the site that runs only dism: the wimlib-only update is
	// unsupported there.
	record(t, env, &osvcv1.Update{Name: "own", Kb: "KB6", Architecture: x64, Engines: []string{"wimlib"},
		PackageIdentity: "Package_for_Own~31bf3856ad364e35~amd64~~22631.1.1.1"})
	agent, _ := env.Store.Marshal(&osvcv1.Agent{Name: "agents/ps1-a", Site: "PS1", State: osvcv1.AgentState_AGENT_STATE_CONNECTED, Engines: []string{"dism"}})
	if _, err := env.Store.Client().Put(ctx, env.Store.AgentKey("ps1-a"), string(agent)); err != nil {
		t.Fatal(err)
	}
	plan, err = env.Service.PlanSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/own"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if p := plan.GetUpdates()[0]; p.GetExpected() != osvcv1.UpdateState_UPDATE_STATE_UNSUPPORTED || !strings.Contains(p.GetReason(), "the agents of site PS1 run dism; it needs wimlib") {
		t.Errorf("a wimlib-only update at a dism site: %s %q", p.GetExpected(), p.GetReason())
	}
	if anyContains(plan.GetWarnings(), "no agent") {
		t.Errorf("warnings %q, with an agent connected", plan.GetWarnings())
	}
}

// anyContains tells whether one of list contains text.
func anyContains(list []string, text string) bool {
	for _, s := range list {
		if strings.Contains(s, text) {
			return true
		}
	}
	return false
}

func TestAnUpdateReportedUnsupportedIsNoLongerOfferedForTheImage(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	if got, err := env.Catalog.ApplicableUpdates(ctx, env.GetImage(t, img.GetName()), nil); err != nil || len(got) != 1 {
		t.Fatalf("applicable before the run: %v, %v; want updates/cu", got, err)
	}
	run, _ := leasedRun(t, env, img)
	if err := env.Service.ReportUpdateResult(ctx, agent, &osvcv1.UpdateResultReport{Run: run.GetName(), FencingToken: run.GetFencingToken(),
		Result: &osvcv1.UpdateResult{Update: "updates/cu", Index: 1, State: osvcv1.UpdateState_UPDATE_STATE_UNSUPPORTED, Message: "not a package"}}); err != nil {
		t.Fatal(err)
	}
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: img.GetVersions()[0].GetSha256(), ResultSizeBytes: img.GetVersions()[0].GetSizeBytes()}); err != nil {
		t.Fatal(err)
	}
	got := env.GetImage(t, img.GetName())
	if strings.Join(got.GetUnsupportedUpdates(), ",") != "updates/cu" {
		t.Fatalf("the image's unsupported updates = %v, want updates/cu", got.GetUnsupportedUpdates())
	}
	if list, err := env.Catalog.ApplicableUpdates(ctx, got, nil); err != nil || len(list) != 0 {
		t.Errorf("applicable after the engine said UNSUPPORTED: %v, %v; want none", list, err)
	}
	if list, _, err := env.Catalog.ListApplicableUpdates(ctx, img.GetName(), nil, true, 0, ""); err != nil || len(list) != 1 {
		t.Errorf("applicable with the unsupported included: %v, %v; want updates/cu", list, err)
	}
}
