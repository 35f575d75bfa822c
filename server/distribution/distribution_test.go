package distribution_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"google.golang.org/protobuf/proto"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/servicing/servicingtest"
	"github.com/osvc/osvc/server/store"
)

// hierarchy is CAS above PS1 and PS2, SS1 below PS1; dp-cas, dp-ss1 and
// dp-ps2 are named by their sites, dp-ps1 asked for the role itself.
func hierarchy(t *testing.T) *servicingtest.Env {
	t.Helper()
	env := servicingtest.New(t, servicingtest.Options{})
	ctx := context.Background()
	for _, s := range []*osvcv1.Site{
		{Code: "CAS", DistributionPoints: []string{"dp-cas"}},
		{Code: "PS1", ParentSite: "CAS"},
		{Code: "PS2", ParentSite: "CAS", DistributionPoints: []string{"dp-ps2"}},
		{Code: "SS1", ParentSite: "PS1", DistributionPoints: []string{"dp-ss1"}},
	} {
		if _, err := env.Sites.Create(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	role := &storev1.DistributionPointRole{Agent: "agents/dp-ps1", Site: "PS1"}
	if _, err := env.Store.Put(ctx, env.Store.DistributionPointKey("dp-ps1"), role); err != nil {
		t.Fatal(err)
	}
	return env
}

// distributed records image id of site with version 1 to distribute, in
// the inspection state given.
func distributed(t *testing.T, env *servicingtest.Env, id, site string, inspection osvcv1.InspectionState) *osvcv1.Image {
	t.Helper()
	img := env.Image(t, id, site, 1)
	img.Versions[0].Inspection = inspection
	img.DistributionVersion = 1
	putImage(t, env, img)
	return img
}

func putImage(t *testing.T, env *servicingtest.Env, img *osvcv1.Image) {
	t.Helper()
	if _, err := env.Store.Put(context.Background(), env.Store.ImageKey(store.IDFromKey(img.GetName())), img); err != nil {
		t.Fatal(err)
	}
}

func reconcile(t *testing.T, env *servicingtest.Env) int {
	t.Helper()
	n, err := env.Distribution.Reconcile(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// records returns every stored distribution of image by distribution
// point, read from etcd itself.
func records(t *testing.T, env *servicingtest.Env, image string) map[string]*osvcv1.Distribution {
	t.Helper()
	resp, err := env.Store.Client().Get(context.Background(), env.Store.DistributionsPrefix(""), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*osvcv1.Distribution{}
	for _, kv := range resp.Kvs {
		d, err := store.Unmarshal[*osvcv1.Distribution](kv.Value)
		if err != nil {
			t.Fatal(err)
		}
		if d.GetImage() == image {
			out[d.GetDistributionPoint()] = d
		}
	}
	return out
}

func keys(m map[string]*osvcv1.Distribution) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestAnImageGoesToTheDistributionPointsOfItsSiteAndTheSitesBelow(t *testing.T) {
	env := hierarchy(t)
	img := distributed(t, env, "win11", "PS1", osvcv1.InspectionState_INSPECTION_STATE_INSPECTED)
	if n := reconcile(t, env); n != 2 {
		t.Fatalf("reconcile wrote %d records, want 2 (PS1's and SS1's distribution points)", n)
	}
	got := records(t, env, img.GetName())
	if want := []string{"agents/dp-ps1", "agents/dp-ss1"}; !slices.Equal(keys(got), want) {
		t.Fatalf("distribution points of the PS1 image: %v, want %v (not CAS above it, not PS2 beside it)", keys(got), want)
	}
	for _, d := range got {
		if d.GetState() != osvcv1.DistributionState_DISTRIBUTION_STATE_PENDING || d.GetVersion() != 1 ||
			d.GetSha256() != img.GetVersions()[0].GetSha256() || d.GetSizeBytes() != img.GetVersions()[0].GetSizeBytes() {
			t.Errorf("record %v: want PENDING version 1 of the image's file", d)
		}
	}
	view, err := env.Distribution.OfImage(context.Background(), img)
	if err != nil || len(view) != 2 || view[0].GetDistributionPoint() != "agents/dp-ps1" || view[1].GetDistributionPoint() != "agents/dp-ss1" {
		t.Fatalf("OfImage: %v, %v; want the records of dp-ps1 and dp-ss1", view, err)
	}
	if got["agents/dp-ps1"].GetSite() != "PS1" || got["agents/dp-ss1"].GetSite() != "SS1" {
		t.Errorf("sites: %q, %q; want each distribution point's own", got["agents/dp-ps1"].GetSite(), got["agents/dp-ss1"].GetSite())
	}
	// A CAS image goes everywhere.
	central := distributed(t, env, "server", "CAS", osvcv1.InspectionState_INSPECTION_STATE_INSPECTED)
	reconcile(t, env)
	if got, want := keys(records(t, env, central.GetName())), []string{"agents/dp-cas", "agents/dp-ps1", "agents/dp-ps2", "agents/dp-ss1"}; !slices.Equal(got, want) {
		t.Fatalf("distribution points of the CAS image: %v, want %v", got, want)
	}
	if n := reconcile(t, env); n != 0 {
		t.Fatalf("a second pass wrote %d records, want none", n)
	}
}

func TestAVersionIsDistributedOnlyOnceInspected(t *testing.T) {
	env := hierarchy(t)
	img := distributed(t, env, "win11", "SS1", osvcv1.InspectionState_INSPECTION_STATE_PENDING)
	if n := reconcile(t, env); n != 0 {
		t.Fatalf("a version under inspection got %d records", n)
	}
	img.Versions[0].Inspection = osvcv1.InspectionState_INSPECTION_STATE_FAILED
	putImage(t, env, img)
	if n := reconcile(t, env); n != 0 {
		t.Fatalf("a version that failed its inspection got %d records", n)
	}
	img.Versions[0].Inspection = osvcv1.InspectionState_INSPECTION_STATE_INSPECTED
	putImage(t, env, img)
	if n := reconcile(t, env); n != 1 {
		t.Fatalf("the inspected version got %d records, want 1", n)
	}
}

func TestANewVersionReplacesTheTargetAndKeepsWhatIsServed(t *testing.T) {
	env := hierarchy(t)
	ctx := context.Background()
	img := distributed(t, env, "win11", "SS1", osvcv1.InspectionState_INSPECTION_STATE_INSPECTED)
	reconcile(t, env)
	v1 := img.GetVersions()[0]
	report(t, env, "dp-ss1", img, v1, osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED)

	v2blob := env.Blob(t, "wim of win11 version 2")
	v2 := &osvcv1.ImageVersion{Version: 2, Sha256: v2blob.GetSha256(), SizeBytes: v2blob.GetSizeBytes(), Inspection: osvcv1.InspectionState_INSPECTION_STATE_INSPECTED}
	img.Versions = append(img.Versions, v2)
	img.CurrentVersion, img.DistributionVersion = 2, 2
	putImage(t, env, img)
	if n := reconcile(t, env); n != 1 {
		t.Fatalf("reconcile wrote %d records, want 1", n)
	}
	d := records(t, env, img.GetName())["agents/dp-ss1"]
	if d.GetState() != osvcv1.DistributionState_DISTRIBUTION_STATE_PENDING || d.GetVersion() != 2 || d.GetSha256() != v2.GetSha256() || d.GetDistributedVersion() != 1 {
		t.Fatalf("record after version 2: %v; want PENDING version 2, serving version 1 meanwhile", d)
	}
	// What the agent is sent, and may read: version 2's file.
	un, err := env.Distribution.Unfinished(ctx, "dp-ss1")
	if err != nil || len(un) != 1 || un[0].GetSha256() != v2.GetSha256() || un[0].GetVersion() != 2 {
		t.Fatalf("Unfinished: %v, %v; want the Distribute of version 2", un, err)
	}
}

func report(t *testing.T, env *servicingtest.Env, agent string, img *osvcv1.Image, v *osvcv1.ImageVersion, st osvcv1.DistributionState) {
	t.Helper()
	if err := env.Distribution.Report(context.Background(), agent, &osvcv1.DistributionReport{
		Image: img.GetName(), Version: v.GetVersion(), Sha256: v.GetSha256(), State: st, BytesTransferred: v.GetSizeBytes(),
	}); err != nil {
		t.Fatalf("report %s: %v", st, err)
	}
}

func TestAReportCountsOnlyForTheFileTheDistributionTargets(t *testing.T) {
	env := hierarchy(t)
	ctx := context.Background()
	img := distributed(t, env, "win11", "SS1", osvcv1.InspectionState_INSPECTION_STATE_INSPECTED)
	reconcile(t, env)
	v1 := img.GetVersions()[0]
	before := records(t, env, img.GetName())["agents/dp-ss1"]

	stale := &osvcv1.DistributionReport{Image: img.GetName(), Version: 1, Sha256: "0000000000000000000000000000000000000000000000000000000000000000",
		State: osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED}
	if err := env.Distribution.Report(ctx, "dp-ss1", stale); !errors.Is(err, errdefs.ErrStaleLease) {
		t.Fatalf("a report of another file: %v, want ErrStaleLease", err)
	}
	// Another agent has no record of the image: its report changes nothing.
	other := &osvcv1.DistributionReport{Image: img.GetName(), Version: 1, Sha256: v1.GetSha256(), State: osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED}
	if err := env.Distribution.Report(ctx, "dp-ps2", other); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("a report of an agent without the record: %v, want ErrNotFound", err)
	}
	if bad := proto.Clone(other).(*osvcv1.DistributionReport); true {
		bad.State = osvcv1.DistributionState_DISTRIBUTION_STATE_PENDING
		if err := env.Distribution.Report(ctx, "dp-ss1", bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("a PENDING report: %v, want InvalidArgument", err)
		}
	}
	if after := records(t, env, img.GetName())["agents/dp-ss1"]; !proto.Equal(before, after) {
		t.Fatalf("refused reports changed the record: %v → %v", before, after)
	}

	if err := env.Distribution.Report(ctx, "dp-ss1", &osvcv1.DistributionReport{Image: img.GetName(), Version: 1, Sha256: v1.GetSha256(),
		State: osvcv1.DistributionState_DISTRIBUTION_STATE_TRANSFERRING, BytesTransferred: 5}); err != nil {
		t.Fatal(err)
	}
	if d := records(t, env, img.GetName())["agents/dp-ss1"]; d.GetState() != osvcv1.DistributionState_DISTRIBUTION_STATE_TRANSFERRING || d.GetBytesTransferred() != 5 {
		t.Fatalf("after TRANSFERRING: %v", d)
	}
	report(t, env, "dp-ss1", img, v1, osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED)
	// A late progress report does not move a finished distribution back.
	if err := env.Distribution.Report(ctx, "dp-ss1", &osvcv1.DistributionReport{Image: img.GetName(), Version: 1, Sha256: v1.GetSha256(),
		State: osvcv1.DistributionState_DISTRIBUTION_STATE_TRANSFERRING, BytesTransferred: 5}); err != nil {
		t.Fatal(err)
	}
	d := records(t, env, img.GetName())["agents/dp-ss1"]
	if d.GetState() != osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED || d.GetDistributedVersion() != 1 || d.GetBytesTransferred() != v1.GetSizeBytes() {
		t.Fatalf("after DISTRIBUTED and a late report: %v; want DISTRIBUTED, serving version 1", d)
	}
	if un, err := env.Distribution.Unfinished(ctx, "dp-ss1"); err != nil || len(un) != 0 {
		t.Fatalf("Unfinished after DISTRIBUTED: %v, %v; want none", un, err)
	}
}

func TestADistributionPointMayReadOnlyTheFilesItIsToHold(t *testing.T) {
	env := hierarchy(t)
	ctx := context.Background()
	img := distributed(t, env, "win11", "SS1", osvcv1.InspectionState_INSPECTION_STATE_INSPECTED)
	other := env.Image(t, "other", "PS2", 1)
	reconcile(t, env)
	sha := img.GetVersions()[0].GetSha256()
	for _, c := range []struct {
		agent, sha string
		want       bool
	}{
		{"dp-ss1", sha, true},
		{"dp-ps1", sha, false},                                // PS1 is above SS1
		{"dp-ps2", sha, false},                                // PS2 is beside it
		{"dp-ss1", other.GetVersions()[0].GetSha256(), false}, // not distributed
	} {
		got, err := env.Distribution.MayRead(ctx, c.agent, c.sha)
		if err != nil || got != c.want {
			t.Errorf("MayRead(%s, %.8s): %v, %v; want %v", c.agent, c.sha, got, err, c.want)
		}
	}
}

func TestDistributeImageTargetsTheCurrentVersionAndRetriesTheFailed(t *testing.T) {
	env := hierarchy(t)
	ctx := context.Background()
	img := env.Image(t, "win11", "SS1", 1)
	if n := reconcile(t, env); n != 0 {
		t.Fatalf("an image never distributed got %d records", n)
	}
	out, err := env.Distribution.Distribute(ctx, img.GetName())
	if err != nil {
		t.Fatal(err)
	}
	if out.GetDistributionVersion() != 1 {
		t.Fatalf("distribution_version %d, want the current version 1", out.GetDistributionVersion())
	}
	reconcile(t, env)
	v1 := img.GetVersions()[0]
	if err := env.Distribution.Report(ctx, "dp-ss1", &osvcv1.DistributionReport{Image: img.GetName(), Version: 1, Sha256: v1.GetSha256(),
		State: osvcv1.DistributionState_DISTRIBUTION_STATE_FAILED, Error: "disk full", Retries: 3}); err != nil {
		t.Fatal(err)
	}
	if d := records(t, env, img.GetName())["agents/dp-ss1"]; d.GetState() != osvcv1.DistributionState_DISTRIBUTION_STATE_FAILED || d.GetError() != "disk full" || d.GetRetries() != 3 {
		t.Fatalf("after FAILED: %v", d)
	}
	if _, err := env.Distribution.Distribute(ctx, img.GetName()); err != nil {
		t.Fatal(err)
	}
	if d := records(t, env, img.GetName())["agents/dp-ss1"]; d.GetState() != osvcv1.DistributionState_DISTRIBUTION_STATE_PENDING || d.GetRetries() != 0 || d.GetError() != "" {
		t.Fatalf("after DistributeImage again: %v; want PENDING, retries and error cleared", d)
	}
	if _, err := env.Distribution.Distribute(ctx, "images/nope"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("DistributeImage of a missing image: %v, want NotFound", err)
	}
	if _, err := env.Distribution.Distribute(ctx, "win11"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("DistributeImage of a bad name: %v, want InvalidArgument", err)
	}
}

func TestListDistributionPointsNamesEachWithItsRoleAndRecords(t *testing.T) {
	env := hierarchy(t)
	ctx := context.Background()
	distributed(t, env, "win11", "SS1", osvcv1.InspectionState_INSPECTION_STATE_INSPECTED)
	reconcile(t, env)
	points, err := env.Distribution.Points(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range points {
		got = append(got, p.GetName()+"@"+p.GetSite()+":"+p.GetRoleFrom()[0]+":"+string(rune('0'+len(p.GetDistributions()))))
	}
	want := []string{"agents/dp-cas@CAS:site:0", "agents/dp-ps1@PS1:agent:0", "agents/dp-ps2@PS2:site:0", "agents/dp-ss1@SS1:site:1"}
	if !slices.Equal(got, want) {
		t.Fatalf("points: %v, want %v", got, want)
	}
	only, err := env.Distribution.Points(ctx, "PS2")
	if err != nil || len(only) != 1 || only[0].GetName() != "agents/dp-ps2" {
		t.Fatalf("points of PS2: %v, %v", only, err)
	}
}

func TestARecordNoPointIsToHoldIsDeletedAndReportedStale(t *testing.T) {
	env := hierarchy(t)
	ctx := context.Background()
	img := distributed(t, env, "win11", "PS1", osvcv1.InspectionState_INSPECTION_STATE_INSPECTED)
	reconcile(t, env)
	if got := keys(records(t, env, img.GetName())); !slices.Equal(got, []string{"agents/dp-ps1", "agents/dp-ss1"}) {
		t.Fatalf("records: %v", got)
	}
	// SS1 drops its distribution point.
	if _, err := env.Sites.Update(ctx, &osvcv1.Site{Name: "sites/SS1", Code: "SS1"}, []string{"distribution_points"}); err != nil {
		t.Fatal(err)
	}
	if n := reconcile(t, env); n != 1 {
		t.Fatalf("reconcile changed %d records, want 1 deleted", n)
	}
	if got := keys(records(t, env, img.GetName())); !slices.Equal(got, []string{"agents/dp-ps1"}) {
		t.Fatalf("records after SS1 dropped its point: %v", got)
	}
	stale, err := env.Distribution.Stale(ctx, "dp-ss1", []string{img.GetName()})
	if err != nil || !slices.Equal(stale, []string{img.GetName()}) {
		t.Fatalf("Stale(dp-ss1): %v, %v; want the image", stale, err)
	}
	if stale, err := env.Distribution.Stale(ctx, "dp-ps1", []string{img.GetName()}); err != nil || len(stale) != 0 {
		t.Fatalf("Stale(dp-ps1): %v, %v; want none", stale, err)
	}
	// The image moves out of reach: its site's point loses it too.
	img = env.GetImage(t, img.GetName())
	img.Site = "PS2"
	putImage(t, env, img)
	reconcile(t, env)
	if got := keys(records(t, env, img.GetName())); !slices.Equal(got, []string{"agents/dp-ps2"}) {
		t.Fatalf("records after the image moved to PS2: %v", got)
	}
}

func TestAPointReadsEveryFileOfAPackageTreeItIsToHold(t *testing.T) {
	env := hierarchy(t)
	ctx := context.Background()
	img := env.Image(t, "upgrade", "SS1", 1)
	setup, other := env.Blob(t, "setup.exe"), env.Blob(t, "a file of no tree")
	wim := img.GetVersions()[0]
	ref, err := env.Library.PutTree(ctx, &osvcv1.PackageTree{Files: []*osvcv1.PackageFile{
		{Path: "setup.exe", Sha256: setup.GetSha256(), SizeBytes: setup.GetSizeBytes()},
		{Path: "sources/install.wim", Sha256: wim.GetSha256(), SizeBytes: wim.GetSizeBytes()},
	}})
	if err != nil {
		t.Fatal(err)
	}
	img.Kind = osvcv1.ImageKind_IMAGE_KIND_OS_UPGRADE_PACKAGE
	img.Versions[0].Tree, img.Versions[0].Inspection, img.DistributionVersion = ref, osvcv1.InspectionState_INSPECTION_STATE_INSPECTED, 1
	putImage(t, env, img)
	reconcile(t, env)
	un, err := env.Distribution.Unfinished(ctx, "dp-ss1")
	if err != nil || len(un) != 1 || un[0].GetTree().GetSha256() != ref.GetSha256() {
		t.Fatalf("Unfinished: %v, %v; want the Distribute with the tree", un, err)
	}
	for _, c := range []struct {
		agent, sha string
		want       bool
	}{
		{"dp-ss1", setup.GetSha256(), true},
		{"dp-ss1", ref.GetSha256(), true},
		{"dp-ss1", wim.GetSha256(), true},
		{"dp-ss1", other.GetSha256(), false},
		{"dp-ps2", setup.GetSha256(), false},
	} {
		got, err := env.Distribution.MayRead(ctx, c.agent, c.sha)
		if err != nil || got != c.want {
			t.Errorf("MayRead(%s, %.8s): %v, %v; want %v", c.agent, c.sha, got, err, c.want)
		}
	}
}
