package pki_test

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/osvc/osvc/pkg/pki"
)

func TestSplitServersRefusesEmptyAndPortlessEntries(t *testing.T) {
	t.Parallel()
	if got, err := pki.SplitServers(" a:1, b:2 "); err != nil || len(got) != 2 || got[0] != "a:1" || got[1] != "b:2" {
		t.Errorf("SplitServers = %v, %v; want [a:1 b:2]", got, err)
	}
	for _, bad := range []string{"", "a:1,", "a:1,,b:2", "a", "a:1,b"} {
		if _, err := pki.SplitServers(bad); err == nil {
			t.Errorf("SplitServers(%q) = nil error, want one", bad)
		}
	}
}

func TestPlaintextToAListIsRefusedUnlessEveryServerIsLoopback(t *testing.T) {
	t.Parallel()
	if _, err := pki.ClientCredentials("127.0.0.1:1,10.0.0.1:1", pki.ClientOptions{Insecure: true}); err == nil || !strings.Contains(err.Error(), "10.0.0.1") {
		t.Errorf("plaintext to a list with a remote server = %v, want refused naming it", err)
	}
	if _, err := pki.ClientCredentials("127.0.0.1:1,[::1]:2", pki.ClientOptions{Insecure: true}); err != nil {
		t.Errorf("plaintext to loopback servers = %v", err)
	}
}

// replica serves health over TLS with a certificate of ca, reporting its
// own name as a serving service, so a client can tell which one answered.
func replica(t *testing.T, ca *pki.CA, name string) (addr string, stop func()) {
	t.Helper()
	cert, err := ca.ServerCertificate([]string{"localhost", "127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	creds := credentials.NewTLS(pki.ServerConfig(cert))
	gs := grpc.NewServer(grpc.Creds(creds))
	hs := health.NewServer()
	hs.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return lis.Addr().String(), gs.Stop
}

func TestAClientOfSeveralServersMovesToAnotherWhenItsOwnStops(t *testing.T) {
	t.Parallel()
	ca, _, err := pki.EnsureCA(filepath.Join(t.TempDir(), "pki"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	addrA, stopA := replica(t, ca, "a")
	addrB, stopB := replica(t, ca, "b")
	// The second address by its name: each is checked against its own host.
	list := addrA + "," + strings.Replace(addrB, "127.0.0.1", "localhost", 1)
	creds, err := pki.ClientCredentials(list, pki.ClientOptions{CAFile: ca.CertPath})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pki.NewClient(list, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	which := func() string {
		t.Helper()
		var errs []error
		for _, name := range []string{"a", "b"} {
			resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: name}, grpc.WaitForReady(true))
			// A call already sent on the stopping server's connection fails:
			// a client calls again, as the agent opens its stream again.
			for status.Code(err) == codes.Unavailable && ctx.Err() == nil {
				resp, err = client.Check(ctx, &healthpb.HealthCheckRequest{Service: name}, grpc.WaitForReady(true))
			}
			if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
				return name
			}
			errs = append(errs, err)
		}
		t.Fatalf("neither server answered: %v", errs)
		return ""
	}
	first := which()
	stop, other := stopA, "b"
	if first == "b" {
		stop, other = stopB, "a"
	}
	stop()
	if got := which(); got != other {
		t.Errorf("after %s stopped, %s answered; want %s", first, got, other)
	}
}
