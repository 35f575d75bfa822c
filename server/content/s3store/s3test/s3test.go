// Package s3test runs a real S3-compatible server for tests and benchmarks:
// versitygw, serving a temporary folder on a loopback port the OS chose.
// deploy/install-deps.sh installs it (the version pinned in Module); a test
// that needs it fails, saying so, when it is missing.
package s3test

import (
	"context"
	"errors"
	"fmt"
	"go/build"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/server/content/s3store"
)

// Module is the S3 server the tests run, as deploy/install-deps.sh installs it.
const Module = "github.com/versity/versitygw/cmd/versitygw@v1.8.0"

// Binary is its executable's name.
const Binary = "versitygw"

// The server's root credentials; it only listens on loopback.
const (
	AccessKeyID     = "osvc-test"
	SecretAccessKey = "osvc-test-secret-key"
)

// startTimeout bounds waiting for the server to answer.
const startTimeout = 30 * time.Second

// Server is a running versitygw.
type Server struct {
	cmd      *exec.Cmd
	exited   chan struct{}
	endpoint string
	caFile   string
	client   *minio.Client
}

// Options tune Start.
type Options struct {
	// TLS serves https with a certificate for the loopback addresses from
	// an authority made in the folder; CAFile is then its certificate.
	TLS bool
}

// FindBinary returns the path of versitygw: where go install puts it
// ($GOBIN, $GOPATH/bin), as deploy/install-deps.sh does at the pinned
// version, else in PATH.
func FindBinary() (string, error) {
	dirs := []string{os.Getenv("GOBIN")}
	for _, p := range filepath.SplitList(build.Default.GOPATH) {
		dirs = append(dirs, filepath.Join(p, "bin"))
	}
	for _, d := range dirs {
		if d == "" {
			continue
		}
		path := filepath.Join(d, Binary)
		if info, err := os.Stat(path); err == nil && info.Mode().IsRegular() {
			return path, nil
		}
	}
	if path, err := exec.LookPath(Binary); err == nil {
		return path, nil
	}
	return "", fmt.Errorf("%s, the S3-compatible server the object store tests run, is not installed (not in $GOBIN, $GOPATH/bin or PATH): run deploy/install-deps.sh, or go install %s", Binary, Module)
}

// Start runs versitygw serving dir (its buckets are folders of dir) until
// Close, and returns once it answers.
func Start(ctx context.Context, dir string, opts Options) (*Server, error) {
	bin, err := FindBinary()
	if err != nil {
		return nil, err
	}
	var tlsArgs []string
	s := &Server{}
	scheme := "http"
	if opts.TLS {
		ca, _, err := pki.EnsureCA(filepath.Join(dir, "pki"), time.Now())
		if err != nil {
			return nil, err
		}
		certPEM, keyPEM, err := ca.EtcdCertificate(time.Now())
		if err != nil {
			return nil, err
		}
		cert, key, err := pki.WriteKeyPair(filepath.Join(dir, "pki"), "s3", certPEM, keyPEM)
		if err != nil {
			return nil, err
		}
		tlsArgs = []string{"--cert", cert, "--key", key}
		s.caFile, scheme = ca.CertPath, "https"
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	// A port the OS just handed out may be taken again before versitygw
	// binds it: try another then.
	for attempt := 0; ; attempt++ {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		args := append([]string{"--access", AccessKeyID, "--secret", SecretAccessKey, "--port", addr, "--quiet"}, tlsArgs...)
		cmd := exec.Command(bin, append(args, "posix", data)...)
		dieWithParent(cmd)
		var out strings.Builder
		log := &syncWriter{w: &out}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start %s: %w", bin, err)
		}
		s.cmd, s.exited, s.endpoint = cmd, make(chan struct{}), scheme+"://"+addr
		go func() {
			cmd.Wait()
			close(s.exited)
		}()
		err = s.waitReady(ctx)
		if err == nil {
			return s, nil
		}
		s.Close()
		if attempt == 2 || ctx.Err() != nil {
			return nil, fmt.Errorf("%s did not start: %w\n%s", bin, err, out.String())
		}
	}
}

// syncWriter serializes the writes of the server's two output streams.
type syncWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// waitReady polls the server until it lists its buckets.
func (s *Server) waitReady(ctx context.Context) error {
	client, err := s.newClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := client.ListBuckets(ctx)
		if err == nil {
			s.client = client
			return nil
		}
		select {
		case <-s.exited:
			return errors.New("it exited")
		case <-ctx.Done():
			return fmt.Errorf("no answer within %s: %w", startTimeout, err)
		case <-tick.C:
		}
	}
}

func (s *Server) newClient() (*minio.Client, error) {
	secure := strings.HasPrefix(s.endpoint, "https://")
	transport, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, err
	}
	if s.caFile != "" {
		cfg, err := pki.ClientConfig("127.0.0.1", pki.ClientOptions{CAFile: s.caFile})
		if err != nil {
			return nil, err
		}
		transport.TLSClientConfig = cfg
	}
	return minio.New(s.Host(), &minio.Options{
		Creds:        credentials.NewStaticV4(AccessKeyID, SecretAccessKey, ""),
		Secure:       secure,
		Transport:    transport,
		BucketLookup: minio.BucketLookupPath,
	})
}

// Endpoint is the server's URL.
func (s *Server) Endpoint() string { return s.endpoint }

// Host is the server's host:port.
func (s *Server) Host() string {
	return strings.TrimPrefix(strings.TrimPrefix(s.endpoint, "http://"), "https://")
}

// CAFile is the authority of the server's certificate, with Options.TLS.
func (s *Server) CAFile() string { return s.caFile }

// Client is a client of the server with its root credentials.
func (s *Server) Client() *minio.Client { return s.client }

// StoreConfig configures an s3store.Store on bucket of the server, its
// secret key in a file it writes in dir.
func (s *Server) StoreConfig(dir, bucket string) (s3store.Config, error) {
	secret := filepath.Join(dir, "s3-secret-key")
	if err := os.WriteFile(secret, []byte(SecretAccessKey+"\n"), 0o600); err != nil {
		return s3store.Config{}, err
	}
	return s3store.Config{
		Endpoint: s.endpoint, Bucket: bucket, CAFile: s.caFile, PathStyle: true,
		AccessKeyID: AccessKeyID, SecretKeyFile: secret,
	}, nil
}

// Keys lists the keys of bucket's objects, and of its uploads in progress
// as "upload <key>", sorted.
func (s *Server) Keys(ctx context.Context, bucket string) ([]string, error) {
	var out []string
	for obj := range s.client.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		if obj.Err != nil {
			return nil, obj.Err
		}
		out = append(out, obj.Key)
	}
	for up := range s.client.ListIncompleteUploads(ctx, bucket, "", true) {
		if up.Err != nil {
			return nil, up.Err
		}
		out = append(out, "upload "+up.Key)
	}
	slices.Sort(out)
	return out, nil
}

// MakeBucket makes a bucket.
func (s *Server) MakeBucket(ctx context.Context, name string) error {
	return s.client.MakeBucket(ctx, name, minio.MakeBucketOptions{})
}

// Close stops the server.
func (s *Server) Close() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.exited
}

var (
	once     sync.Once
	shared   *Server
	startErr error
	tempDir  string
	buckets  atomic.Int64
)

// Shared is a server for the whole test binary, started at the first call;
// TestMain calls Close to stop it.
func Shared(t testing.TB) *Server {
	t.Helper()
	once.Do(func() {
		tempDir, startErr = os.MkdirTemp("", "osvc-s3test-")
		if startErr != nil {
			return
		}
		shared, startErr = Start(context.Background(), tempDir, Options{})
	})
	if startErr != nil {
		t.Fatalf("s3test: %v", startErr)
	}
	return shared
}

// Close stops the shared server and removes its folder.
func Close() {
	if shared != nil {
		shared.Close()
	}
	if tempDir != "" {
		os.RemoveAll(tempDir)
	}
}

// NewStore returns a store on a bucket of its own on the shared server,
// with cfg's part size and largest blob.
func NewStore(t testing.TB, cfg s3store.Config) (*s3store.Store, string) {
	t.Helper()
	bucket := NewBucket(t)
	c, err := Shared(t).StoreConfig(t.TempDir(), bucket)
	if err != nil {
		t.Fatal(err)
	}
	c.PartSize, c.MaxBlobBytes, c.Prefix, c.Logger = cfg.PartSize, cfg.MaxBlobBytes, cfg.Prefix, cfg.Logger
	st, err := s3store.New(context.Background(), c)
	if err != nil {
		t.Fatalf("s3test: %v", err)
	}
	return st, bucket
}

// NewBucket makes a bucket of its own for the test on the shared server.
func NewBucket(t testing.TB) string {
	t.Helper()
	s := Shared(t)
	name := fmt.Sprintf("test-%d-%d", os.Getpid(), buckets.Add(1))
	if err := s.MakeBucket(context.Background(), name); err != nil {
		t.Fatalf("s3test: make bucket %s: %v", name, err)
	}
	return name
}
