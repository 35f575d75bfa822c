package pki_test

import (
	"context"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/osvc/osvc/pkg/pki"
)

func TestEnsureCAMakesAPrivateAuthorityOnceAndKeepsIt(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "pki")
	ca, created, err := pki.EnsureCA(dir, time.Now())
	if err != nil || !created {
		t.Fatalf("EnsureCA = %v, created %v; want a new authority", err, created)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, pki.CAKeyFile): 0o600} {
		info, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Mode().Perm(); got != want {
			t.Errorf("%s has mode %s, want %s", path, got, want)
		}
	}
	again, created, err := pki.EnsureCA(dir, time.Now())
	if err != nil || created {
		t.Fatalf("EnsureCA again = %v, created %v; want the same authority loaded", err, created)
	}
	if again.Fingerprint() != ca.Fingerprint() {
		t.Errorf("fingerprint %s after a restart, want %s", again.Fingerprint(), ca.Fingerprint())
	}
	if fp := ca.Fingerprint(); !strings.HasPrefix(fp, "SHA256:") || len(fp) != len("SHA256:")+32*3-1 {
		t.Errorf("fingerprint %q, want SHA256: and 32 colon-separated bytes as openssl prints them", fp)
	}
}

func TestEnsureCARefusesAnExposedOrHalfAuthority(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "pki")
	if _, _, err := pki.EnsureCA(dir, time.Now()); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, pki.CAKeyFile)
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pki.EnsureCA(dir, time.Now()); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("EnsureCA with a key others can read = %v, want a refusal saying chmod 600", err)
	}
	if err := os.Remove(key); err != nil {
		t.Fatal(err)
	}
	if _, created, err := pki.EnsureCA(dir, time.Now()); err == nil || created {
		t.Errorf("EnsureCA with the key missing = %v (created %v), want a refusal, not a new authority", err, created)
	}
}

func TestServersStartingTogetherShareOneAuthority(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "pki")
	var wg sync.WaitGroup
	fps := make([]string, 8)
	for i := range fps {
		wg.Go(func() {
			ca, _, err := pki.EnsureCA(dir, time.Now())
			if err != nil {
				t.Error(err)
				return
			}
			fps[i] = ca.Fingerprint()
		})
	}
	wg.Wait()
	for _, fp := range fps {
		if fp != fps[0] {
			t.Fatalf("fingerprints %q: want one authority", fps)
		}
	}
}

func TestTheServerCertificateIsValidForItsHostsOnly(t *testing.T) {
	t.Parallel()
	ca, _, err := pki.EnsureCA(filepath.Join(t.TempDir(), "pki"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCertificate(pki.ServerHosts("10.1.2.3:7300", []string{"osvc.example.internal"}), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	for _, tt := range []struct {
		host string
		ok   bool
	}{
		{"localhost", true}, {"127.0.0.1", true}, {"::1", true}, {"10.1.2.3", true}, {"osvc.example.internal", true},
		{"evil.example", false}, {"10.1.2.4", false},
	} {
		_, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: tt.host, Roots: roots})
		if (err == nil) != tt.ok {
			t.Errorf("verify for %s: %v, want ok=%v", tt.host, err, tt.ok)
		}
	}
	// Another authority's clients do not trust it.
	other, _, err := pki.EnsureCA(filepath.Join(t.TempDir(), "pki"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	otherRoots := x509.NewCertPool()
	otherRoots.AddCert(other.Cert)
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: "localhost", Roots: otherRoots}); err == nil {
		t.Error("another authority's roots verify the server's certificate")
	}
}

func TestLoopback(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]bool{
		"localhost:7300": true, "127.0.0.1:7300": true, "127.9.9.9:1": true, "[::1]:7300": true, "LOCALHOST:1": true,
		":7300": false, "0.0.0.0:7300": false, "[::]:7300": false, "10.0.0.1:7300": false, "osvc.example.internal:7300": false,
	} {
		if got := pki.Loopback(addr); got != want {
			t.Errorf("Loopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestPlaintextIsRefusedToAnotherMachine(t *testing.T) {
	t.Parallel()
	if _, err := pki.ClientCredentials("10.0.0.1:7300", pki.ClientOptions{Insecure: true}); err == nil {
		t.Error("plaintext to 10.0.0.1 allowed")
	}
	if _, err := pki.ClientCredentials("127.0.0.1:7300", pki.ClientOptions{Insecure: true}); err != nil {
		t.Errorf("plaintext to 127.0.0.1: %v", err)
	}
}

// serve runs a gRPC health server on loopback with a certificate for hosts
// from ca, until the test ends, and returns its address.
func serve(t *testing.T, ca *pki.CA, hosts []string) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCertificate(hosts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	creds, err := pki.ServerCredentials(cert)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(creds))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// check makes a health call to addr with creds.
func check(addr string, creds credentials.TransportCredentials) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func newCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, _, err := pki.EnsureCA(filepath.Join(t.TempDir(), "pki"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// A real gRPC server with a certificate from one authority: a client
// trusting it gets an answer, one trusting another authority does not.
func TestOnlyClientsTrustingTheAuthorityConnect(t *testing.T) {
	t.Parallel()
	ca, other := newCA(t), newCA(t)
	addr := serve(t, ca, pki.ServerHosts("127.0.0.1:0", nil))
	for _, tt := range []struct {
		name string
		o    pki.ClientOptions
		ok   bool
	}{
		{"trusting the authority", pki.ClientOptions{CAFile: ca.CertPath}, true},
		{"trusting another authority", pki.ClientOptions{CAFile: other.CertPath}, false},
		{"in plaintext", pki.ClientOptions{Insecure: true}, false},
	} {
		creds, err := pki.ClientCredentials(addr, tt.o)
		if err != nil {
			t.Fatal(err)
		}
		if err := check(addr, creds); (err == nil) != tt.ok {
			t.Errorf("a client %s: %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

// Not parallel: it sets DefaultCAFile. A client made before the server
// made its authority trusts it once the file is there, checks the name it
// dialed, and trusts nothing else.
func TestTheDefaultAuthorityIsReadAtEachConnection(t *testing.T) {
	saved := pki.DefaultCAFile
	t.Cleanup(func() { pki.DefaultCAFile = saved })
	pki.DefaultCAFile = filepath.Join(t.TempDir(), "osvc-data", "pki", pki.CACertFile)

	ca, other := newCA(t), newCA(t)
	addr := serve(t, ca, pki.ServerHosts("127.0.0.1:0", nil))
	creds, err := pki.ClientCredentials(addr, pki.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := check(addr, creds); err == nil {
		t.Fatal("connected with neither the authority's file nor a system root for it")
	}
	install := func(c *pki.CA) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(pki.DefaultCAFile), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(pki.DefaultCAFile, c.CertPEM, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	install(other)
	if err := check(addr, creds); err == nil {
		t.Error("connected trusting another authority")
	}
	install(ca)
	if err := check(addr, creds); err != nil {
		t.Errorf("with the authority's file in place: %v", err)
	}
	// A certificate from the right authority for another name.
	elsewhere := serve(t, ca, []string{"osvc.example.internal"})
	if err := check(elsewhere, creds); err == nil {
		t.Error("connected to 127.0.0.1 with a certificate for osvc.example.internal only")
	}
}
