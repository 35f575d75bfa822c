package server

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/servicing/servicingtest"
)

// TestMigrateIndexesDataStoredBeforeTheIndexes stores an update and an ended
// run the way a schema-1 server did (no index keys), migrates, and finds
// both through the lists that now read the indexes.
func TestMigrateIndexesDataStoredBeforeTheIndexes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := servicingtest.New(t, servicingtest.Options{})
	img := env.Image(t, "win11", "PS1", 1)
	blob := env.Blob(t, "package old")
	old := &osvcv1.Update{
		Name: "updates/kb1-x64", Kb: "KB1", Architecture: osvcv1.Architecture_ARCHITECTURE_X64, ApplicableBuilds: []uint32{22631},
		PackageIdentity: "Package_for_KB1~31bf3856ad364e35~amd64~~1.0.0.0",
		Files:           []*osvcv1.UpdateFile{{FileName: "kb1.cab", Sha256: blob.GetSha256(), SizeBytes: blob.GetSizeBytes()}},
	}
	if _, err := env.Store.Create(ctx, env.Store.UpdateKey("kb1-x64"), old); err != nil {
		t.Fatal(err)
	}
	ended := time.Now().Add(-48 * time.Hour)
	run := &osvcv1.Run{Name: "runs/r-old", Image: img.GetName(), State: osvcv1.RunState_RUN_STATE_SUCCEEDED,
		EndTime: timestamppb.New(ended), LogLineCount: 1}
	if _, err := env.Store.Create(ctx, env.Store.RunKey("r-old"), run); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Store.Client().Put(ctx, env.Store.LogKey("r-old", 1), "chunk"); err != nil {
		t.Fatal(err)
	}
	if got, _ := env.Catalog.ApplicableUpdates(ctx, img, nil); len(got) != 0 {
		t.Fatalf("before the migration the index lists %d updates, want none (the test stores no index)", len(got))
	}

	if err := migrate(ctx, env.Store, env.Catalog, env.Service, hclog.NewNullLogger()); err != nil {
		t.Fatal(err)
	}
	if got, err := env.Catalog.ApplicableUpdates(ctx, img, nil); err != nil || len(got) != 1 || got[0].GetName() != old.GetName() {
		t.Errorf("applicable after the migration = %v, %v; want %s", got, err, old.GetName())
	}
	if runs, _, err := env.Service.ListRuns(ctx, img.GetName(), 10, ""); err != nil || len(runs) != 1 || runs[0].GetName() != run.GetName() {
		t.Errorf("runs of the image after the migration = %v, %v; want %s", runs, err, run.GetName())
	}
	if n, err := env.Service.PruneLogs(ctx, time.Now().Add(-24*time.Hour)); err != nil || n != 1 {
		t.Errorf("PruneLogs after the migration = %d, %v; want the old run's lines pruned", n, err)
	}
	resp, err := env.Store.Client().Get(ctx, env.Store.SchemaKey())
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "2" {
		t.Fatalf("schema key = %v, %v; want 2", resp.Kvs, err)
	}
	// A newer schema than the server knows is refused, not overwritten.
	if _, err := env.Store.Client().Put(ctx, env.Store.SchemaKey(), "99"); err != nil {
		t.Fatal(err)
	}
	if err := migrate(ctx, env.Store, env.Catalog, env.Service, hclog.NewNullLogger()); err == nil {
		t.Error("migrate accepted data of schema 99")
	}
}
