package integration

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/integration/sampledata"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/pkg/transfer"
)

// The tests here attack a real osvc-server process as someone on the
// network would: without a credential, with an agent certificate of
// another site, with a stolen join token or key, with a token of too
// small a role.

// enrolled is an agent identity enrolled in a test, as osvc-agent enrolls.
type enrolled struct {
	name, site string
	cert       tls.Certificate
	join       string
}

// enroll makes a join token for site and enrolls name with it.
func (c *cluster) enroll(t *testing.T, name, site string) *enrolled {
	t.Helper()
	ctx := context.Background()
	c.createSite(t, site)
	resp, err := c.agents.CreateJoinToken(ctx, &osvcv1.CreateJoinTokenRequest{Site: site})
	if err != nil {
		t.Fatal(err)
	}
	e := &enrolled{name: name, site: site, join: resp.GetToken()}
	cert, err := c.enrollWith(e.join, name)
	if err != nil {
		t.Fatalf("enroll %s: %v", name, err)
	}
	e.cert = cert
	return e
}

// enrollWith presents a join token with a new key naming name.
func (c *cluster) enrollWith(join, name string) (tls.Certificate, error) {
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(name)
	if err != nil {
		return tls.Certificate{}, err
	}
	cc, err := grpc.NewClient(c.addr, c.anonymousCreds())
	if err != nil {
		return tls.Certificate{}, err
	}
	defer cc.Close()
	resp, err := osvcv1.NewAgentServiceClient(cc).Enroll(context.Background(), &osvcv1.EnrollRequest{JoinToken: join, Csr: csrPEM})
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(resp.GetCertificate(), keyPEM)
}

func (c *cluster) anonymousCreds() grpc.DialOption {
	creds, err := pki.ClientCredentials(c.addr, pki.ClientOptions{CAFile: c.caFile()})
	if err != nil {
		panic(err)
	}
	return grpc.WithTransportCredentials(creds)
}

// dialCert connects with a client certificate.
func (c *cluster) dialCert(t *testing.T, cert tls.Certificate) *grpc.ClientConn {
	t.Helper()
	creds, err := pki.ClientCredentials(c.addr, pki.ClientOptions{CAFile: c.caFile(),
		Certificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(c.addr, append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, transfer.DialOptions()...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// agentStream is an agent's stream driven by the test.
type agentStream struct {
	stream osvcv1.AgentService_ConnectClient
	id     uint64
}

// connect opens a stream saying Hello as name of site, and returns the
// error that refused it, if any.
func connect(ctx context.Context, cc *grpc.ClientConn, name, site string) (*agentStream, error) {
	s, err := osvcv1.NewAgentServiceClient(cc).Connect(ctx)
	if err != nil {
		return nil, err
	}
	a := &agentStream{stream: s, id: 1}
	if err := s.Send(&osvcv1.ConnectRequest{Id: a.id, Message: &osvcv1.ConnectRequest_Hello{Hello: &osvcv1.Hello{
		Name: name, Site: site, Host: name, Version: "attack", Engines: []string{"wimlib"}, Capacity: 1,
	}}}); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	m, err := s.Recv()
	if err != nil {
		return nil, err
	}
	if m.GetWelcome() == nil {
		return nil, errors.New("no Welcome")
	}
	return a, nil
}

// next returns the next message of the given kind, skipping the others.
func (a *agentStream) next(t *testing.T, want func(*osvcv1.ConnectResponse) bool) *osvcv1.ConnectResponse {
	t.Helper()
	for {
		m, err := a.stream.Recv()
		if err != nil {
			t.Fatalf("agent stream: %v", err)
		}
		if want(m) {
			return m
		}
	}
}

func code(err error) codes.Code { return status.Code(err) }

func TestWithoutACredentialEveryRPCOfTheRealServerIsUnauthenticated(t *testing.T) {
	c := newCluster(t)
	cc := dial(t, c.addr, c.caFile())
	public := map[string]bool{"grpc.health.v1.Health": true, "grpc.reflection.v1.ServerReflection": true, "grpc.reflection.v1alpha.ServerReflection": true}
	n := 0
	protoregistry.GlobalFiles.RangeFilesByPackage("osvc.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			methods := fd.Services().Get(i).Methods()
			for j := range methods.Len() {
				md := methods.Get(j)
				name := "/" + string(md.Parent().FullName()) + "/" + string(md.Name())
				if public[string(md.Parent().FullName())] || name == osvcv1.AgentService_Enroll_FullMethodName {
					continue
				}
				n++
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := invoke(ctx, cc, md)
				cancel()
				if code(err) != codes.Unauthenticated {
					t.Errorf("%s without a credential: %v, want Unauthenticated", name, err)
				}
			}
		}
		return true
	})
	if n < 25 {
		t.Errorf("walked %d methods: the descriptors of the API were not found", n)
	}
}

// invoke calls md with an empty request and returns how it ended.
func invoke(ctx context.Context, cc *grpc.ClientConn, md protoreflect.MethodDescriptor) error {
	method := "/" + string(md.Parent().FullName()) + "/" + string(md.Name())
	newMsg := func(d protoreflect.MessageDescriptor) any {
		mt, err := protoregistry.GlobalTypes.FindMessageByName(d.FullName())
		if err != nil {
			panic(err)
		}
		return mt.New().Interface()
	}
	if !md.IsStreamingClient() && !md.IsStreamingServer() {
		return cc.Invoke(ctx, method, newMsg(md.Input()), newMsg(md.Output()))
	}
	s, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: md.IsStreamingServer(), ClientStreams: md.IsStreamingClient()}, method)
	if err != nil {
		return err
	}
	_ = s.SendMsg(newMsg(md.Input()))
	_ = s.CloseSend()
	return s.RecvMsg(newMsg(md.Output()))
}

func TestAnAgentOfOneSiteCannotActForAnotherAndATamperedUploadGoesNowhere(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := newCluster(t)
	sample, err := sampledata.Create(ctx, sampledata.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	// The victim: agent-ps9 of site PS9, holding its image's inspection run.
	victim := c.enroll(t, "agent-ps9", "PS9")
	victimConn, err := connect(ctx, c.dialCert(t, victim.cert), victim.name, victim.site)
	if err != nil {
		t.Fatalf("the victim's stream: %v", err)
	}
	wim, err := transfer.Upload(ctx, c.contents, sample.WIM, "application/x-ms-wim", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.images.ImportImage(ctx, &osvcv1.ImportImageRequest{ImageId: "ps9-image", Site: "PS9", Kind: osvcv1.ImageKind_IMAGE_KIND_OS_IMAGE, ContentSha256: wim.GetSha256()}); err != nil {
		t.Fatal(err)
	}
	assign := victimConn.next(t, func(m *osvcv1.ConnectResponse) bool { return m.GetAssign() != nil }).GetAssign()
	run, token := assign.GetRun().GetName(), assign.GetRun().GetFencingToken()

	// The attacker: an agent of PS1 with a certificate of its own.
	attacker := c.enroll(t, "attacker", "PS1")
	cc := c.dialCert(t, attacker.cert)

	t.Run("its certificate cannot connect as the other site's agent", func(t *testing.T) {
		if _, err := connect(ctx, cc, "agent-ps9", "PS9"); code(err) != codes.PermissionDenied {
			t.Errorf("Connect as agent-ps9 of PS9: %v, want PermissionDenied", err)
		}
		if _, err := connect(ctx, cc, "attacker", "PS9"); code(err) != codes.PermissionDenied {
			t.Errorf("Connect as itself in PS9: %v, want PermissionDenied", err)
		}
	})
	t.Run("it cannot read the other site's image", func(t *testing.T) {
		s, err := osvcv1.NewContentServiceClient(cc).Read(ctx, &osvcv1.ReadRequest{Sha256: wim.GetSha256()})
		if err == nil {
			_, err = s.Recv()
		}
		if code(err) != codes.PermissionDenied {
			t.Errorf("Read of the PS9 image: %v, want PermissionDenied", err)
		}
		if _, err := osvcv1.NewContentServiceClient(cc).Locate(ctx, &osvcv1.LocateRequest{Sha256: wim.GetSha256()}); code(err) != codes.PermissionDenied {
			t.Errorf("Locate of the PS9 image: %v, want PermissionDenied", err)
		}
	})
	t.Run("it cannot upload a tampered image, holding no run", func(t *testing.T) {
		_, err := transfer.Upload(ctx, osvcv1.NewContentServiceClient(cc), sample.WIM, "application/x-ms-wim", nil)
		if code(err) != codes.PermissionDenied {
			t.Errorf("upload by an agent holding no run: %v, want PermissionDenied", err)
		}
		_, err = transfer.Upload(ctx, osvcv1.NewContentServiceClient(dial(t, c.addr, c.caFile())), sample.WIM, "application/x-ms-wim", nil)
		if code(err) != codes.Unauthenticated {
			t.Errorf("upload without a credential: %v, want Unauthenticated", err)
		}
	})
	t.Run("its reports for the other site's run are refused and change nothing", func(t *testing.T) {
		own, err := connect(ctx, cc, "attacker", "PS1")
		if err != nil {
			t.Fatalf("Connect as itself: %v", err)
		}
		before, err := c.svc.GetRun(ctx, &osvcv1.GetRunRequest{Name: run})
		if err != nil {
			t.Fatal(err)
		}
		reports := []*osvcv1.ConnectRequest{
			{Id: 2, Message: &osvcv1.ConnectRequest_Progress{Progress: &osvcv1.Progress{Run: run, FencingToken: token, Percent: 99}}},
			{Id: 3, Message: &osvcv1.ConnectRequest_RunResult{RunResult: &osvcv1.RunResult{Run: run, FencingToken: token,
				State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: wim.GetSha256(), ResultSizeBytes: wim.GetSizeBytes()}}},
		}
		for _, r := range reports {
			if err := own.stream.Send(r); err != nil {
				t.Fatal(err)
			}
			ack := own.next(t, func(m *osvcv1.ConnectResponse) bool { return m.GetAck().GetId() == r.GetId() }).GetAck()
			if codes.Code(ack.GetCode()) != codes.Aborted {
				t.Errorf("report %T for %s with its fencing token: ack %v, want ABORTED", r.GetMessage(), run, ack)
			}
		}
		after, err := c.svc.GetRun(ctx, &osvcv1.GetRunRequest{Name: run})
		if err != nil {
			t.Fatal(err)
		}
		if after.GetRun().GetState() != before.GetRun().GetState() || after.GetRun().GetPercent() != before.GetRun().GetPercent() || after.GetRun().GetAgent() != "agents/agent-ps9" {
			t.Errorf("the run changed under the attacker's reports: %v → %v", before.GetRun(), after.GetRun())
		}
	})
	t.Run("a stolen join token does not enroll twice", func(t *testing.T) {
		if _, err := c.enrollWith(attacker.join, "attacker-2"); code(err) != codes.Unauthenticated {
			t.Errorf("second enrollment with a used join token: %v, want Unauthenticated", err)
		}
	})
	t.Run("a stolen key cannot take over a live stream", func(t *testing.T) {
		if _, err := connect(ctx, c.dialCert(t, victim.cert), victim.name, victim.site); code(err) != codes.AlreadyExists {
			t.Errorf("second stream with the victim's own certificate: %v, want AlreadyExists", err)
		}
	})
	t.Run("an expired certificate is refused", func(t *testing.T) {
		ca, _, err := pki.EnsureCA(filepath.Join(c.dataDir, "pki"), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		keyPEM, csrPEM, err := pki.NewKeyAndCSR("attacker")
		if err != nil {
			t.Fatal(err)
		}
		csr, err := pki.ParseCSR(csrPEM)
		if err != nil {
			t.Fatal(err)
		}
		_, certPEM, err := ca.IssueAgentCertificate(csr, pki.AgentID{Site: "PS1", Name: "attacker"}, time.Hour, time.Now().Add(-2*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		expired, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		// The server refuses the handshake: the client sees the alert, or
		// the connection reset when it wrote before reading it.
		_, err = connect(ctx, c.dialCert(t, expired), "attacker", "PS1")
		if c := code(err); c != codes.Unavailable && c != codes.Unauthenticated {
			t.Errorf("Connect with an expired certificate: %v, want the handshake refused", err)
		}
	})
	t.Run("a revoked agent's open stream ends at once", func(t *testing.T) {
		start := time.Now()
		c.osvcctl(t, "agent", "revoke", victim.name, "--reason", "key stolen")
		_, err := victimConn.stream.Recv()
		for err == nil {
			_, err = victimConn.stream.Recv()
		}
		if code(err) != codes.Unauthenticated {
			t.Errorf("the revoked agent's stream ended %v, want Unauthenticated", err)
		}
		t.Logf("the stream ended %s after osvcctl agent revoke started", time.Since(start))
		if _, err := connect(ctx, c.dialCert(t, victim.cert), victim.name, victim.site); code(err) != codes.Unauthenticated {
			t.Errorf("Connect with the revoked certificate: %v, want Unauthenticated", err)
		}
	})
	// The image stays as imported: nothing the attacker did reached it.
	img, err := c.images.GetImage(ctx, &osvcv1.GetImageRequest{Name: "images/ps9-image"})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(img.GetImage().GetVersions()); n != 1 || img.GetImage().GetVersions()[0].GetSha256() != wim.GetSha256() {
		t.Errorf("images/ps9-image has %d versions after the attack, want only the imported one", n)
	}
}

func TestTokensOfSmallRolesAreRefusedWhatTheirRoleLacks(t *testing.T) {
	c := startCluster(t)
	sample, err := sampledata.Create(context.Background(), sampledata.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	img, _ := c.importSample(t, sample)
	viewer := filepath.Join(t.TempDir(), "viewer.token")
	writeToken(t, viewer, c.osvcctl(t, "token", "create", "--role", "viewer"))
	operator := filepath.Join(t.TempDir(), "operator.token")
	writeToken(t, operator, c.osvcctl(t, "token", "create", "--role", "operator", "--site", "PS2"))

	as := func(token string, args ...string) (string, error) {
		out, err := c.osvcctlCmd(append([]string{"--token-file", token}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := as(viewer, "image", "list"); err != nil {
		t.Errorf("a viewer lists images: %v\n%s", err, out)
	}
	created, err := c.svc.CreateSchedule(context.Background(), &osvcv1.CreateScheduleRequest{Parent: img.GetName(), AllApplicable: true, Schedule: &osvcv1.Schedule{}})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := as(viewer, "run", "cancel", created.GetRun().GetName()); err == nil || !strings.Contains(out, "may not call") {
		t.Errorf("a viewer cancels a run: %v\n%s\nwant it refused", err, out)
	}
	if out, err := as(operator, "schedule", "create", strings.TrimPrefix(img.GetName(), "images/"), "--all-applicable"); err == nil || !strings.Contains(out, "PS1") {
		t.Errorf("an operator of PS2 schedules a PS1 image: %v\n%s\nwant it refused naming the site", err, out)
	}
	if out, err := as(operator, "site", "update", "PS2", "--drive", "E:"); err == nil || !strings.Contains(out, "may not call") {
		t.Errorf("an operator changes its site: %v\n%s\nwant it refused: only an admin changes sites", err, out)
	}
	if out, err := as(viewer, "site", "get", "PS1"); err != nil || !strings.Contains(out, "PS1") {
		t.Errorf("a viewer reads a site: %v\n%s", err, out)
	}
	// Revoked, the viewer's token is refused at once.
	id := strings.Split(strings.TrimSpace(readFile(t, viewer)), ".")[2]
	if out := c.osvcctl(t, "token", "revoke", id); !strings.Contains(out, "token "+id+" revoked") {
		t.Errorf("osvcctl token revoke printed %q", out)
	}
	if out, err := as(viewer, "image", "list"); err == nil || !strings.Contains(out, "not valid") {
		t.Errorf("a revoked viewer lists images: %v\n%s\nwant it refused", err, out)
	}
	audit := c.osvcctl(t, "audit", "list", "-o", "json")
	for _, want := range []string{"CancelRun", "CreateSchedule", "PermissionDenied", "SiteService/CreateSite", "sites/PS1"} {
		if !strings.Contains(audit, want) {
			t.Errorf("the audit lacks %q:\n%s", want, audit)
		}
	}
}

// writeToken writes the token osvcctl printed (its first line) to file.
func writeToken(t *testing.T, file, out string) {
	t.Helper()
	line, _, _ := strings.Cut(out, "\n")
	if !strings.HasPrefix(line, "osvc.tok.") {
		t.Fatalf("osvcctl token create printed %q first, want the token", line)
	}
	if err := os.WriteFile(file, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestAnAgentRenewsItsCertificateBeforeItExpiresAndKeepsServicing(t *testing.T) {
	// Certificates of 12 s: renewed about 9 s after issue, so the first one
	// has expired by the second renewal.
	c := newCluster(t, "--agent-cert-validity", "12s")
	c.agent = c.startAgent(t, "agent-ps1")
	eventually(t, 2*time.Minute, "two renewals of the agent's certificate", func() bool {
		select {
		case <-c.agent.done:
			t.Fatalf("the agent exited: %v\n%s", c.agent.err, c.agent.log.String())
		default:
		}
		return strings.Count(c.agent.log.String(), "renewed the agent's certificate") >= 2
	})
	c.waitAgent(t, "agent-ps1", osvcv1.AgentState_AGENT_STATE_CONNECTED, time.Now())
	sample, err := sampledata.Create(context.Background(), sampledata.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	img, updates := c.importSample(t, sample)
	run, _ := c.scheduleAll(t, img, updates, true)
	if run.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		t.Errorf("a run after the renewals ended %v: %s", run.GetState(), run.GetError())
	}
}

func readFile(t *testing.T, file string) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
