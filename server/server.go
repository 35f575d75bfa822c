// Package server assembles osvc-server: etcd (embedded or external), the
// content library, the catalog, servicing, the scheduler and the agent
// service, all served over one gRPC listener.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/pkg/transfer"
	"github.com/osvc/osvc/server/api"
	"github.com/osvc/osvc/server/apidesc"
	"github.com/osvc/osvc/server/auth"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/content/s3store"
	"github.com/osvc/osvc/server/metrics"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/store"
)

// Defaults of Config.
const (
	DefaultDataDir           = "./osvc-data"
	DefaultListen            = "localhost:7300"
	DefaultLeaseTTL          = 30 * time.Second
	DefaultHeartbeatInterval = 10 * time.Second
	DefaultShutdownTimeout   = 10 * time.Second
	DefaultMaxAttempts       = 3
	DefaultStallAfter        = 15 * time.Minute
	DefaultRetryBackoff      = 10 * time.Second
	// DefaultMaxConcurrentImports, DefaultMaxConcurrentUploads and
	// DefaultMaxUploadBytes say why in their packages.
	DefaultMaxConcurrentImports = catalog.DefaultMaxConcurrentImports
	DefaultMaxConcurrentUploads = content.DefaultMaxConcurrentWrites
	DefaultMaxUploadBytes       = content.DefaultMaxBlobBytes
	// DefaultContentGrace is how long a blob nothing references is kept.
	DefaultContentGrace = content.DefaultGrace
	// DefaultKeepVersions is how many versions an image keeps besides its
	// current one.
	DefaultKeepVersions = servicing.DefaultKeepVersions
)

// keepaliveMinTime lets agents ping every 10 s (their gRPC keepalive is 30 s);
// gRPC's default enforcement (5 min) would close their connections.
const keepaliveMinTime = 10 * time.Second

// keepaliveTime and keepaliveTimeout make the server ping a quiet connection
// and drop it when the peer is gone, so a dead agent's stream (and a send
// blocked on it) ends in under a minute rather than gRPC's default two hours.
const (
	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 10 * time.Second
)

// maxConnectionAge is how long a client connection takes new calls at
// most; see connectionAge.
const maxConnectionAge = time.Hour

// minAgentCertValidity keeps an agent's renewal margin (a third of the
// validity) above the connection age: at the old certificate's expiry every
// connection taking new calls was opened with the renewed one.
const minAgentCertValidity = 10 * time.Second

// connectionAge is how long a client connection takes new calls: an hour,
// or a sixth of the agents' certificate validity when that is shorter, so
// a connection opened before a renewal stops taking calls long before the
// old certificate expires.
func connectionAge(agentValidity time.Duration) time.Duration {
	return min(maxConnectionAge, agentValidity/6)
}

// etcdDialTimeout bounds the first contact with etcd, so a wrong
// --etcd-endpoints fails at start instead of at the first request.
const etcdDialTimeout = 10 * time.Second

// Config configures a Server. Zero values take the defaults documented per field.
type Config struct {
	// DataDir holds the embedded etcd (DataDir/etcd) and the content library
	// (DataDir/content); default ./osvc-data.
	DataDir string
	// ObjectStore, with an Endpoint, keeps the content library's blobs in a
	// bucket of an S3-compatible object store instead of DataDir/content
	// (which then holds only temporary copies), so that replicas on one
	// etcd share them. Its MaxBlobBytes is MaxUploadBytes.
	ObjectStore s3store.Config
	// Listen is the gRPC address; default localhost:7300. Port 0 picks a free port.
	Listen string
	// EtcdEndpoints points at an external etcd cluster; empty runs etcd embedded.
	EtcdEndpoints []string
	// EtcdAuth is how the server authenticates to an external etcd.
	EtcdAuth EtcdAuth
	// Prefix is the etcd key prefix; default /osvc/.
	Prefix string
	// Logger defaults to an hclog logger on stderr named osvc-server.
	Logger hclog.Logger
	// LeaseTTL is the agents' etcd lease TTL (default 30s); HeartbeatInterval
	// what agents are told (default 10s); ShutdownTimeout bounds the graceful
	// stop (default 10s).
	LeaseTTL, HeartbeatInterval, ShutdownTimeout time.Duration
	// MaxAttempts bounds how often a run is leased before it fails; default 3.
	MaxAttempts int
	// StallAfter is how long a run in process may go without a report from
	// its agent before it is flagged stalled; default 15m.
	StallAfter time.Duration
	// RetryBackoff is how long a run that lost its agent's lease waits before
	// it is leased again, doubled per attempt up to 5m; default 10s.
	RetryBackoff time.Duration
	// MaxConcurrentImports bounds the image and update imports reading
	// files at once; default DefaultMaxConcurrentImports.
	MaxConcurrentImports int
	// MaxConcurrentUploads bounds the uploads (ContentService.Write)
	// receiving data at once; default DefaultMaxConcurrentUploads.
	MaxConcurrentUploads int
	// MaxUploadBytes is the largest blob an upload may store; default
	// DefaultMaxUploadBytes (64 GiB).
	MaxUploadBytes int64
	// MetricsListen, when set, is the host:port serving the Prometheus
	// metrics at /metrics (plain HTTP, apart from the API).
	MetricsListen string
	// WholeBlobs keeps new blobs whole instead of as chunks stored once
	// (content.Config.WholeBlobs).
	WholeBlobs bool
	// ContentGrace is how long the content collector keeps a blob nothing
	// references, after it was uploaded or last named; default
	// DefaultContentGrace (24h).
	ContentGrace time.Duration
	// FastEtcd runs the embedded etcd with short ticks, for tests and benchmarks.
	FastEtcd bool
	// TLSCertFile and TLSKeyFile are the server's certificate and key (PEM).
	// Without them the server issues itself a certificate from the
	// certificate authority it keeps in DataDir/pki, made on first start
	// (clients trust DataDir/pki/ca.crt); TLSHosts are names and addresses
	// that certificate is valid for besides localhost, the loopback
	// addresses, the host name and the Listen host.
	TLSCertFile, TLSKeyFile string
	TLSHosts                []string
	// Insecure serves plaintext, which only a loopback Listen address
	// allows; agents cannot connect then (they authenticate by certificate).
	Insecure bool
	// AgentCertValidity is how long an agent certificate is valid; default
	// pki.DefaultAgentValidity (24h). Agents renew theirs when a third is left.
	AgentCertValidity time.Duration
	// AuditRetention is how long audit events are kept; default
	// auth.DefaultAuditRetention (90 days).
	AuditRetention time.Duration
	// KeepVersions is how many versions each image keeps besides its
	// current one, for rollbacks; default DefaultKeepVersions (1).
	KeepVersions int
}

// Server is one osvc-server replica.
type Server struct {
	cfg     Config
	logger  hclog.Logger
	ready   chan struct{}
	metrics *metrics.Metrics

	mu      sync.Mutex
	addr    string
	started bool
	// etcd are the endpoints the server uses: the embedded etcd's or
	// EtcdEndpoints.
	etcd []string
}

// New validates cfg and applies the defaults; nothing starts until Run.
func New(cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		cfg.DataDir = DefaultDataDir
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if _, _, err := net.SplitHostPort(cfg.Listen); err != nil {
		return nil, fmt.Errorf("listen address %q: want host:port, e.g. localhost:7300: %w", cfg.Listen, err)
	}
	switch {
	case cfg.Insecure && !pki.Loopback(cfg.Listen):
		return nil, fmt.Errorf("--insecure serves plaintext, which is refused on %s: anyone on the network could act as any agent or administrator; listen on localhost, or drop --insecure to serve TLS", cfg.Listen)
	case cfg.Insecure && (cfg.TLSCertFile != "" || cfg.TLSKeyFile != ""):
		return nil, errors.New("--insecure and --tls-cert/--tls-key contradict each other: give one")
	case (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == ""):
		return nil, errors.New("--tls-cert and --tls-key go together: give both, or neither for a certificate from the server's own authority")
	}
	if err := cfg.EtcdAuth.check(len(cfg.EtcdEndpoints) > 0); err != nil {
		return nil, err
	}
	if err := checkObjectStore(cfg.ObjectStore); err != nil {
		return nil, err
	}
	for _, ep := range cfg.EtcdEndpoints {
		if strings.TrimSpace(ep) == "" {
			return nil, errors.New("etcd endpoints: an empty endpoint; give a comma-separated list such as http://10.0.0.1:2379")
		}
	}
	if cfg.Prefix == "" {
		cfg.Prefix = store.DefaultPrefix
	}
	if !strings.HasPrefix(cfg.Prefix, "/") {
		return nil, fmt.Errorf("etcd prefix %q: must start with '/', e.g. /osvc/", cfg.Prefix)
	}
	for _, d := range []struct {
		name  string
		value *time.Duration
		def   time.Duration
	}{
		{"lease TTL", &cfg.LeaseTTL, DefaultLeaseTTL},
		{"heartbeat interval", &cfg.HeartbeatInterval, DefaultHeartbeatInterval},
		{"shutdown timeout", &cfg.ShutdownTimeout, DefaultShutdownTimeout},
		{"stall after", &cfg.StallAfter, DefaultStallAfter},
		{"retry backoff", &cfg.RetryBackoff, DefaultRetryBackoff},
		{"content grace", &cfg.ContentGrace, DefaultContentGrace},
		{"agent certificate validity", &cfg.AgentCertValidity, pki.DefaultAgentValidity},
		{"audit retention", &cfg.AuditRetention, auth.DefaultAuditRetention},
	} {
		if *d.value < 0 {
			return nil, fmt.Errorf("%s %s: must not be negative", d.name, *d.value)
		}
		if *d.value == 0 {
			*d.value = d.def
		}
	}
	if cfg.AgentCertValidity < minAgentCertValidity {
		return nil, fmt.Errorf("agent certificate validity %s: must be at least %s", cfg.AgentCertValidity, minAgentCertValidity)
	}
	// etcd leases count whole seconds.
	if cfg.LeaseTTL < time.Second {
		return nil, fmt.Errorf("lease TTL %s: must be at least 1s", cfg.LeaseTTL)
	}
	if cfg.HeartbeatInterval >= cfg.LeaseTTL {
		return nil, fmt.Errorf("heartbeat interval %s must be shorter than the lease TTL %s, or leases expire between heartbeats",
			cfg.HeartbeatInterval, cfg.LeaseTTL)
	}
	if cfg.MaxAttempts < 0 {
		return nil, fmt.Errorf("max attempts %d: must not be negative", cfg.MaxAttempts)
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	for _, n := range []struct {
		name  string
		value *int
		def   int
	}{
		{"max concurrent imports", &cfg.MaxConcurrentImports, DefaultMaxConcurrentImports},
		{"max concurrent uploads", &cfg.MaxConcurrentUploads, DefaultMaxConcurrentUploads},
		{"keep versions", &cfg.KeepVersions, DefaultKeepVersions},
	} {
		if *n.value < 0 {
			return nil, fmt.Errorf("%s %d: must not be negative", n.name, *n.value)
		}
		if *n.value == 0 {
			*n.value = n.def
		}
	}
	if cfg.KeepVersions > servicing.MaxKeepVersions {
		return nil, fmt.Errorf("keep versions %d: at most %d", cfg.KeepVersions, servicing.MaxKeepVersions)
	}
	if cfg.MaxUploadBytes < 0 {
		return nil, fmt.Errorf("max upload bytes %d: must not be negative", cfg.MaxUploadBytes)
	}
	if cfg.MaxUploadBytes == 0 {
		cfg.MaxUploadBytes = DefaultMaxUploadBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: "osvc-server", Output: os.Stderr})
	}
	return &Server{cfg: cfg, logger: cfg.Logger, ready: make(chan struct{}), metrics: metrics.New()}, nil
}

// Ready is closed once the server listens and serves.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr is the bound address, valid once Ready is closed.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// CAFile is the certificate of the authority the server issues its own
// certificate from, which its clients trust: DataDir/pki/ca.crt; "" with
// TLSCertFile or Insecure.
func (s *Server) CAFile() string {
	if s.cfg.Insecure || s.cfg.TLSCertFile != "" {
		return ""
	}
	return filepath.Join(s.cfg.DataDir, "pki", pki.CACertFile)
}

// EtcdEndpoints are the etcd endpoints the server uses, valid once Ready
// is closed: the embedded etcd's (mutual TLS on loopback) or EtcdEndpoints.
func (s *Server) EtcdEndpoints() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.etcd)
}

// AdminTokenFile is where the server writes the first admin token of a
// new installation: DataDir/admin.token.
func (s *Server) AdminTokenFile() string { return filepath.Join(s.cfg.DataDir, auth.AdminTokenFile) }

// Run starts everything, serves until ctx ends, then stops gracefully within
// ShutdownTimeout and forcefully after it. It returns nil after a shutdown
// asked for by ctx, and the first error of any part otherwise. A Server runs
// once.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	started := s.started
	s.started = true
	s.mu.Unlock()
	if started {
		return errors.New("osvc-server: Run was already called; make a new Server with New")
	}
	// Listen first: a taken port fails before anything else starts, and once
	// Ready is closed clients can connect.
	lis, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w; choose another address with --listen", s.cfg.Listen, err)
	}
	defer lis.Close()
	addr := lis.Addr().String()
	s.mu.Lock()
	s.addr = addr
	s.mu.Unlock()
	var metricsLis net.Listener
	if s.cfg.MetricsListen != "" {
		if metricsLis, err = net.Listen("tcp", s.cfg.MetricsListen); err != nil {
			return fmt.Errorf("listen on %s: %w; choose another address with --metrics-listen", s.cfg.MetricsListen, err)
		}
		defer metricsLis.Close()
	}

	endpoints := s.cfg.EtcdEndpoints
	etcdTLS := (*tls.Config)(nil)
	if len(endpoints) == 0 {
		// The embedded etcd serves mutual TLS on loopback: no other process
		// on the machine reads or writes the store through its port.
		info, err := embeddedEtcdTLS(filepath.Join(s.cfg.DataDir, "pki", "etcd"))
		if err != nil {
			return err
		}
		if etcdTLS, err = info.ClientConfig(); err != nil {
			return fmt.Errorf("embedded etcd TLS: %w", err)
		}
		emb, err := store.StartEmbedded(ctx, store.EmbeddedConfig{
			Dir:       filepath.Join(s.cfg.DataDir, "etcd"),
			Logger:    s.logger,
			FastTicks: s.cfg.FastEtcd,
			TLS:       info,
		})
		if err != nil {
			return fmt.Errorf("start embedded etcd: %w", err)
		}
		defer func() {
			if err := emb.Close(); err != nil {
				s.logger.Warn("embedded etcd did not stop cleanly", "error", err)
			}
		}()
		endpoints = emb.Endpoints()
	}
	s.mu.Lock()
	s.etcd = endpoints
	s.mu.Unlock()
	client, err := s.connectEtcd(ctx, endpoints, etcdTLS)
	if err != nil {
		return err
	}
	defer client.Close()

	st, err := store.New(store.Config{Client: client, Prefix: s.cfg.Prefix, Logger: s.logger})
	if err != nil {
		return err
	}
	// The authority is shared through etcd: every replica issues and
	// trusts the same agent certificates.
	ca, created, err := sharedAuthority(ctx, st, filepath.Join(s.cfg.DataDir, "pki"))
	if err != nil {
		return err
	}
	if created {
		s.logger.Info("made a certificate authority: clients trust its certificate, agents get theirs from it", "ca", ca.CertPath, "fingerprint", ca.Fingerprint())
	}
	creds, err := s.transportCredentials(ca)
	if err != nil {
		return err
	}
	var blobs, chunkStore content.Blobs
	if s.cfg.ObjectStore.Endpoint != "" {
		oc := s.cfg.ObjectStore
		oc.MaxBlobBytes, oc.Logger = s.cfg.MaxUploadBytes, s.logger
		if blobs, err = s3store.New(ctx, oc); err != nil {
			return fmt.Errorf("content library: %w", err)
		}
		// The chunks go to the same bucket, under a prefix of their own.
		oc.Prefix += s3store.ChunksPrefix
		if chunkStore, err = s3store.New(ctx, oc); err != nil {
			return fmt.Errorf("content library: chunks: %w", err)
		}
	}
	lib, err := content.New(content.Config{
		Dir: filepath.Join(s.cfg.DataDir, "content"), Blobs: blobs, Chunks: chunkStore, WholeBlobs: s.cfg.WholeBlobs, Store: st, Logger: s.logger,
		MaxBlobBytes: s.cfg.MaxUploadBytes, MaxConcurrentWrites: s.cfg.MaxConcurrentUploads,
	})
	if err != nil {
		return fmt.Errorf("content library: %w", err)
	}
	s.logger.Info("content library", "blobs", lib.Blobs())
	cat, err := catalog.New(catalog.Config{Store: st, Library: lib, Logger: s.logger, MaxConcurrentImports: s.cfg.MaxConcurrentImports})
	if err != nil {
		return err
	}
	access := auth.NewAccess(st, ca, s.cfg.AgentCertValidity)
	if path, err := access.Bootstrap(ctx, s.cfg.DataDir); err != nil {
		return err
	} else if path != "" {
		s.logger.Info("wrote the first admin token: osvcctl here uses it; keep it secret, make others with osvcctl token create", "file", path)
	}
	audit := auth.NewAudit(st, s.cfg.AuditRetention, s.logger.Named("audit"))
	serverID := serverID(addr)
	parts, err := s.wireServicing(ctx, st, cat, lib, access, serverID)
	if err != nil {
		return err
	}
	authorizer := auth.NewAuthorizer(access, audit, parts.resolver, s.logger)
	collector, err := content.NewCollector(content.CollectorConfig{
		Store: st, Library: lib, Logger: s.logger, ServerID: serverID, Grace: s.cfg.ContentGrace,
	})
	if err != nil {
		return err
	}
	loops := append(parts.loops, loop{name: "content collector", run: collector.Run},
		loop{name: "agent revocations", run: authorizer.Run}, loop{name: "audit retention", run: audit.Run},
		loop{name: "run metrics", run: func(ctx context.Context) error {
			return s.metrics.FollowRuns(ctx, st, serverID, s.logger.Named("metrics"))
		}})
	if metricsLis != nil {
		loops = append(loops, loop{name: "metrics listener", run: func(ctx context.Context) error { return s.metrics.Serve(ctx, metricsLis) }})
		s.logger.Info("serving metrics", "addr", "http://"+metricsLis.Addr().String()+"/metrics")
	}

	// runCtx ends the background loops and the open watches; it ends with ctx
	// or when any part fails (errgroup cancels it on the first error).
	g, runCtx := errgroup.WithContext(ctx)
	gs := grpc.NewServer(append(s.serverOptions(runCtx, authorizer), grpc.Creds(creds))...)
	healthSrv := health.NewServer()
	osvcv1.RegisterAccessServiceServer(gs, api.NewAccessServer(access, audit, s.logger))
	osvcv1.RegisterContentServiceServer(gs, api.NewContentServer(lib, s.logger))
	parts.register(gs)
	healthpb.RegisterHealthServer(gs, healthSrv)
	// Reflection answers with the API's comments: grpcurl describe shows them.
	if err := apidesc.RegisterReflection(gs); err != nil {
		return err
	}
	for name := range gs.GetServiceInfo() {
		healthSrv.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	healthSrv.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)

	g.Go(func() error {
		if err := gs.Serve(lis); err != nil {
			return fmt.Errorf("serve gRPC on %s: %w", addr, err)
		}
		return nil
	})
	for _, l := range loops {
		g.Go(func() error {
			err := l.run(runCtx)
			switch {
			case runCtx.Err() != nil && (err == nil || errors.Is(err, context.Canceled)):
				return nil
			case err == nil:
				return fmt.Errorf("%s stopped while the server runs", l.name)
			default:
				return fmt.Errorf("%s: %w", l.name, err)
			}
		})
	}

	etcdDesc := "embedded"
	if len(s.cfg.EtcdEndpoints) > 0 {
		etcdDesc = strings.Join(s.cfg.EtcdEndpoints, ",")
	}
	s.logger.Info("osvc-server serving", "addr", addr, "etcd", etcdDesc, "data_dir", s.cfg.DataDir, "server_id", serverID)
	close(s.ready)

	<-runCtx.Done()
	s.logger.Info("osvc-server stopping", "timeout", s.cfg.ShutdownTimeout)
	healthSrv.Shutdown()
	s.gracefulStop(gs)
	if err := g.Wait(); err != nil {
		return err
	}
	s.logger.Info("osvc-server stopped")
	return nil
}

// embeddedEtcdTLS issues the embedded etcd's certificate from an
// authority of its own, kept in dir (not the one of agents: etcd trusts
// every certificate of the authority it is given, and an agent's must not
// open the store), writes it there (0600) and returns the TLS settings of
// etcd and of its client.
func embeddedEtcdTLS(dir string) (*transport.TLSInfo, error) {
	ca, _, err := pki.EnsureCA(filepath.Join(dir, "ca"), time.Now())
	if err != nil {
		return nil, fmt.Errorf("embedded etcd TLS: %w", err)
	}
	certPEM, keyPEM, err := ca.EtcdCertificate(time.Now())
	if err != nil {
		return nil, err
	}
	certFile, keyFile, err := pki.WriteKeyPair(dir, "etcd", certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd TLS: %w", err)
	}
	return &transport.TLSInfo{CertFile: certFile, KeyFile: keyFile, TrustedCAFile: ca.CertPath}, nil
}

// connectEtcd dials etcd and checks it answers, so a wrong endpoint fails now,
// with the endpoint named, rather than at the first request.
func (s *Server) connectEtcd(ctx context.Context, endpoints []string, embeddedTLS *tls.Config) (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: etcdDialTimeout,
		// The client's own zap logs repeat what our errors say.
		Logger:      zap.NewNop(),
		Context:     ctx,
		TLS:         embeddedTLS,
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(s.metrics.EtcdInterceptor())},
	}
	if len(s.cfg.EtcdEndpoints) > 0 {
		if err := s.cfg.EtcdAuth.apply(&cfg); err != nil {
			return nil, err
		}
	}
	client, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %s: %w", strings.Join(endpoints, ","), err)
	}
	checkCtx, cancel := context.WithTimeout(ctx, etcdDialTimeout)
	defer cancel()
	if _, err := client.Get(checkCtx, s.cfg.Prefix, clientv3.WithCountOnly()); err != nil {
		client.Close()
		return nil, fmt.Errorf("etcd at %s does not answer (%w); check --etcd-endpoints and that etcd is running",
			strings.Join(endpoints, ","), err)
	}
	return client, nil
}

// gracefulStop lets calls in flight finish for up to ShutdownTimeout, then
// closes every connection.
func (s *Server) gracefulStop(gs *grpc.Server) {
	done := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(done)
	}()
	timer := time.NewTimer(s.cfg.ShutdownTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		s.logger.Warn("calls still running after the shutdown timeout; closing them", "timeout", s.cfg.ShutdownTimeout)
		gs.Stop()
		<-done
	}
}

// errShuttingDown ends the watches and downloads still open when the server stops.
var errShuttingDown = status.Error(codes.Unavailable, "osvc-server is shutting down; call again to resume")

// transportCredentials are TLS with the configured certificate or one
// issued from the server's own authority (made on first start), or
// plaintext when Insecure.
func (s *Server) transportCredentials(ca *pki.CA) (credentials.TransportCredentials, error) {
	if s.cfg.Insecure {
		s.logger.Warn("serving plaintext (--insecure): only this machine can connect", "listen", s.cfg.Listen)
		return insecure.NewCredentials(), nil
	}
	if s.cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(s.cfg.TLSCertFile, s.cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("TLS certificate --tls-cert %s, --tls-key %s: %w", s.cfg.TLSCertFile, s.cfg.TLSKeyFile, err)
		}
		s.logger.Info("serving TLS with the given certificate", "cert", s.cfg.TLSCertFile)
		return credentials.NewTLS(pki.ClientAuthConfig(pki.ServerConfig(cert), ca.Cert)), nil
	}
	now := time.Now()
	hosts := pki.ServerHosts(s.cfg.Listen, s.cfg.TLSHosts)
	cert, err := ca.ServerCertificate(hosts, now)
	if err != nil {
		return nil, err
	}
	s.logger.Info("serving TLS with a certificate from the server's authority", "ca", ca.CertPath, "fingerprint", ca.Fingerprint(), "hosts", strings.Join(hosts, ","))
	return credentials.NewTLS(pki.ClientAuthConfig(pki.ServerConfig(cert), ca.Cert)), nil
}

func (s *Server) serverOptions(shutdown context.Context, authorizer *auth.Authorizer) []grpc.ServerOption {
	opts := append([]grpc.ServerOption{}, transfer.ServerOptions()...)
	logger := s.logger.Named("grpc")
	return append(opts,
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             keepaliveMinTime,
			PermitWithoutStream: true,
		}),
		// MaxConnectionAge makes clients open a new connection (a new TLS
		// handshake, with an agent's renewed certificate) for new calls;
		// streams open on the old one go on.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: keepaliveTime, Timeout: keepaliveTimeout, MaxConnectionAge: connectionAge(s.cfg.AgentCertValidity)}),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			start := time.Now()
			resp, err := handler(ctx, req)
			logCall(logger, info.FullMethod, start, err)
			return resp, err
		}, authorizer.Unary),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			start := time.Now()
			err := handler(srv, ss)
			logCall(logger, info.FullMethod, start, err)
			return err
		}, endOnShutdown(shutdown), authorizer.Stream, s.metrics.ContentInterceptor()),
	)
}

// endOnShutdown ends the context of osvc's server-streaming calls once
// shutdown ends, with errShuttingDown as its cause: a run watch lasts as long
// as its client wants, so GracefulStop would wait for it until
// ShutdownTimeout. The watch's client gets Unavailable and resumes from its
// last sequence. Agent streams end through agentsvc and uploads are let finish.
// Health watches are left alone so that they see NOT_SERVING; ending them
// here would race with that last message.
func endOnShutdown(shutdown context.Context) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if info.IsClientStream || !strings.HasPrefix(info.FullMethod, "/osvc.") {
			return handler(srv, ss)
		}
		// The handler tells its client why: a download that completes anyway
		// must not end in an error.
		ctx, cancel := context.WithCancelCause(ss.Context())
		defer cancel(nil)
		stop := context.AfterFunc(shutdown, func() { cancel(errShuttingDown) })
		defer stop()
		return handler(srv, &streamWithContext{ServerStream: ss, ctx: ctx})
	}
}

// streamWithContext is a ServerStream whose handler sees ctx.
type streamWithContext struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *streamWithContext) Context() context.Context { return s.ctx }

// logCall logs every call at debug level, and at warn level the errors that
// are the server's fault rather than the caller's.
func logCall(logger hclog.Logger, method string, start time.Time, err error) {
	code := status.Code(err)
	switch code {
	case codes.Internal, codes.Unknown, codes.DataLoss:
		logger.Warn("call failed", "method", method, "code", code, "duration", time.Since(start), "error", err)
	default:
		if logger.IsDebug() {
			logger.Debug("call", "method", method, "code", code, "duration", time.Since(start))
		}
	}
}

// checkObjectStore refuses object store settings that cannot work, before
// anything starts; s3store.New checks the rest against the store itself.
func checkObjectStore(c s3store.Config) error {
	if c.Endpoint == "" {
		if c != (s3store.Config{}) {
			return errors.New("--s3-bucket, --s3-region, --s3-prefix, --s3-ca-file, --s3-path-style, --s3-access-key-id and --s3-secret-key-file are for an object store: give --s3-endpoint too")
		}
		return nil
	}
	if c.Bucket == "" {
		return fmt.Errorf("object store %s: give the bucket that holds the content library with --s3-bucket", c.Endpoint)
	}
	return s3store.CheckPrefix(c.Prefix)
}

// serverID names this replica in agent presence records and elections.
func serverID(addr string) string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown-host"
	}
	return host + "/" + addr
}
