// Command osvc-server runs the osvc control plane: the gRPC API, the
// scheduler and the agents' streams, with etcd embedded unless
// --etcd-endpoints points at a cluster.
package main

import (
	"context"

	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/osvc/osvc/pkg/buildinfo"
	"github.com/osvc/osvc/pkg/cmdline"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/server"
	"github.com/osvc/osvc/server/auth"
	"github.com/osvc/osvc/server/content/s3store"
)

func main() { os.Exit(realMain()) }

func realMain() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "osvc-server:", err)
		return 1
	}
	return 0
}

// run parses args, starts the server and serves until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("osvc-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg       server.Config
		endpoints string
		tlsHosts  string
		pprofAddr string
	)
	fs.StringVar(&cfg.DataDir, "data-dir", server.DefaultDataDir, "directory of the embedded etcd (etcd/) and the content library (content/)")
	fs.StringVar(&cfg.Listen, "listen", server.DefaultListen, "gRPC listen address, host:port")
	fs.StringVar(&endpoints, "etcd-endpoints", "", "comma-separated etcd endpoints, e.g. http://10.0.0.1:2379; empty runs etcd embedded in --data-dir")
	fs.StringVar(&cfg.EtcdAuth.CAFile, "etcd-ca-file", "", "PEM `FILE` of the authority of the external etcd's certificates (https:// endpoints)")
	fs.StringVar(&cfg.EtcdAuth.CertFile, "etcd-cert-file", "", "PEM `FILE` of the server's client certificate for etcd (etcd --client-cert-auth)")
	fs.StringVar(&cfg.EtcdAuth.KeyFile, "etcd-key-file", "", "PEM `FILE` of the key of --etcd-cert-file")
	fs.StringVar(&cfg.EtcdAuth.Username, "etcd-username", "", "etcd user the server authenticates as")
	fs.StringVar(&cfg.EtcdAuth.PasswordFile, "etcd-password-file", "", "`FILE` holding the etcd user's password; default $"+server.EtcdPasswordEnv+"; never on the command line")
	fs.StringVar(&cfg.Prefix, "etcd-prefix", "/osvc/", "prefix of every etcd key")
	fs.StringVar(&cfg.ObjectStore.Endpoint, "s3-endpoint", "", "`URL` of an S3-compatible object store (https://s3.example.com, http://10.0.0.5:9000) keeping the content library's blobs, for replicas sharing them; empty keeps them in --data-dir/content")
	fs.StringVar(&cfg.ObjectStore.Bucket, "s3-bucket", "", "the object store's bucket holding the content library (made beforehand)")
	fs.StringVar(&cfg.ObjectStore.Region, "s3-region", "", "the bucket's region; default "+s3store.DefaultRegion)
	fs.StringVar(&cfg.ObjectStore.Prefix, "s3-prefix", "", "key prefix of the content library in the bucket, ending with '/', e.g. osvc/")
	fs.StringVar(&cfg.ObjectStore.CAFile, "s3-ca-file", "", "PEM `FILE` of the authority of the object store's certificate, trusted instead of the system's roots")
	fs.BoolVar(&cfg.ObjectStore.PathStyle, "s3-path-style", false, "name the bucket in the URL's path (https://host/bucket/key), as most stores but Amazon S3 want")
	fs.StringVar(&cfg.ObjectStore.AccessKeyID, "s3-access-key-id", "", "the object store's access key id; default $"+s3store.AccessKeyIDEnv+" or the shared credentials file (~/.aws/credentials)")
	fs.StringVar(&cfg.ObjectStore.SecretKeyFile, "s3-secret-key-file", "", "`FILE` holding the secret key of --s3-access-key-id; default $"+s3store.SecretAccessKeyEnv+"; never on the command line")
	var logging cmdline.Logging
	logging.Register(fs)
	configFile := fs.String(cmdline.ConfigFlag, "", "YAML `FILE` of settings, the flags' names as keys (e.g. data-dir: /var/lib/osvc); the command line and OSVC_<FLAG> environment variables (OSVC_DATA_DIR) win over it")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", server.DefaultLeaseTTL, "agent lease TTL: an agent silent this long is LOST and its runs are re-queued")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", server.DefaultHeartbeatInterval, "how often agents send heartbeats")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", server.DefaultShutdownTimeout, "how long calls in flight may finish on shutdown")
	fs.IntVar(&cfg.MaxAttempts, "max-attempts", server.DefaultMaxAttempts, "how often a run is leased before it fails")
	fs.DurationVar(&cfg.StallAfter, "stall-after", server.DefaultStallAfter, "flag a run in process as stalled when its agent reports no progress this long")
	fs.IntVar(&cfg.MaxConcurrentImports, "max-concurrent-imports", server.DefaultMaxConcurrentImports,
		"image and update imports reading files at once; more wait for their turn while their deadline allows")
	fs.IntVar(&cfg.MaxConcurrentUploads, "max-concurrent-uploads", server.DefaultMaxConcurrentUploads,
		"uploads receiving data at once; more wait for their turn while their deadline allows")
	fs.Int64Var(&cfg.MaxUploadBytes, "max-upload-bytes", server.DefaultMaxUploadBytes, "largest blob an upload may store, in bytes")
	contentChunks := fs.Bool("content-chunks", true, "store blobs of 8 MiB or more as their chunks, each chunk once for every blob holding it, so the versions of an image share what they have in common; false keeps new blobs whole, as files a client on the library's volume may link")
	fs.DurationVar(&cfg.ContentGrace, "content-grace", server.DefaultContentGrace,
		"how long a blob that no image version, update or run in progress references is kept after it was uploaded or last named")
	fs.IntVar(&cfg.KeepVersions, "keep-versions", server.DefaultKeepVersions,
		"how many versions each image keeps besides its current one, for rollbacks (1 to 100); a run's new version pushes out the oldest, whose files the content collector removes")
	fs.DurationVar(&cfg.RetryBackoff, "retry-backoff", server.DefaultRetryBackoff, "wait before leasing a run again after its agent's lease ended; doubles per attempt, at most 5m")
	fs.StringVar(&cfg.TLSCertFile, "tls-cert", "", "the server's TLS certificate (PEM); empty: one issued from the authority the server keeps in --data-dir/pki, whose ca.crt clients trust")
	fs.StringVar(&cfg.TLSKeyFile, "tls-key", "", "the key of --tls-cert (PEM)")
	fs.StringVar(&tlsHosts, "tls-hosts", "", "comma-separated names and addresses the server's own certificate is valid for, besides localhost, the loopback addresses, the host name and the --listen host")
	fs.BoolVar(&cfg.Insecure, "insecure", false, "serve plaintext instead of TLS; refused unless --listen is a loopback address; agents cannot connect then (they authenticate by certificate)")
	fs.DurationVar(&cfg.AgentCertValidity, "agent-cert-validity", pki.DefaultAgentValidity, "how long an agent's certificate is valid; agents renew theirs when a third is left, and one offline past its expiry enrolls anew")
	fs.DurationVar(&cfg.AuditRetention, "audit-retention", auth.DefaultAuditRetention, "how long audit events are kept")
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", "", "serve Prometheus metrics at http://`HOST:PORT`/metrics (plain HTTP, no secrets; see the README for the names); off by default")
	fs.StringVar(&pprofAddr, "pprof-listen", "", "serve Go's profiles (net/http/pprof) on this loopback `HOST:PORT`, for diagnosing CPU and memory; off by default")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: osvc-server [flags]")
		fmt.Fprintln(fs.Output(), "Runs the osvc control plane. With no flags: embedded etcd and content library in ./osvc-data, gRPC on localhost:7300.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *showVersion {
		fmt.Fprintln(stdout, "osvc-server "+buildinfo.Read().String())
		return nil
	}
	if err := cmdline.Apply(cmdline.Std(fs), *configFile, os.Getenv); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q; osvc-server takes flags only (see -h)", fs.Args())
	}
	if cfg.KeepVersions < 1 {
		return fmt.Errorf("--keep-versions %d: keep at least 1 version besides the current one, the one a rollback returns to", cfg.KeepVersions)
	}
	cfg.WholeBlobs = !*contentChunks
	for _, ep := range strings.Split(endpoints, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			cfg.EtcdEndpoints = append(cfg.EtcdEndpoints, ep)
		}
	}
	for _, h := range strings.Split(tlsHosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			cfg.TLSHosts = append(cfg.TLSHosts, h)
		}
	}
	logger, err := logging.Logger("osvc-server", stderr)
	if err != nil {
		return err
	}
	cfg.Logger = logger
	logger.Info("osvc-server starting", "version", buildinfo.Read().Short())

	srv, err := server.New(cfg)
	if err != nil {
		return err
	}
	if pprofAddr != "" {
		stop, err := servePprof(pprofAddr, cfg.Logger)
		if err != nil {
			return err
		}
		defer stop()
	}
	return srv.Run(ctx)
}

// servePprof serves Go's profiles on addr, a loopback address only: they
// show the server's memory, which holds secrets.
func servePprof(addr string, logger hclog.Logger) (stop func(), err error) {
	if !pki.Loopback(addr) {
		return nil, fmt.Errorf("--pprof-listen %q: give a loopback address (127.0.0.1:PORT); profiles show the server's memory", addr)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--pprof-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Warn("pprof server stopped", "error", err)
		}
	}()
	logger.Info("serving Go profiles", "addr", lis.Addr().String())
	return func() { _ = hs.Close() }, nil
}
