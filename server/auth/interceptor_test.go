package auth_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/server/auth"
	"github.com/osvc/osvc/server/sites"
	"github.com/osvc/osvc/server/store/storetest"
)

// resolver is the resolver of the tests: images and runs of two sites, and
// the one blob agent-ps1 holds a run for.
type resolver struct{}

func (resolver) ImageSite(_ context.Context, image string) (string, error) {
	switch image {
	case "images/ps1-image":
		return "PS1", nil
	case "images/ps2-image":
		return "PS2", nil
	}
	return "", errdefs.Newf(errdefs.ErrNotFound, "%s not found", image)
}

func (s resolver) RunSite(ctx context.Context, run string) (string, error) {
	return s.ImageSite(ctx, "images/"+strings.TrimPrefix(strings.TrimSuffix(run, "-run"), "runs/"))
}

const heldBlob = "1111111111111111111111111111111111111111111111111111111111111111"

func (resolver) AgentMayRead(_ context.Context, agent, sha string) (bool, error) {
	return agent == "agent-ps1" && sha == heldBlob, nil
}

func (resolver) AgentHoldsRun(_ context.Context, agent string) (bool, error) {
	return agent == "agent-ps1", nil
}

// agentStub answers Connect by reading the stream to its end, so the
// interceptor sees each message; every other method is unimplemented,
// which tells a call the interceptor let through.
type agentStub struct {
	osvcv1.UnimplementedAgentServiceServer
	access *auth.Access
}

func (a agentStub) Connect(stream osvcv1.AgentService_ConnectServer) error {
	// As agentsvc does, the stream ends when its context does, whatever
	// the agent sends.
	errc := make(chan error, 1)
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				errc <- err
				return
			}
			if err := stream.Send(&osvcv1.ConnectResponse{}); err != nil {
				errc <- err
				return
			}
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
}

func (a agentStub) Enroll(ctx context.Context, req *osvcv1.EnrollRequest) (*osvcv1.EnrollResponse, error) {
	resp, _, err := a.access.Enroll(ctx, req.GetJoinToken(), req.GetCsr())
	return resp, errdefs.ToGRPC(err)
}

// rig is a TLS server on loopback with every osvc service behind the
// authorizer, its credential store on a real etcd.
type rig struct {
	addr   string
	ca     *pki.CA
	access *auth.Access
	audit  *auth.Audit
	sites  *sites.Registry
	admin  string
}

func newRig(t *testing.T) *rig {
	t.Helper()
	st := storetest.New(t)
	ca, _, err := pki.EnsureCA(filepath.Join(t.TempDir(), "pki"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	access := auth.NewAccess(st, ca, time.Hour)
	audit := auth.NewAudit(st, time.Hour, hclog.NewNullLogger())
	z := auth.NewAuthorizer(access, audit, resolver{}, hclog.NewNullLogger())
	cert, err := ca.ServerCertificate([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(pki.ClientAuthConfig(pki.ServerConfig(cert), ca.Cert))),
		grpc.ChainUnaryInterceptor(z.Unary), grpc.ChainStreamInterceptor(z.Stream))
	osvcv1.RegisterAccessServiceServer(gs, osvcv1.UnimplementedAccessServiceServer{})
	osvcv1.RegisterAgentServiceServer(gs, agentStub{access: access})
	osvcv1.RegisterContentServiceServer(gs, osvcv1.UnimplementedContentServiceServer{})
	osvcv1.RegisterDistributionServiceServer(gs, osvcv1.UnimplementedDistributionServiceServer{})
	osvcv1.RegisterImageServiceServer(gs, osvcv1.UnimplementedImageServiceServer{})
	osvcv1.RegisterServicingServiceServer(gs, osvcv1.UnimplementedServicingServiceServer{})
	osvcv1.RegisterSiteServiceServer(gs, osvcv1.UnimplementedSiteServiceServer{})
	osvcv1.RegisterUpdateServiceServer(gs, osvcv1.UnimplementedUpdateServiceServer{})
	healthpb.RegisterHealthServer(gs, health.NewServer())
	reflection.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = gs.Serve(lis) })
	wg.Go(func() { _ = z.Run(ctx) })
	t.Cleanup(func() { cancel(); gs.Stop(); wg.Wait() })
	_, admin, err := access.CreateToken(context.Background(), "test", &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_ADMIN})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := sites.New(sites.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	return &rig{addr: lis.Addr().String(), ca: ca, access: access, audit: audit, sites: reg, admin: admin}
}

// conn dials the rig with a token ("" for none) or an agent certificate.
func (r *rig) conn(t *testing.T, token string, cert *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	opts := pki.ClientOptions{CAFile: r.ca.CertPath}
	if cert != nil {
		opts.Certificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	creds, err := pki.ClientCredentials(r.addr, opts)
	if err != nil {
		t.Fatal(err)
	}
	dial := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(pki.Bearer(token, true)))
	}
	cc, err := grpc.NewClient(r.addr, dial...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func (r *rig) token(t *testing.T, role osvcv1.Role, sites ...string) string {
	t.Helper()
	_, secret, err := r.access.CreateToken(context.Background(), "test", &osvcv1.CreateTokenRequest{Role: role, Sites: sites})
	if err != nil {
		t.Fatal(err)
	}
	return secret
}

// createSite makes sure site exists, as an administrator creates it first.
func (r *rig) createSite(t *testing.T, site string) {
	t.Helper()
	if _, err := r.sites.Create(context.Background(), &osvcv1.Site{Code: site}); err != nil && !errors.Is(err, errdefs.ErrConflict) {
		t.Fatal(err)
	}
}

// enroll enrolls an agent of site as the agent does and returns its certificate.
func (r *rig) enroll(t *testing.T, name, site string) *tls.Certificate {
	t.Helper()
	ctx := context.Background()
	r.createSite(t, site)
	join, _, err := r.access.CreateJoinToken(ctx, "test", &osvcv1.CreateJoinTokenRequest{Site: site})
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(name)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := osvcv1.NewAgentServiceClient(r.conn(t, "", nil)).Enroll(ctx, &osvcv1.EnrollRequest{JoinToken: join, Csr: csrPEM})
	if err != nil {
		t.Fatalf("enroll %s: %v", name, err)
	}
	cert, err := tls.X509KeyPair(resp.GetCertificate(), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &cert
}

// call invokes method on cc with an empty request (or its first message)
// and returns the status code the call ends with.
func call(ctx context.Context, cc *grpc.ClientConn, md protoreflect.MethodDescriptor, req any) codes.Code {
	method := "/" + string(md.Parent().FullName()) + "/" + string(md.Name())
	if req == nil {
		req = dynamicMessage(md.Input())
	}
	if !md.IsStreamingClient() && !md.IsStreamingServer() {
		return status.Code(cc.Invoke(ctx, method, req, dynamicMessage(md.Output())))
	}
	desc := &grpc.StreamDesc{StreamName: string(md.Name()), ServerStreams: md.IsStreamingServer(), ClientStreams: md.IsStreamingClient()}
	s, err := cc.NewStream(ctx, desc, method)
	if err != nil {
		return status.Code(err)
	}
	if err := s.SendMsg(req); err != nil && !errors.Is(err, io.EOF) {
		return status.Code(err)
	}
	_ = s.CloseSend()
	// The first answer tells: a refusal, or a call let through (a watch
	// then goes on, which needs no waiting for).
	if err := s.RecvMsg(dynamicMessage(md.Output())); err != nil && !errors.Is(err, io.EOF) {
		return status.Code(err)
	}
	return codes.OK
}

func dynamicMessage(md protoreflect.MessageDescriptor) any {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName())
	if err != nil {
		panic(err)
	}
	return mt.New().Interface()
}

// servedMethods walks the descriptors of every service the server serves.
func servedMethods(t *testing.T) []protoreflect.MethodDescriptor {
	t.Helper()
	var out []protoreflect.MethodDescriptor
	for _, svc := range []string{"osvc.v1.AccessService", "osvc.v1.AgentService", "osvc.v1.ContentService", "osvc.v1.ImageService",
		"osvc.v1.ServicingService", "osvc.v1.SiteService", "osvc.v1.UpdateService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
		if err != nil {
			t.Fatalf("service %s: %v", svc, err)
		}
		methods := d.(protoreflect.ServiceDescriptor).Methods()
		for i := range methods.Len() {
			out = append(out, methods.Get(i))
		}
	}
	return out
}

func fullName(md protoreflect.MethodDescriptor) string {
	return "/" + string(md.Parent().FullName()) + "/" + string(md.Name())
}

func TestEveryMethodOfTheAPIHasARuleAndEveryRuleAMethod(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	// Every osvc.v1 service the descriptors hold, so a new service is
	// covered too, not only the ones listed in servedMethods.
	protoregistry.GlobalFiles.RangeFilesByPackage("osvc.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			methods := fd.Services().Get(i).Methods()
			for j := range methods.Len() {
				name := fullName(methods.Get(j))
				seen[name] = true
				if _, ok := auth.Rules[name]; !ok {
					t.Errorf("%s has no entry in auth.Rules: add one, or the interceptor refuses it", name)
				}
			}
		}
		return true
	})
	for _, md := range servedMethods(t) {
		seen[fullName(md)] = true
	}
	for name := range auth.Rules {
		if !seen[name] {
			t.Errorf("auth.Rules has %s, which no service serves: remove it", name)
		}
	}
}

func TestWithoutACredentialEveryMethodButThePublicOnesIsUnauthenticated(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	cc := r.conn(t, "", nil)
	for _, md := range servedMethods(t) {
		name := fullName(md)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		code := call(ctx, cc, md, nil)
		cancel()
		public := auth.Rules[name].Permission == auth.Public
		switch {
		// Enroll checks its join token itself: an empty one is Unauthenticated.
		case public && name == osvcv1.AgentService_Enroll_FullMethodName && code != codes.Unauthenticated:
			t.Errorf("Enroll without a join token ended %v, want Unauthenticated from its own check", code)
		case public && name != osvcv1.AgentService_Enroll_FullMethodName && (code == codes.Unauthenticated || code == codes.PermissionDenied):
			t.Errorf("%s is public but was refused: %v", name, code)
		case !public && code != codes.Unauthenticated:
			t.Errorf("%s without a credential ended %v, want Unauthenticated", name, code)
		}
	}
}

func TestAForgedOrRevokedTokenIsUnauthenticated(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	ctx := context.Background()
	viewer := r.token(t, osvcv1.Role_ROLE_VIEWER)
	forged := viewer[:len(viewer)-4] + "AAAA"
	for name, token := range map[string]string{"a forged key": forged, "garbage": "osvc.tok.nope", "an admin token of another kind": strings.Replace(r.admin, ".tok.", ".join.", 1)} {
		_, err := osvcv1.NewImageServiceClient(r.conn(t, token, nil)).ListImages(ctx, &osvcv1.ListImagesRequest{})
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s: ListImages = %v, want Unauthenticated", name, err)
		}
	}
	cc := r.conn(t, viewer, nil)
	if _, err := osvcv1.NewImageServiceClient(cc).ListImages(ctx, &osvcv1.ListImagesRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("a viewer's ListImages = %v, want it let through (Unimplemented here)", err)
	}
	toks, err := r.access.ListTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range toks {
		if tok.GetRole() == osvcv1.Role_ROLE_VIEWER {
			if err := r.access.RevokeToken(ctx, tok.GetId()); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := osvcv1.NewImageServiceClient(cc).ListImages(ctx, &osvcv1.ListImagesRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("ListImages with a revoked token = %v, want Unauthenticated at once", err)
	}
}

func TestRolesAndSitesBoundWhatATokenMayDo(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	ctx := context.Background()
	viewer := r.conn(t, r.token(t, osvcv1.Role_ROLE_VIEWER), nil)
	operator := r.conn(t, r.token(t, osvcv1.Role_ROLE_OPERATOR, "PS1"), nil)
	admin := r.conn(t, r.admin, nil)
	tests := []struct {
		name string
		cc   *grpc.ClientConn
		do   func(cc *grpc.ClientConn) error
		want codes.Code
	}{
		{"a viewer reads runs", viewer, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewServicingServiceClient(cc).GetRun(ctx, &osvcv1.GetRunRequest{Name: "runs/ps1-image-run"})
			return err
		}, codes.Unimplemented},
		{"a viewer cannot cancel", viewer, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewServicingServiceClient(cc).CancelRun(ctx, &osvcv1.CancelRunRequest{Name: "runs/ps1-image-run"})
			return err
		}, codes.PermissionDenied},
		{"a viewer cannot import updates", viewer, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewUpdateServiceClient(cc).ImportUpdates(ctx, &osvcv1.ImportUpdatesRequest{})
			return err
		}, codes.PermissionDenied},
		{"an operator of PS1 schedules a PS1 image", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewServicingServiceClient(cc).CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{Parent: "images/ps1-image"})
			return err
		}, codes.Unimplemented},
		{"an operator of PS1 cannot schedule a PS2 image", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewServicingServiceClient(cc).CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{Parent: "images/ps2-image"})
			return err
		}, codes.PermissionDenied},
		{"an operator of PS1 changes a schedule of a PS1 image", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewServicingServiceClient(cc).UpdateSchedule(ctx, &osvcv1.UpdateScheduleRequest{Schedule: &osvcv1.Schedule{Name: "images/ps1-image/schedules/s1"}})
			return err
		}, codes.Unimplemented},
		{"an operator of PS1 cannot change a schedule of a PS2 image", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewServicingServiceClient(cc).UpdateSchedule(ctx, &osvcv1.UpdateScheduleRequest{Schedule: &osvcv1.Schedule{Name: "images/ps2-image/schedules/s1"}})
			return err
		}, codes.PermissionDenied},
		{"an operator of PS1 cannot delete a schedule of a PS2 image", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewServicingServiceClient(cc).DeleteSchedule(ctx, &osvcv1.DeleteScheduleRequest{Name: "images/ps2-image/schedules/s1"})
			return err
		}, codes.PermissionDenied},
		{"a viewer reads schedules", viewer, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewServicingServiceClient(cc).ListSchedules(ctx, &osvcv1.ListSchedulesRequest{})
			return err
		}, codes.Unimplemented},
		{"a viewer cannot delete a schedule", viewer, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewServicingServiceClient(cc).DeleteSchedule(ctx, &osvcv1.DeleteScheduleRequest{Name: "images/ps1-image/schedules/s1"})
			return err
		}, codes.PermissionDenied},
		{"an operator of PS1 cannot cancel a PS2 run", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewServicingServiceClient(cc).CancelRun(ctx, &osvcv1.CancelRunRequest{Name: "runs/ps2-image-run"})
			return err
		}, codes.PermissionDenied},
		{"an operator of PS1 cannot inspect a PS2 image", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewImageServiceClient(cc).InspectImage(ctx, &osvcv1.InspectImageRequest{Name: "images/ps2-image"})
			return err
		}, codes.PermissionDenied},
		{"an operator of PS1 distributes a PS1 image", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewDistributionServiceClient(cc).DistributeImage(ctx, &osvcv1.DistributeImageRequest{Name: "images/ps1-image"})
			return err
		}, codes.Unimplemented},
		{"an operator of PS1 cannot distribute a PS2 image", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewDistributionServiceClient(cc).DistributeImage(ctx, &osvcv1.DistributeImageRequest{Name: "images/ps2-image"})
			return err
		}, codes.PermissionDenied},
		{"a viewer lists the distribution points", viewer, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewDistributionServiceClient(cc).ListDistributionPoints(ctx, &osvcv1.ListDistributionPointsRequest{})
			return err
		}, codes.Unimplemented},
		{"a viewer cannot distribute", viewer, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewDistributionServiceClient(cc).DistributeImage(ctx, &osvcv1.DistributeImageRequest{Name: "images/ps1-image"})
			return err
		}, codes.PermissionDenied},
		{"an operator of PS1 rolls back a PS1 image", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewImageServiceClient(cc).RollbackImage(ctx, &osvcv1.RollbackImageRequest{Name: "images/ps1-image", Reason: "x"})
			return err
		}, codes.Unimplemented},
		{"an operator of PS1 cannot roll back a PS2 image", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewImageServiceClient(cc).RollbackImage(ctx, &osvcv1.RollbackImageRequest{Name: "images/ps2-image", Reason: "x"})
			return err
		}, codes.PermissionDenied},
		{"a viewer cannot roll back", viewer, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewImageServiceClient(cc).RollbackImage(ctx, &osvcv1.RollbackImageRequest{Name: "images/ps1-image", Reason: "x"})
			return err
		}, codes.PermissionDenied},
		{"an operator of PS1 deletes a PS1 image", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewImageServiceClient(cc).DeleteImage(ctx, &osvcv1.DeleteImageRequest{Name: "images/ps1-image"})
			return err
		}, codes.Unimplemented},
		{"an operator of PS1 cannot delete a PS2 image", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewImageServiceClient(cc).DeleteImage(ctx, &osvcv1.DeleteImageRequest{Name: "images/ps2-image"})
			return err
		}, codes.PermissionDenied},
		{"a viewer cannot delete an image", viewer, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewImageServiceClient(cc).DeleteImage(ctx, &osvcv1.DeleteImageRequest{Name: "images/ps1-image"})
			return err
		}, codes.PermissionDenied},
		{"an operator cannot delete an update, which every site shares", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewUpdateServiceClient(cc).DeleteUpdate(ctx, &osvcv1.DeleteUpdateRequest{Name: "updates/kb1-x64"})
			return err
		}, codes.PermissionDenied},
		{"an admin deletes an update", admin, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewUpdateServiceClient(cc).DeleteUpdate(ctx, &osvcv1.DeleteUpdateRequest{Name: "updates/kb1-x64"})
			return err
		}, codes.Unimplemented},
		{"an operator cannot delete an agent", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewAgentServiceClient(cc).DeleteAgent(ctx, &osvcv1.DeleteAgentRequest{Name: "agents/agent-ps1"})
			return err
		}, codes.PermissionDenied},
		{"a viewer cannot delete an agent", viewer, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewAgentServiceClient(cc).DeleteAgent(ctx, &osvcv1.DeleteAgentRequest{Name: "agents/agent-ps1"})
			return err
		}, codes.PermissionDenied},
		{"an admin deletes an agent", admin, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewAgentServiceClient(cc).DeleteAgent(ctx, &osvcv1.DeleteAgentRequest{Name: "agents/agent-ps1"})
			return err
		}, codes.Unimplemented},
		{"an operator of PS1 cannot import an image into PS2", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewImageServiceClient(cc).ImportImage(ctx, &osvcv1.ImportImageRequest{ImageId: "x", Site: "PS2"})
			return err
		}, codes.PermissionDenied},
		{"an operator imports an image into PS1", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewImageServiceClient(cc).ImportImage(ctx, &osvcv1.ImportImageRequest{ImageId: "x", Site: "PS1"})
			return err
		}, codes.Unimplemented},
		{"an operator cannot make tokens", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewAccessServiceClient(cc).CreateToken(ctx, &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_ADMIN})
			return err
		}, codes.PermissionDenied},
		{"an operator cannot make join tokens", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewAgentServiceClient(cc).CreateJoinToken(ctx, &osvcv1.CreateJoinTokenRequest{Site: "PS1"})
			return err
		}, codes.PermissionDenied},
		{"a viewer reads sites", viewer, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewSiteServiceClient(cc).ListSites(ctx, &osvcv1.ListSitesRequest{})
			return err
		}, codes.Unimplemented},
		{"an operator reads a site", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewSiteServiceClient(cc).GetSite(ctx, &osvcv1.GetSiteRequest{Name: "sites/PS1"})
			return err
		}, codes.Unimplemented},
		{"a viewer cannot create a site", viewer, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewSiteServiceClient(cc).CreateSite(ctx, &osvcv1.CreateSiteRequest{Site: &osvcv1.Site{Code: "PS3"}})
			return err
		}, codes.PermissionDenied},
		{"an operator of PS1 cannot change PS1", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewSiteServiceClient(cc).UpdateSite(ctx, &osvcv1.UpdateSiteRequest{Site: &osvcv1.Site{Name: "sites/PS1", Description: "x"}})
			return err
		}, codes.PermissionDenied},
		{"an operator of PS1 cannot delete PS1", operator, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewSiteServiceClient(cc).DeleteSite(ctx, &osvcv1.DeleteSiteRequest{Name: "sites/PS1"})
			return err
		}, codes.PermissionDenied},
		{"an admin creates, updates and deletes sites", admin, func(cc *grpc.ClientConn) error {
			client := osvcv1.NewSiteServiceClient(cc)
			_, err := client.CreateSite(ctx, &osvcv1.CreateSiteRequest{Site: &osvcv1.Site{Code: "PS3"}})
			if status.Code(err) != codes.Unimplemented {
				return err
			}
			_, err = client.UpdateSite(ctx, &osvcv1.UpdateSiteRequest{Site: &osvcv1.Site{Name: "sites/PS3", Description: "x"}})
			if status.Code(err) != codes.Unimplemented {
				return err
			}
			_, err = client.DeleteSite(ctx, &osvcv1.DeleteSiteRequest{Name: "sites/PS3"})
			return err
		}, codes.Unimplemented},
		{"an admin schedules any site's image", admin, func(cc *grpc.ClientConn) error {
			_, err := osvcv1.NewServicingServiceClient(cc).CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{Parent: "images/ps2-image"})
			return err
		}, codes.Unimplemented},
		{"a token cannot open an agent stream", admin, func(cc *grpc.ClientConn) error {
			s, err := osvcv1.NewAgentServiceClient(cc).Connect(ctx)
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, codes.PermissionDenied},
	}
	for _, tt := range tests {
		if got := status.Code(tt.do(tt.cc)); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestAnAgentCertificateDoesOnlyItsOwnAgentsWork(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cc := r.conn(t, "", r.enroll(t, "agent-ps1", "PS1"))
	agents := osvcv1.NewAgentServiceClient(cc)
	connect := func(hello *osvcv1.Hello) codes.Code {
		s, err := agents.Connect(ctx)
		if err != nil {
			return status.Code(err)
		}
		if err := s.Send(&osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_Hello{Hello: hello}}); err != nil {
			_, err = s.Recv()
			return status.Code(err)
		}
		if _, err := s.Recv(); err != nil {
			return status.Code(err)
		}
		_ = s.CloseSend()
		_, err = s.Recv()
		if errors.Is(err, io.EOF) {
			return codes.OK
		}
		return status.Code(err)
	}
	if got := connect(&osvcv1.Hello{Name: "agent-ps1", Site: "PS1"}); got != codes.OK {
		t.Errorf("Connect as itself = %v, want OK", got)
	}
	if got := connect(&osvcv1.Hello{Name: "agent-ps1", Site: "PS9"}); got != codes.PermissionDenied {
		t.Errorf("Connect as its name in PS9 = %v, want PermissionDenied", got)
	}
	if got := connect(&osvcv1.Hello{Name: "agent-ps9", Site: "PS9"}); got != codes.PermissionDenied {
		t.Errorf("Connect as another agent = %v, want PermissionDenied", got)
	}
	read := func(sha string) codes.Code {
		s, err := osvcv1.NewContentServiceClient(cc).Read(ctx, &osvcv1.ReadRequest{Sha256: sha})
		if err != nil {
			return status.Code(err)
		}
		_, err = s.Recv()
		return status.Code(err)
	}
	if got := read(heldBlob); got != codes.Unimplemented {
		t.Errorf("Read of a blob of its run = %v, want it let through (Unimplemented here)", got)
	}
	if got := read(strings.Repeat("2", 64)); got != codes.PermissionDenied {
		t.Errorf("Read of a blob of no run of its = %v, want PermissionDenied", got)
	}
	chunkIndex := func(sha string) codes.Code {
		s, err := osvcv1.NewContentServiceClient(cc).GetChunkIndex(ctx, &osvcv1.GetChunkIndexRequest{Sha256: sha})
		if err != nil {
			return status.Code(err)
		}
		_, err = s.Recv()
		return status.Code(err)
	}
	if got := chunkIndex(heldBlob); got != codes.Unimplemented {
		t.Errorf("GetChunkIndex of a blob of its run = %v, want it let through (Unimplemented here)", got)
	}
	if got := chunkIndex(strings.Repeat("2", 64)); got != codes.PermissionDenied {
		t.Errorf("GetChunkIndex of a blob of no run of its = %v, want PermissionDenied", got)
	}
	if _, err := osvcv1.NewContentServiceClient(cc).GetContent(ctx, &osvcv1.GetContentRequest{Sha256: strings.Repeat("2", 64)}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("GetContent of a blob of no run of its = %v, want PermissionDenied", err)
	}
	if _, err := osvcv1.NewImageServiceClient(cc).ListImages(ctx, &osvcv1.ListImagesRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("an agent's ListImages = %v, want PermissionDenied", err)
	}
	// An agent of another site holding no run may not upload.
	other := osvcv1.NewContentServiceClient(r.conn(t, "", r.enroll(t, "agent-ps9", "PS9")))
	w, err := other.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = w.Send(&osvcv1.WriteRequest{})
	if _, err := w.CloseAndRecv(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("Write by an agent holding no run = %v, want PermissionDenied", err)
	}
}

func TestARevokedAgentsStreamEndsAtOnceAndItsCertificateIsRefused(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cc := r.conn(t, "", r.enroll(t, "agent-ps1", "PS1"))
	s, err := osvcv1.NewAgentServiceClient(cc).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_Hello{Hello: &osvcv1.Hello{Name: "agent-ps1", Site: "PS1"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatalf("the stream before revocation: %v", err)
	}
	if err := r.access.RevokeAgent(ctx, "test", "agent-ps1", "stolen"); err != nil {
		t.Fatal(err)
	}
	// The stream ends without another message from the agent: the watch
	// of revocations ends it.
	if _, err := s.Recv(); status.Code(err) != codes.Unauthenticated {
		t.Errorf("the stream after revocation ended %v, want Unauthenticated", err)
	}
	if _, err := osvcv1.NewContentServiceClient(cc).GetContent(ctx, &osvcv1.GetContentRequest{Sha256: heldBlob}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("a call after revocation = %v, want Unauthenticated", err)
	}
}

func TestRefusalsAndMutationsAreAudited(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	ctx := context.Background()
	viewer := r.token(t, osvcv1.Role_ROLE_VIEWER)
	_, _ = osvcv1.NewServicingServiceClient(r.conn(t, viewer, nil)).CancelRun(ctx, &osvcv1.CancelRunRequest{Name: "runs/ps1-image-run"})
	_, _ = osvcv1.NewImageServiceClient(r.conn(t, r.admin, nil)).ImportImage(ctx, &osvcv1.ImportImageRequest{ImageId: "x", Site: "PS1"})
	_, _ = osvcv1.NewImageServiceClient(r.conn(t, r.admin, nil)).ListImages(ctx, &osvcv1.ListImagesRequest{})
	_, _ = osvcv1.NewSiteServiceClient(r.conn(t, r.admin, nil)).UpdateSite(ctx, &osvcv1.UpdateSiteRequest{Site: &osvcv1.Site{Name: "sites/PS1"}})
	_, _ = osvcv1.NewSiteServiceClient(r.conn(t, r.admin, nil)).CreateSite(ctx, &osvcv1.CreateSiteRequest{Site: &osvcv1.Site{Code: "PS2"}})
	_, _ = osvcv1.NewSiteServiceClient(r.conn(t, viewer, nil)).DeleteSite(ctx, &osvcv1.DeleteSiteRequest{Name: "sites/PS2"})
	_, _ = osvcv1.NewSiteServiceClient(r.conn(t, viewer, nil)).GetSite(ctx, &osvcv1.GetSiteRequest{Name: "sites/PS2"})
	evs, _, err := r.audit.List(ctx, time.Time{}, "", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range evs {
		got = append(got, ev.GetMethod()+" "+ev.GetCode()+" "+ev.GetResource()+" "+auth.RoleName(ev.GetRole()))
		if ev.GetPeer() == "" || ev.GetTime() == nil || !strings.HasPrefix(ev.GetPrincipal(), "token:") {
			t.Errorf("event %v lacks who, when or from where", ev)
		}
	}
	want := []string{
		osvcv1.SiteService_DeleteSite_FullMethodName + " PermissionDenied sites/PS2 viewer",
		osvcv1.SiteService_CreateSite_FullMethodName + " Unimplemented sites/PS2 admin",
		osvcv1.SiteService_UpdateSite_FullMethodName + " Unimplemented sites/PS1 admin",
		osvcv1.ImageService_ImportImage_FullMethodName + " Unimplemented images/x admin",
		osvcv1.ServicingService_CancelRun_FullMethodName + " PermissionDenied runs/ps1-image-run viewer",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("audit events:\n%s\nwant (newest first; a read is not audited):\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestAnAuditEventKeepsWhoCalledAndTheReasonTheyGave(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	ctx := context.Background()
	operator := r.token(t, osvcv1.Role_ROLE_OPERATOR, "PS1")
	_, _ = osvcv1.NewImageServiceClient(r.conn(t, operator, nil)).RollbackImage(ctx,
		&osvcv1.RollbackImageRequest{Name: "images/ps1-image", Reason: "version 3 breaks BitLocker"})
	evs, _, err := r.audit.List(ctx, time.Time{}, "", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 {
		t.Fatalf("%d audit events, want the rollback's: %v", len(evs), evs)
	}
	ev := evs[0]
	if ev.GetMethod() != osvcv1.ImageService_RollbackImage_FullMethodName || ev.GetResource() != "images/ps1-image" ||
		!strings.HasPrefix(ev.GetPrincipal(), "token:") || ev.GetRole() != osvcv1.Role_ROLE_OPERATOR || ev.GetReason() != "version 3 breaks BitLocker" {
		t.Errorf("audit event %v: want the rollback of images/ps1-image by the operator's token, with its reason", ev)
	}
}
