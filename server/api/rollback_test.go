package api_test

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/server/agentsvc"
	"github.com/osvc/osvc/server/api"
	"github.com/osvc/osvc/server/auth"
	"github.com/osvc/osvc/server/servicing/servicingtest"
	"github.com/osvc/osvc/server/store"
)

// lifecycleAPI is the image, update and agent services on a bufconn over a
// real servicing, agent registry and access store, each call made as the
// admin token:0123456789abcdef.
type lifecycleAPI struct {
	*servicingtest.Env
	images  osvcv1.ImageServiceClient
	updates osvcv1.UpdateServiceClient
	agents  osvcv1.AgentServiceClient
}

const adminID = "token:0123456789abcdef"

func newLifecycleAPI(t *testing.T) *lifecycleAPI {
	t.Helper()
	env := servicingtest.New(t, servicingtest.Options{})
	agents, err := agentsvc.New(agentsvc.Config{Store: env.Store, Servicing: env.Service, Agents: env.Agents, Distribution: env.Distribution, Logger: env.Logger})
	if err != nil {
		t.Fatal(err)
	}
	ca, _, err := pki.EnsureCA(filepath.Join(t.TempDir(), "pki"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	asAdmin := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		return handler(auth.WithPrincipal(ctx, &auth.Principal{ID: adminID, Role: osvcv1.Role_ROLE_ADMIN}), req)
	}
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer(grpc.UnaryInterceptor(asAdmin))
	osvcv1.RegisterImageServiceServer(gs, api.NewImageServer(env.Catalog, env.Service, env.Distribution, env.Logger))
	osvcv1.RegisterUpdateServiceServer(gs, api.NewUpdateServer(env.Catalog, env.Service, env.Logger))
	osvcv1.RegisterAgentServiceServer(gs, api.NewAgentServer(agents, auth.NewAccess(env.Store, ca, time.Hour), env.Logger))
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &lifecycleAPI{Env: env, images: osvcv1.NewImageServiceClient(conn), updates: osvcv1.NewUpdateServiceClient(conn),
		agents: osvcv1.NewAgentServiceClient(conn)}
}

func TestRollbackImageRecordsTheCallerAndAnswersWithTheDomainsCodes(t *testing.T) {
	t.Parallel()
	a := newLifecycleAPI(t)
	ctx := context.Background()
	img := a.Image(t, "win11", "PS1", 1)
	if _, err := a.images.RollbackImage(ctx, &osvcv1.RollbackImageRequest{Name: img.GetName(), Reason: "test"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("RollbackImage of an image with one version = %v, want FailedPrecondition", err)
	}
	// A second version, as a run's swap leaves it.
	v2 := a.Blob(t, "wim of win11 version 2")
	if _, _, err := store.Update(ctx, a.Store, a.Store.ImageKey("win11"), func(img *osvcv1.Image) error {
		img.Versions = append(img.Versions, &osvcv1.ImageVersion{Version: 2, Sha256: v2.GetSha256(), SizeBytes: v2.GetSizeBytes()})
		img.CurrentVersion = 2
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		req  *osvcv1.RollbackImageRequest
		want codes.Code
	}{
		{&osvcv1.RollbackImageRequest{Name: img.GetName()}, codes.InvalidArgument},
		{&osvcv1.RollbackImageRequest{Name: img.GetName(), ToVersion: 7, Reason: "test"}, codes.NotFound},
		{&osvcv1.RollbackImageRequest{Name: "images/nope", Reason: "test"}, codes.NotFound},
	} {
		if _, err := a.images.RollbackImage(ctx, tt.req); status.Code(err) != tt.want {
			t.Errorf("RollbackImage(%v) = %v, want %v", tt.req, err, tt.want)
		}
	}
	resp, err := a.images.RollbackImage(ctx, &osvcv1.RollbackImageRequest{Name: img.GetName(), Reason: "version 2 breaks BitLocker"})
	if err != nil {
		t.Fatalf("RollbackImage: %v", err)
	}
	got := resp.GetImage()
	if got.GetCurrentVersion() != 1 || len(got.GetRollbacks()) != 1 || got.GetRollbacks()[0].GetPrincipal() != adminID ||
		got.GetRollbacks()[0].GetReason() != "version 2 breaks BitLocker" {
		t.Errorf("rolled back image: current %d, rollbacks %v; want 1, one by %s with its reason", got.GetCurrentVersion(), got.GetRollbacks(), adminID)
	}
	view, err := a.images.GetImage(ctx, &osvcv1.GetImageRequest{Name: img.GetName()})
	if err != nil || len(view.GetImage().GetRollbacks()) != 1 {
		t.Errorf("GetImage after the rollback: %v, %v; want its rollback record", view.GetImage().GetRollbacks(), err)
	}
}

func TestDeleteImageAndDeleteUpdateAnswerWithTheDomainsCodes(t *testing.T) {
	t.Parallel()
	a := newLifecycleAPI(t)
	ctx := context.Background()
	img := a.Image(t, "win11", "PS1", 1)
	a.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, time.Date(2024, 10, 8, 0, 0, 0, 0, time.UTC))
	_, run, err := a.Service.CreateSchedule(ctx, img.GetName(), &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.images.DeleteImage(ctx, &osvcv1.DeleteImageRequest{Name: img.GetName()}); status.Code(err) != codes.FailedPrecondition ||
		!strings.Contains(err.Error(), run.GetName()) {
		t.Errorf("DeleteImage with a PENDING run = %v, want FailedPrecondition naming %s", err, run.GetName())
	}
	if _, err := a.updates.DeleteUpdate(ctx, &osvcv1.DeleteUpdateRequest{Name: "updates/cu"}); status.Code(err) != codes.FailedPrecondition ||
		!strings.Contains(err.Error(), run.GetName()) {
		t.Errorf("DeleteUpdate with a PENDING run applying it = %v, want FailedPrecondition naming %s", err, run.GetName())
	}
	if _, err := a.Service.CancelRun(ctx, run.GetName(), "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.images.DeleteImage(ctx, &osvcv1.DeleteImageRequest{Name: img.GetName()}); err != nil {
		t.Errorf("DeleteImage: %v", err)
	}
	if _, err := a.updates.DeleteUpdate(ctx, &osvcv1.DeleteUpdateRequest{Name: "updates/cu"}); err != nil {
		t.Errorf("DeleteUpdate: %v", err)
	}
	for name, err := range map[string]error{
		"GetImage": func() error {
			_, err := a.images.GetImage(ctx, &osvcv1.GetImageRequest{Name: img.GetName()})
			return err
		}(),
		"GetUpdate": func() error {
			_, err := a.updates.GetUpdate(ctx, &osvcv1.GetUpdateRequest{Name: "updates/cu"})
			return err
		}(),
		"DeleteImage again": func() error {
			_, err := a.images.DeleteImage(ctx, &osvcv1.DeleteImageRequest{Name: img.GetName()})
			return err
		}(),
	} {
		if status.Code(err) != codes.NotFound {
			t.Errorf("%s after the delete = %v, want NotFound", name, err)
		}
	}
	if _, err := a.updates.DeleteUpdate(ctx, &osvcv1.DeleteUpdateRequest{Name: "cu"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("DeleteUpdate of a bad name = %v, want InvalidArgument", err)
	}
}

func TestDeleteAgentRevokesItsEnrollment(t *testing.T) {
	t.Parallel()
	a := newLifecycleAPI(t)
	ctx := context.Background()
	a.Site(t, "PS1")
	lease := a.Connect(t, "ps1-a", "PS1", 1, 30*time.Second)
	if _, err := a.Store.Put(ctx, a.Store.AgentIdentityKey("ps1-a"), &storev1.AgentIdentity{Name: "ps1-a", Site: "PS1", Serials: []string{"01"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.agents.DeleteAgent(ctx, &osvcv1.DeleteAgentRequest{Name: "agents/ps1-a"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("DeleteAgent of a connected agent = %v, want FailedPrecondition", err)
	}
	if _, err := a.Store.Client().Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	if _, err := a.agents.DeleteAgent(ctx, &osvcv1.DeleteAgentRequest{Name: "agents/ps1-a"}); err != nil {
		t.Fatalf("DeleteAgent once its session ended: %v", err)
	}
	ident, _, err := store.Get[*storev1.AgentIdentity](ctx, a.Store, a.Store.AgentIdentityKey("ps1-a"))
	if err != nil || !ident.GetRevoked() || len(ident.GetSerials()) != 0 || ident.GetRevokedBy() != adminID {
		t.Errorf("identity after the delete: %v, %v; want revoked by %s, no serial accepted", ident, err, adminID)
	}
	list, err := a.agents.ListAgents(ctx, &osvcv1.ListAgentsRequest{})
	if err != nil || len(list.GetAgents()) != 0 {
		t.Errorf("ListAgents after the delete: %v, %v; want none", list.GetAgents(), err)
	}
	if _, err := a.agents.DeleteAgent(ctx, &osvcv1.DeleteAgentRequest{Name: "agents/nobody"}); status.Code(err) != codes.NotFound {
		t.Errorf("DeleteAgent of an unknown agent = %v, want NotFound", err)
	}
}
