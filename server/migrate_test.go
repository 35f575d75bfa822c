package server

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
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

	if err := migrate(ctx, env.Store, env.Catalog, env.Service, env.Sites, hclog.NewNullLogger()); err != nil {
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
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "3" {
		t.Fatalf("schema key = %v, %v; want 3", resp.Kvs, err)
	}
	// A newer schema than the server knows is refused, not overwritten.
	if _, err := env.Store.Client().Put(ctx, env.Store.SchemaKey(), "99"); err != nil {
		t.Fatal(err)
	}
	if err := migrate(ctx, env.Store, env.Catalog, env.Service, env.Sites, hclog.NewNullLogger()); err == nil {
		t.Error("migrate accepted data of schema 99")
	}
}

// TestMigrateRecordsTheSitesStoredDataNames stores, the way a schema-2
// server did, an image, an agent's record, an enrolled agent and a join
// token each of a site without a record, migrates, and finds each site
// recorded without a parent on the Automatic drive, a site that had a
// record left as it was, and the agent of a migrated site connecting again.
func TestMigrateRecordsTheSitesStoredDataNames(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := servicingtest.New(t, servicingtest.Options{})
	st := env.Store
	env.Site(t, "PS1")
	if _, err := env.Sites.Update(ctx, &osvcv1.Site{Code: "PS1", Description: "kept", OfflineServicingDrive: "D:"}, nil); err != nil {
		t.Fatal(err)
	}
	old := []struct {
		key string
		m   proto.Message
	}{
		{st.ImageKey("win11"), &osvcv1.Image{Name: "images/win11", Site: "PS7", CurrentVersion: 1}},
		{st.ImageKey("win10"), &osvcv1.Image{Name: "images/win10", Site: "PS1", CurrentVersion: 1}},
		{st.AgentKey("ps8-a"), &osvcv1.Agent{Name: "agents/ps8-a", Site: "PS8", State: osvcv1.AgentState_AGENT_STATE_LOST}},
		{st.AgentIdentityKey("ps9-a"), &storev1.AgentIdentity{Name: "ps9-a", Site: "PS9", Serials: []string{"01"}}},
		{st.JoinTokenKey("0123456789abcdef"), &storev1.JoinToken{Id: "0123456789abcdef", Site: "PS6", UsesLeft: 1,
			ExpireTime: timestamppb.New(time.Now().Add(time.Hour))}},
	}
	for _, o := range old {
		if _, err := st.Create(ctx, o.key, o.m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Client().Put(ctx, st.SchemaKey(), "2"); err != nil {
		t.Fatal(err)
	}
	hello := &osvcv1.Hello{Name: "ps8-a", Site: "PS8", Capacity: 1}
	if _, err := env.Agents.Open(ctx, hello); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("before the migration an agent of PS8 connects: %v; want FailedPrecondition (the site has no record)", err)
	}

	for range 2 { // idempotent: a second run changes nothing
		if err := migrate(ctx, st, env.Catalog, env.Service, env.Sites, hclog.NewNullLogger()); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Client().Put(ctx, st.SchemaKey(), "2"); err != nil {
			t.Fatal(err)
		}
	}
	list, _, err := env.Sites.List(ctx, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range list {
		got = append(got, s.GetCode())
		if s.GetCode() == "PS1" {
			if s.GetDescription() != "kept" || s.GetOfflineServicingDrive() != "D:" {
				t.Errorf("PS1 after the migration = %v; want its record as it was", s)
			}
			continue
		}
		if s.GetParentSite() != "" || s.GetOfflineServicingDrive() != "Automatic" || s.GetCreateTime() == nil {
			t.Errorf("migrated site %v; want no parent, the Automatic drive and a create time", s)
		}
	}
	if want := []string{"PS1", "PS6", "PS7", "PS8", "PS9"}; !slices.Equal(got, want) {
		t.Errorf("sites after the migration = %v, want %v", got, want)
	}
	if _, err := env.Agents.Open(ctx, hello); err != nil {
		t.Errorf("after the migration the agent of PS8 connects: %v", err)
	}
}
