package sites_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/servicing/servicingtest"
	"github.com/osvc/osvc/server/sites"
	"github.com/osvc/osvc/server/store"
	"github.com/osvc/osvc/server/store/storetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	storetest.Close()
	os.Exit(code)
}

var fixedNow = time.Date(2026, 11, 14, 9, 0, 0, 0, time.UTC)

func newRegistry(t *testing.T) *sites.Registry {
	t.Helper()
	r, err := sites.New(sites.Config{Store: storetest.New(t), Now: func() time.Time { return fixedNow }})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// create creates sites, failing the test on an error.
func create(t *testing.T, r *sites.Registry, ss ...*osvcv1.Site) {
	t.Helper()
	for _, s := range ss {
		if _, err := r.Create(context.Background(), s); err != nil {
			t.Fatalf("create %s: %v", s.GetCode(), err)
		}
	}
}

func TestASiteIsCreatedReadListedUpdatedAndDeleted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newRegistry(t)
	create(t, r, &osvcv1.Site{Code: "CAS", Description: "central"})
	got, err := r.Create(ctx, &osvcv1.Site{Code: "PS1", ParentSite: "CAS", Description: "London", OfflineServicingDrive: ` D:\osvc `,
		DistributionPoints: []string{"dp-1", "dp-2"}})
	if err != nil {
		t.Fatal(err)
	}
	want := &osvcv1.Site{Name: "sites/PS1", Code: "PS1", ParentSite: "CAS", Description: "London", OfflineServicingDrive: `D:\osvc`,
		DistributionPoints: []string{"dp-1", "dp-2"}, CreateTime: timestamppb.New(fixedNow), UpdateTime: timestamppb.New(fixedNow)}
	if !proto.Equal(got, want) {
		t.Errorf("created %v\nwant %v", got, want)
	}
	if got, err := r.Get(ctx, "sites/PS1"); err != nil || !proto.Equal(got, want) {
		t.Errorf("Get = %v, %v; want %v", got, err, want)
	}
	create(t, r, &osvcv1.Site{Code: "PS2"})
	list, next, err := r.List(ctx, 0, "")
	if err != nil || next != "" || len(list) != 3 || list[0].GetCode() != "CAS" || list[2].GetCode() != "PS2" {
		t.Errorf("List = %v, %q, %v; want CAS, PS1, PS2", list, next, err)
	}
	if list[2].GetOfflineServicingDrive() != "Automatic" {
		t.Errorf("a site created without a drive has %q, want Automatic", list[2].GetOfflineServicingDrive())
	}

	// Without a mask only what is set changes.
	up, err := r.Update(ctx, &osvcv1.Site{Name: "sites/PS1", OfflineServicingDrive: "E:"}, nil)
	if err != nil || up.GetOfflineServicingDrive() != "E:" || up.GetDescription() != "London" || up.GetParentSite() != "CAS" {
		t.Errorf("Update of the drive = %v, %v; want E: and the rest as it was", up, err)
	}
	// A mask clears what it names and leaves empty.
	up, err = r.Update(ctx, &osvcv1.Site{Name: "sites/PS1"}, []string{"parent_site", "distribution_points"})
	if err != nil || up.GetParentSite() != "" || len(up.GetDistributionPoints()) != 0 || up.GetDescription() != "London" {
		t.Errorf("Update clearing the parent and distribution points = %v, %v", up, err)
	}
	if err := r.Delete(ctx, "sites/PS1"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := r.Get(ctx, "sites/PS1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Get after Delete = %v, want NotFound", err)
	}
	if err := r.Delete(ctx, "sites/PS1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("a second Delete = %v, want NotFound", err)
	}
}

func TestWhatASiteHoldsIsValidated(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newRegistry(t)
	create(t, r, &osvcv1.Site{Code: "PS1"})
	tests := []struct {
		name  string
		site  *osvcv1.Site
		field string
	}{
		{"a code of four letters", &osvcv1.Site{Code: "PS12"}, "site.code"},
		{"a lower-case code", &osvcv1.Site{Code: "ps2"}, "site.code"},
		{"a relative drive folder", &osvcv1.Site{Code: "PS2", OfflineServicingDrive: "work"}, "site.offline_servicing_drive"},
		{"a network share", &osvcv1.Site{Code: "PS2", OfflineServicingDrive: `\\server\share`}, "site.offline_servicing_drive"},
		{"a distribution point that is no agent name", &osvcv1.Site{Code: "PS2", DistributionPoints: []string{"DP_1"}}, "site.distribution_points"},
		{"a distribution point twice", &osvcv1.Site{Code: "PS2", DistributionPoints: []string{"dp-1", "dp-1"}}, "site.distribution_points"},
		{"a parent that is no site code", &osvcv1.Site{Code: "PS2", ParentSite: "central"}, "site.parent_site"},
		{"a site its own parent", &osvcv1.Site{Code: "PS2", ParentSite: "PS2"}, "site.parent_site"},
		{"a description past the limit", &osvcv1.Site{Code: "PS2", Description: strings.Repeat("x", sites.MaxDescriptionLen+1)}, "site.description"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := r.Create(ctx, tt.site)
			var v *errdefs.FieldViolation
			if !errors.As(err, &v) || v.Field != tt.field {
				t.Errorf("Create(%v) = %v; want an invalid %s", tt.site, err, tt.field)
			}
		})
	}
	if _, err := r.Create(ctx, &osvcv1.Site{Code: "PS1"}); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("creating PS1 again = %v, want Conflict", err)
	}
	_, err := r.Create(ctx, &osvcv1.Site{Code: "PS2", ParentSite: "CAS"})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "create it with: osvcctl site create CAS") {
		t.Errorf("a site under a parent that does not exist = %v; want FailedPrecondition saying how to create the parent", err)
	}
	if _, err := r.Update(ctx, &osvcv1.Site{Name: "sites/PS1", ParentSite: "CAS"}, nil); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("moving PS1 under a parent that does not exist = %v, want FailedPrecondition", err)
	}
	if _, err := r.Update(ctx, &osvcv1.Site{Name: "sites/PS1", Code: "PS2", Description: "x"}, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("an update changing the code = %v, want InvalidArgument", err)
	}
	if _, err := r.Update(ctx, &osvcv1.Site{Name: "sites/PS1"}, []string{"code"}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("an update mask naming the code = %v, want InvalidArgument", err)
	}
	if _, err := r.Update(ctx, &osvcv1.Site{Name: "sites/PS1"}, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("an update of nothing = %v, want InvalidArgument", err)
	}
	if _, err := r.Update(ctx, &osvcv1.Site{Name: "sites/PS9", Description: "x"}, nil); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("an update of a site that does not exist = %v, want NotFound", err)
	}
}

func TestAParentUnderTheSiteItselfIsRefusedNamingTheChain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newRegistry(t)
	create(t, r, &osvcv1.Site{Code: "CAS"}, &osvcv1.Site{Code: "PS1", ParentSite: "CAS"}, &osvcv1.Site{Code: "SS1", ParentSite: "PS1"})
	_, err := r.Update(ctx, &osvcv1.Site{Name: "sites/CAS", ParentSite: "SS1"}, nil)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "CAS → SS1 → PS1 → CAS") {
		t.Fatalf("CAS under its grandchild = %v; want FailedPrecondition naming CAS → SS1 → PS1 → CAS", err)
	}
	if got, err := r.Get(ctx, "sites/CAS"); err != nil || got.GetParentSite() != "" {
		t.Errorf("CAS after the refusal = %v, %v; want it unchanged", got, err)
	}
	// Moving a site under a sibling branch is no cycle.
	create(t, r, &osvcv1.Site{Code: "PS2", ParentSite: "CAS"})
	if up, err := r.Update(ctx, &osvcv1.Site{Name: "sites/SS1", ParentSite: "PS2"}, nil); err != nil || up.GetParentSite() != "PS2" {
		t.Errorf("SS1 moved under PS2 = %v, %v", up, err)
	}
}

func TestASiteThatIsStillNamedIsNotDeletedAndTheRefusalSaysByWhat(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := servicingtest.New(t, servicingtest.Options{})
	st := env.Store
	env.Image(t, "win11", "PS1", 1)
	env.Image(t, "win10", "PS1", 1)
	env.Image(t, "other", "PS2", 1)
	create(t, env.Sites, &osvcv1.Site{Code: "SS1", ParentSite: "PS1"})
	put := func(key string, m proto.Message) {
		t.Helper()
		if _, err := st.Put(ctx, key, m); err != nil {
			t.Fatal(err)
		}
	}
	put(st.AgentIdentityKey("ps1-a"), &storev1.AgentIdentity{Name: "ps1-a", Site: "PS1", Serials: []string{"01"}})
	put(st.JoinTokenKey("0123456789abcdef"), &storev1.JoinToken{Id: "0123456789abcdef", Site: "PS1", UsesLeft: 1,
		ExpireTime: timestamppb.New(time.Now().Add(time.Hour))})

	err := env.Sites.Delete(ctx, "sites/PS1")
	if !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("Delete of a site with images, an agent, a join token and a child = %v, want FailedPrecondition", err)
	}
	for _, part := range []string{"2 images (images/win10, images/win11)", "1 enrolled agent (agents/ps1-a)",
		"1 join token (join-tokens/0123456789abcdef)", "1 child site (sites/SS1)", "osvcctl agent revoke"} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("the refusal %q does not say %q", err, part)
		}
	}

	// What no longer uses the site does not keep it: a revoked agent, an
	// expired join token, an agent's record. PS3 has only those.
	env.Site(t, "PS3")
	put(st.AgentIdentityKey("ps3-a"), &storev1.AgentIdentity{Name: "ps3-a", Site: "PS3", Revoked: true})
	put(st.JoinTokenKey("fedcba9876543210"), &storev1.JoinToken{Id: "fedcba9876543210", Site: "PS3", UsesLeft: 1,
		ExpireTime: timestamppb.New(time.Now().Add(-time.Second))})
	put(st.AgentKey("ps3-a"), &osvcv1.Agent{Name: "agents/ps3-a", Site: "PS3", State: osvcv1.AgentState_AGENT_STATE_LOST})
	if err := env.Sites.Delete(ctx, "sites/PS3"); err != nil {
		t.Errorf("Delete of a site with a revoked agent and an expired join token: %v", err)
	}
	// A site with only a child is kept until the child moves.
	err = env.Sites.Delete(ctx, "sites/PS2")
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "1 image (images/other)") {
		t.Errorf("Delete of PS2 = %v; want a refusal naming its one image", err)
	}
	create(t, env.Sites, &osvcv1.Site{Code: "CAS"})
	if _, err := env.Sites.Update(ctx, &osvcv1.Site{Name: "sites/SS1", ParentSite: "CAS"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := env.Sites.Delete(ctx, "sites/CAS"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Delete of CAS with its child SS1 = %v, want FailedPrecondition", err)
	}
	if _, err := env.Sites.Update(ctx, &osvcv1.Site{Name: "sites/SS1"}, []string{"parent_site"}); err != nil {
		t.Fatal(err)
	}
	if err := env.Sites.Delete(ctx, "sites/CAS"); err != nil {
		t.Errorf("Delete of CAS once its child moved away: %v", err)
	}
}

// once calls f the first time the store is about to commit the
// transaction named txn, and never again: f may run transactions itself.
func once(txn string, f func()) func(string) {
	var done atomic.Bool
	return func(name string) {
		if name == txn && done.CompareAndSwap(false, true) {
			f()
		}
	}
}

// TestAnImportBetweenTheDeletesLookAndItsCommitKeepsTheSite imports an
// image into PS1 after the delete of PS1 looked for what names it (and
// found nothing) and before it commits: the delete must look again and
// refuse. Without the references key (Reference's put, Delete's read) the
// delete would commit and leave the image in a site that is gone.
func TestAnImportBetweenTheDeletesLookAndItsCommitKeepsTheSite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var env *servicingtest.Env
	var imported atomic.Bool
	env = servicingtest.New(t, servicingtest.Options{BeforeCommit: once("delete sites/PS1", func() {
		env.ImportWIM(t, "win11", "PS1")
		imported.Store(true)
	})})
	env.Site(t, "PS1")
	err := env.Sites.Delete(ctx, "sites/PS1")
	if !imported.Load() {
		t.Fatal("the import did not run between the delete's look and its commit")
	}
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "1 image (images/win11)") {
		t.Errorf("Delete with an import committed meanwhile = %v; want a refusal naming images/win11", err)
	}
	if _, err := env.Sites.Get(ctx, "sites/PS1"); err != nil {
		t.Errorf("PS1 after the refused delete: %v", err)
	}
}

// TestADeleteBetweenAnImportsReadsAndItsCommitRefusesTheImport deletes PS1
// after an import into it read the site and before the import commits: the
// import must read again and be refused. Without the site in the import's
// read set (Require's Load) the image would land in a site that is gone.
func TestADeleteBetweenAnImportsReadsAndItsCommitRefusesTheImport(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var env *servicingtest.Env
	var deleted atomic.Bool
	env = servicingtest.New(t, servicingtest.Options{BeforeCommit: once("import images/win11", func() {
		if err := env.Sites.Delete(ctx, "sites/PS1"); err != nil {
			t.Errorf("delete PS1 during the import: %v", err)
		}
		deleted.Store(true)
	})})
	env.Site(t, "PS1")
	blob := env.Blob(t, string(servicingtest.CaptureWIM(t)))
	_, _, err := env.Service.ImportImage(ctx, catalog.ImportImage{ID: "win11", Site: "PS1", ContentSHA256: blob.GetSha256()})
	if !deleted.Load() {
		t.Fatal("the delete did not run between the import's reads and its commit")
	}
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "create it with: osvcctl site create PS1") {
		t.Errorf("import into a site deleted meanwhile = %v; want FailedPrecondition saying how to create the site", err)
	}
	if _, _, err := store.Get[*osvcv1.Image](ctx, env.Store, env.Store.ImageKey("win11")); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("the image after the refused import: %v, want none", err)
	}
}

// TestASiteCreatedUnderAParentBeingDeletedKeepsTheParent creates SS1 under
// PS1 between the delete of PS1's look and its commit.
func TestASiteCreatedUnderAParentBeingDeletedKeepsTheParent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var env *servicingtest.Env
	env = servicingtest.New(t, servicingtest.Options{BeforeCommit: once("delete sites/PS1", func() {
		create(t, env.Sites, &osvcv1.Site{Code: "SS1", ParentSite: "PS1"})
	})})
	env.Site(t, "PS1")
	err := env.Sites.Delete(ctx, "sites/PS1")
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "1 child site (sites/SS1)") {
		t.Errorf("Delete with a child created meanwhile = %v; want a refusal naming sites/SS1", err)
	}
}
