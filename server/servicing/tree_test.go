package servicing_test

import (
	"context"
	"testing"

	"google.golang.org/protobuf/proto"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/packagetree"
	"github.com/osvc/osvc/server/servicing/servicingtest"
)

// The version a run makes of a package tree is the tree it serviced with
// sources/install.wim replaced by the result, every other file as it was;
// the serviced version keeps its own tree.
func TestTheSwapOfAPackageTreeKeepsEveryOtherFile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env, img := newEnv(t, servicingtest.Options{})
	setup := env.Blob(t, "MZ setup")
	v1 := img.GetVersions()[0]
	tree := &osvcv1.PackageTree{Files: []*osvcv1.PackageFile{
		{Path: "setup.exe", Sha256: setup.GetSha256(), SizeBytes: setup.GetSizeBytes()},
		{Path: "sources/ei.cfg", Sha256: packagetree.EmptySHA256},
		{Path: "sources/install.wim", Sha256: v1.GetSha256(), SizeBytes: v1.GetSizeBytes()},
	}}
	ref, err := env.Library.PutTree(ctx, tree)
	if err != nil {
		t.Fatal(err)
	}
	img.Kind = osvcv1.ImageKind_IMAGE_KIND_OS_UPGRADE_PACKAGE
	img.Versions[0].Tree = ref
	data, err := env.Store.Marshal(img)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Store.Client().Put(ctx, env.Store.ImageKey("win11"), string(data)); err != nil {
		t.Fatal(err)
	}

	run, _ := leasedRun(t, env, img)
	v2 := env.Blob(t, "serviced install.wim")
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: v2.GetSha256(), ResultSizeBytes: v2.GetSizeBytes()}); err != nil {
		t.Fatal(err)
	}
	got := env.GetImage(t, img.GetName())
	if got.GetCurrentVersion() != 2 || !proto.Equal(got.GetVersions()[0].GetTree(), ref) {
		t.Fatalf("image after the swap: %v", got)
	}
	newRef := got.GetVersions()[1].GetTree()
	if newRef.GetFileCount() != 3 || newRef.GetSizeBytes() != setup.GetSizeBytes()+v2.GetSizeBytes() {
		t.Errorf("version 2's tree %v", newRef)
	}
	newTree, err := env.Library.ReadTree(ctx, newRef.GetSha256())
	if err != nil {
		t.Fatal(err)
	}
	want, err := packagetree.WithInstallImage(tree, v2.GetSha256(), v2.GetSizeBytes())
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(newTree, want) {
		t.Errorf("version 2's tree %v, want %v", newTree, want)
	}
}
