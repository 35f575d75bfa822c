package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/pkg/transfer"
	"github.com/osvc/osvc/server"
	"github.com/osvc/osvc/server/content/s3store"
	"github.com/osvc/osvc/server/content/s3store/s3test"
	"github.com/osvc/osvc/server/store/storetest"
)

// running is a Server started by startServer.
type running struct {
	srv    *server.Server
	cancel context.CancelFunc
	// exited is closed when Run has returned err.
	exited chan struct{}
	err    error
}

// stop cancels the server's ctx and returns what Run returned.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case <-r.exited:
		return r.err
	case <-time.After(time.Minute):
		t.Fatal("Run did not return within a minute of its ctx ending")
		return nil
	}
}

func testConfig(t *testing.T, dataDir string) server.Config {
	return server.Config{
		DataDir:         dataDir,
		Listen:          "127.0.0.1:0",
		FastEtcd:        true,
		ShutdownTimeout: 5 * time.Second,
		Logger:          hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Warn}),
	}
}

// startServer runs a Server until the test ends and returns once it is ready.
func startServer(t *testing.T, cfg server.Config) *running {
	t.Helper()
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{srv: srv, cancel: cancel, exited: make(chan struct{})}
	go func() {
		r.err = srv.Run(ctx)
		close(r.exited)
	}()
	t.Cleanup(func() {
		cancel()
		<-r.exited
	})
	select {
	case <-srv.Ready():
	case <-r.exited:
		t.Fatalf("Run ended before the server was ready: %v", r.err)
	case <-time.After(time.Minute):
		t.Fatal("server not ready within a minute")
	}
	return r
}

// dial connects as the server's first admin to srv over TLS, trusting the authority it made.
func dial(t *testing.T, srv *server.Server) *grpc.ClientConn {
	t.Helper()
	return dialWith(t, srv, srv.AdminTokenFile())
}

// dialWith is dial with the token in tokenFile.
func dialWith(t *testing.T, srv *server.Server, tokenFile string) *grpc.ClientConn {
	t.Helper()
	addr := srv.Addr()
	creds, err := pki.ClientCredentials(addr, pki.ClientOptions{CAFile: srv.CAFile()})
	if err != nil {
		t.Fatal(err)
	}
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatalf("the admin token: %v", err)
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(creds), grpc.WithPerRPCCredentials(pki.Bearer(strings.TrimSpace(string(token)), true))},
		transfer.DialOptions()...)
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// captureWIM makes a real single-index x64 WIM with wimlib-imagex.
func captureWIM(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "src", "Windows")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "win.ini"), []byte("[fonts]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	wim := filepath.Join(dir, "install.wim")
	cmd := exec.Command("wimlib-imagex", "capture", filepath.Join(dir, "src"), wim, "Windows 11 Pro",
		"--image-property", "WINDOWS/ARCH=9", "--image-property", "WINDOWS/VERSION/BUILD=22631")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("wimlib-imagex capture: %v\n%s", err, out)
	}
	return wim
}

// importImage uploads a fresh WIM and imports it as images/{id} of site
// PS1, which it creates first when it does not exist, as an admin would.
func importImage(t *testing.T, conn *grpc.ClientConn, id string) *osvcv1.Image {
	t.Helper()
	ctx := context.Background()
	_, err := osvcv1.NewSiteServiceClient(conn).CreateSite(ctx, &osvcv1.CreateSiteRequest{Site: &osvcv1.Site{Code: "PS1"}})
	if err != nil && status.Code(err) != codes.AlreadyExists {
		t.Fatalf("CreateSite: %v", err)
	}
	c, err := transfer.Upload(ctx, osvcv1.NewContentServiceClient(conn), captureWIM(t), "application/x-ms-wim", nil)
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	resp, err := osvcv1.NewImageServiceClient(conn).ImportImage(ctx, &osvcv1.ImportImageRequest{
		ImageId: id, Site: "PS1", ContentSha256: c.Sha256,
	})
	if err != nil {
		t.Fatalf("ImportImage: %v", err)
	}
	return resp.Image
}

func TestServerServesHealthReflectionAndTheCatalog(t *testing.T) {
	t.Parallel()
	r := startServer(t, testConfig(t, t.TempDir()))
	conn := dial(t, r.srv)
	ctx := context.Background()

	health, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("health check: %v", err)
	}
	if health.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health = %v, want SERVING", health.Status)
	}
	if h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "osvc.v1.ImageService"}); err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health of osvc.v1.ImageService = %v, %v; want SERVING", h, err)
	}

	services := listServices(t, conn)
	for _, want := range []string{
		"osvc.v1.ImageService", "osvc.v1.UpdateService", "osvc.v1.ContentService",
		"osvc.v1.ServicingService", "osvc.v1.AgentService", "grpc.health.v1.Health",
	} {
		if !slices.Contains(services, want) {
			t.Errorf("reflection lists %v, missing %s", services, want)
		}
	}

	if c := serviceComment(t, conn, "osvc.v1.ImageService"); !strings.Contains(c, "image") {
		t.Errorf("reflection describes osvc.v1.ImageService with the comment %q, want the API's", c)
	}

	img := importImage(t, conn, "win11")
	if img.Name != "images/win11" || len(img.Indexes) != 1 || img.Indexes[0].Build != 22631 {
		t.Errorf("imported image = %v", img)
	}
	got, err := osvcv1.NewImageServiceClient(conn).GetImage(ctx, &osvcv1.GetImageRequest{Name: "images/win11"})
	if err != nil {
		t.Fatalf("GetImage: %v", err)
	}
	if got.Image.Versions[0].Sha256 != img.Versions[0].Sha256 {
		t.Errorf("GetImage = %v, want %v", got.Image, img)
	}
	_, err = osvcv1.NewImageServiceClient(conn).GetImage(ctx, &osvcv1.GetImageRequest{Name: "images/nope"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("GetImage of an unknown image: %v, want NotFound", err)
	}
}

// serviceComment is the leading comment reflection gives the service.
func serviceComment(t *testing.T, conn *grpc.ClientConn, service string) string {
	t.Helper()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	defer stream.CloseSend()
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: service},
	}); err != nil {
		t.Fatalf("reflection send: %v", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("reflection recv: %v", err)
	}
	for _, raw := range resp.GetFileDescriptorResponse().GetFileDescriptorProto() {
		var fd descriptorpb.FileDescriptorProto
		if err := proto.Unmarshal(raw, &fd); err != nil {
			t.Fatal(err)
		}
		for i, s := range fd.GetService() {
			if fd.GetPackage()+"."+s.GetName() != service {
				continue
			}
			for _, loc := range fd.GetSourceCodeInfo().GetLocation() {
				// Path 6 (service), i: the service's own location.
				if slices.Equal(loc.GetPath(), []int32{6, int32(i)}) {
					return loc.GetLeadingComments()
				}
			}
			return ""
		}
	}
	t.Fatalf("reflection gives no file holding %s", service)
	return ""
}

func listServices(t *testing.T, conn *grpc.ClientConn) []string {
	t.Helper()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	defer stream.CloseSend()
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	}); err != nil {
		t.Fatalf("reflection send: %v", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("reflection recv: %v", err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.Name)
	}
	return names
}

func TestServerStopsOnCancelAndKeepsItsDataAcrossARestart(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	first := startServer(t, testConfig(t, dataDir))
	conn := dial(t, first.srv)
	img := importImage(t, conn, "win11")

	// A health watcher sees the server go NOT_SERVING as it stops.
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	watch, err := healthpb.NewHealthClient(conn).Watch(watchCtx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := watch.Recv(); err != nil || st.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health watch = %v, %v; want SERVING", st, err)
	}
	first.cancel()
	if st, err := watch.Recv(); err != nil || st.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health watch during shutdown = %v, %v; want NOT_SERVING", st, err)
	}
	stopWatch()
	if err := first.stop(t); err != nil {
		t.Fatalf("Run after ctx cancel = %v, want nil", err)
	}

	second := startServer(t, testConfig(t, dataDir))
	got, err := osvcv1.NewImageServiceClient(dial(t, second.srv)).GetImage(context.Background(), &osvcv1.GetImageRequest{Name: "images/win11"})
	if err != nil {
		t.Fatalf("GetImage after a restart: %v", err)
	}
	if got.Image.Versions[0].Sha256 != img.Versions[0].Sha256 {
		t.Errorf("image after restart = %v, want %v", got.Image, img)
	}
	if err := second.stop(t); err != nil {
		t.Errorf("second Run = %v, want nil", err)
	}
}

func TestServerUsesAnExternalEtcd(t *testing.T) {
	t.Parallel()
	endpoint := storetest.StartEtcdProcess(t)
	cfg := testConfig(t, t.TempDir())
	cfg.EtcdEndpoints = []string{endpoint}
	cfg.Prefix = "/osvc-external/"
	r := startServer(t, cfg)
	importImage(t, dial(t, r.srv), "win11")

	client := storetest.Client(t, endpoint)
	resp, err := client.Get(context.Background(), "/osvc-external/images/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Key) != "/osvc-external/images/win11" {
		t.Errorf("external etcd holds %d image keys (%v), want /osvc-external/images/win11", len(resp.Kvs), resp.Kvs)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "etcd")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an embedded etcd directory was made next to an external etcd: %v", err)
	}
}

// Two servers on one etcd and one bucket: content uploaded through one is
// read, and imported, through the other; content deleted by one's collector
// is gone for both.
func TestTwoServersOnOneEtcdAndOneBucketShareTheContentLibrary(t *testing.T) {
	t.Parallel()
	endpoint := storetest.StartEtcdProcess(t)
	bucket := s3test.NewBucket(t)
	var servers []*running
	for range 2 {
		cfg := testConfig(t, t.TempDir())
		cfg.EtcdEndpoints = []string{endpoint}
		store, err := s3test.Shared(t).StoreConfig(t.TempDir(), bucket)
		if err != nil {
			t.Fatal(err)
		}
		cfg.ObjectStore = store
		servers = append(servers, startServer(t, cfg))
	}
	// The first server made the first admin token; it is valid on both.
	first := dial(t, servers[0].srv)
	second := dialWith(t, servers[1].srv, servers[0].srv.AdminTokenFile())

	ctx := context.Background()
	wim := captureWIM(t)
	c, err := transfer.Upload(ctx, osvcv1.NewContentServiceClient(first), wim, "application/x-ms-wim", nil)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "install.wim")
	if err := transfer.Download(ctx, osvcv1.NewContentServiceClient(second), c.GetSha256(), dst, nil); err != nil {
		t.Fatalf("download through the second server: %v", err)
	}
	want, _ := os.ReadFile(wim)
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, want) {
		t.Fatal("the second server serves other bytes")
	}
	if _, err := osvcv1.NewSiteServiceClient(first).CreateSite(ctx, &osvcv1.CreateSiteRequest{Site: &osvcv1.Site{Code: "PS1"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := osvcv1.NewImageServiceClient(second).ImportImage(ctx, &osvcv1.ImportImageRequest{ImageId: "win11", Site: "PS1", ContentSha256: c.GetSha256()})
	if err != nil {
		t.Fatalf("import through the second server: %v", err)
	}
	if len(resp.GetImage().GetIndexes()) != 1 {
		t.Errorf("the second server read indexes %v", resp.GetImage().GetIndexes())
	}
}

func TestNewRefusesABadConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  server.Config
	}{
		{"a listen address without a port", server.Config{Listen: "localhost"}},
		{"a negative lease TTL", server.Config{LeaseTTL: -time.Second}},
		{"a heartbeat slower than the lease", server.Config{LeaseTTL: 5 * time.Second, HeartbeatInterval: 10 * time.Second}},
		{"a negative max attempts", server.Config{MaxAttempts: -1}},
		{"an empty etcd endpoint", server.Config{EtcdEndpoints: []string{""}}},
		{"a prefix without a leading slash", server.Config{Prefix: "osvc/"}},
		{"plaintext on every address", server.Config{Listen: ":7300", Insecure: true}},
		{"plaintext on a network address", server.Config{Listen: "10.0.0.1:7300", Insecure: true}},
		{"plaintext with a certificate", server.Config{Insecure: true, TLSCertFile: "c.pem", TLSKeyFile: "k.pem"}},
		{"a certificate without its key", server.Config{TLSCertFile: "c.pem"}},
		{"etcd TLS without an external etcd", server.Config{EtcdAuth: server.EtcdAuth{CAFile: "ca.pem"}}},
		{"an etcd client certificate without its key", server.Config{EtcdEndpoints: []string{"https://10.0.0.1:2379"}, EtcdAuth: server.EtcdAuth{CertFile: "c.pem"}}},
		{"an etcd password without a user", server.Config{EtcdEndpoints: []string{"https://10.0.0.1:2379"}, EtcdAuth: server.EtcdAuth{PasswordFile: "p"}}},
		{"an object store bucket without its endpoint", server.Config{ObjectStore: s3store.Config{Bucket: "osvc"}}},
		{"an object store without a bucket", server.Config{ObjectStore: s3store.Config{Endpoint: "https://s3.example.com"}}},
		{"an object store prefix climbing out", server.Config{ObjectStore: s3store.Config{Endpoint: "https://s3.example.com", Bucket: "osvc", Prefix: "../"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is refused", func(t *testing.T) {
			if _, err := server.New(tt.cfg); err == nil {
				t.Error("New accepted it")
			}
		})
	}
}

// syncBuffer is a log destination the server's goroutines may share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestAnOpenRunWatchDoesNotHoldTheShutdown(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{}
	cfg := testConfig(t, t.TempDir())
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Warn, Output: logs})
	r := startServer(t, cfg)
	conn := dial(t, r.srv)
	ctx := context.Background()
	img := importImage(t, conn, "win11")

	// A tool that is not a package is an update the catalog records as is.
	tool := filepath.Join(t.TempDir(), "windows-kb890830-x64.exe")
	if err := os.WriteFile(tool, []byte("MZ tool"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := transfer.Upload(ctx, osvcv1.NewContentServiceClient(conn), tool, "application/octet-stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	imported, err := osvcv1.NewUpdateServiceClient(conn).ImportUpdates(ctx, &osvcv1.ImportUpdatesRequest{
		Files: []*osvcv1.UpdateFile{{FileName: filepath.Base(tool), Sha256: c.GetSha256()}}})
	if err != nil {
		t.Fatal(err)
	}
	sched, err := osvcv1.NewServicingServiceClient(conn).CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{
		Parent: img.GetName(), Schedule: &osvcv1.Schedule{Updates: []string{imported.GetUpdates()[0].GetName()}}})
	if err != nil {
		t.Fatal(err)
	}
	// No agent serves the site: the run stays PENDING and the watch open.
	watch, err := osvcv1.NewServicingServiceClient(conn).WatchRun(ctx, &osvcv1.WatchRunRequest{Name: sched.GetRun().GetName()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatalf("first WatchRun message: %v", err)
	}

	if err := r.stop(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	_, err = watch.Recv()
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "shutting down") {
		t.Errorf("watch after shutdown: %v, want Unavailable saying the server is shutting down", err)
	}
	if strings.Contains(logs.String(), "still running after the shutdown timeout") {
		t.Errorf("the watch held the shutdown until its timeout:\n%s", logs.String())
	}
}

func TestServerUsesAnExternalEtcdOverMutualTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, _, err := pki.EnsureCA(filepath.Join(dir, "etcd-pki"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := ca.ServerCertificate([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := writeKeyPair(t, dir, "etcd", serverCert)
	keyPEM, csrPEM, err := pki.NewKeyAndCSR("osvc-server")
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.ParseCSR(csrPEM)
	if err != nil {
		t.Fatal(err)
	}
	_, clientPEM, err := ca.IssueAgentCertificate(csr, pki.AgentID{Site: "PS1", Name: "osvc-server"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	clientCert, clientKey := filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	for f, data := range map[string][]byte{clientCert: clientPEM, clientKey: keyPEM} {
		if err := os.WriteFile(f, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	client, peer := storetest.FreeURL(t), storetest.FreeURL(t)
	client = strings.Replace(client, "http://", "https://", 1)
	cmd := exec.Command("etcd", "--name", "tls", "--data-dir", t.TempDir(),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "tls="+peer,
		"--cert-file", certFile, "--key-file", keyFile, "--trusted-ca-file", ca.CertPath, "--client-cert-auth",
		"--log-level", "error", "--logger", "zap")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); _ = cmd.Wait() })

	auth := server.EtcdAuth{CAFile: ca.CertPath, CertFile: clientCert, KeyFile: clientKey}
	cfg := testConfig(t, t.TempDir())
	cfg.EtcdEndpoints, cfg.EtcdAuth = []string{client}, auth
	r := startServer(t, cfg)
	importImage(t, dial(t, r.srv), "win11")

	// Without its client certificate etcd refuses the server, which says so at start.
	cfg = testConfig(t, t.TempDir())
	cfg.EtcdEndpoints, cfg.EtcdAuth = []string{client}, server.EtcdAuth{CAFile: ca.CertPath}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "does not answer") {
		t.Errorf("Run without the etcd client certificate = %v, want the etcd refusal", err)
	}
}

// writeKeyPair writes cert and its key as PEM files in dir.
func writeKeyPair(t *testing.T, dir, name string, cert tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestTheEmbeddedEtcdServesOnlyClientsWithTheServersCertificate(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, t.TempDir())
	r := startServer(t, cfg)
	endpoints := r.srv.EtcdEndpoints()
	if len(endpoints) == 0 || !strings.HasPrefix(endpoints[0], "https://127.0.0.1:") {
		t.Fatalf("embedded etcd endpoints %v, want https on loopback", endpoints)
	}
	pkiDir := filepath.Join(cfg.DataDir, "pki")
	get := func(info *transport.TLSInfo, endpoint string) error {
		c := clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()}
		if info != nil {
			tlsCfg, err := info.ClientConfig()
			if err != nil {
				t.Fatal(err)
			}
			c.TLS = tlsCfg
		}
		client, err := clientv3.New(c)
		if err != nil {
			return err
		}
		defer client.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = client.Get(ctx, "/osvc/tokens/", clientv3.WithPrefix())
		return err
	}
	if err := get(nil, strings.Replace(endpoints[0], "https://", "http://", 1)); err == nil {
		t.Error("a plaintext client read the embedded etcd")
	}
	if err := get(&transport.TLSInfo{TrustedCAFile: filepath.Join(pkiDir, pki.CACertFile)}, endpoints[0]); err == nil {
		t.Error("a TLS client without a certificate read the embedded etcd")
	}
	etcdCA := filepath.Join(pkiDir, "etcd", "ca", pki.CACertFile)
	if err := get(&transport.TLSInfo{TrustedCAFile: etcdCA}, endpoints[0]); err == nil {
		t.Error("a TLS client without a certificate read the embedded etcd")
	}
	// An agent's certificate, from the server's authority, must not open the store.
	ca, _, err := pki.EnsureCA(pkiDir, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, csrPEM, err := pki.NewKeyAndCSR("agent-1")
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.ParseCSR(csrPEM)
	if err != nil {
		t.Fatal(err)
	}
	_, agentPEM, err := ca.IssueAgentCertificate(csr, pki.AgentID{Site: "PS1", Name: "agent-1"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	agentCert, agentKey := filepath.Join(dir, "agent.crt"), filepath.Join(dir, "agent.key")
	for f, data := range map[string][]byte{agentCert: agentPEM, agentKey: keyPEM} {
		if err := os.WriteFile(f, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := get(&transport.TLSInfo{TrustedCAFile: etcdCA, CertFile: agentCert, KeyFile: agentKey}, endpoints[0]); err == nil {
		t.Error("an agent's certificate read the embedded etcd")
	}
	if err := get(&transport.TLSInfo{TrustedCAFile: etcdCA,
		CertFile: filepath.Join(pkiDir, "etcd", "etcd.crt"), KeyFile: filepath.Join(pkiDir, "etcd", "etcd.key")}, endpoints[0]); err != nil {
		t.Errorf("the server's own certificate cannot read the embedded etcd: %v", err)
	}
}
