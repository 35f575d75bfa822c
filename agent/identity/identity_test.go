package identity

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/pki"
)

// authority issues the certificates the tests' server would.
type authority struct {
	osvcv1.AgentServiceClient // only Enroll and RenewCertificate are called
	ca                        *pki.CA
	validity                  time.Duration
	failures                  atomic.Int32 // renewals to refuse first
	renewed                   chan struct{}
}

func newAuthority(t *testing.T, validity time.Duration) *authority {
	t.Helper()
	ca, _, err := pki.EnsureCA(filepath.Join(t.TempDir(), "pki"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &authority{ca: ca, validity: validity, renewed: make(chan struct{}, 16)}
}

func (a *authority) issue(csrPEM []byte) ([]byte, error) {
	csr, err := pki.ParseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	_, certPEM, err := a.ca.IssueAgentCertificate(csr, pki.AgentID{Site: "PS1", Name: csr.Subject.CommonName}, a.validity, time.Now())
	return certPEM, err
}

func (a *authority) Enroll(_ context.Context, req *osvcv1.EnrollRequest, _ ...grpc.CallOption) (*osvcv1.EnrollResponse, error) {
	if req.GetJoinToken() != "good" {
		return nil, errors.New("bad join token")
	}
	cert, err := a.issue(req.GetCsr())
	return &osvcv1.EnrollResponse{Certificate: cert}, err
}

func (a *authority) RenewCertificate(_ context.Context, req *osvcv1.RenewCertificateRequest, _ ...grpc.CallOption) (*osvcv1.RenewCertificateResponse, error) {
	if a.failures.Add(-1) >= 0 {
		return nil, errors.New("server unavailable")
	}
	cert, err := a.issue(req.GetCsr())
	a.renewed <- struct{}{}
	return &osvcv1.RenewCertificateResponse{Certificate: cert}, err
}

func TestAnEnrolledIdentityIsKeptPrivateAndLoadedAgain(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "identity")
	id, err := New(dir)
	if err != nil || id.Enrolled() {
		t.Fatalf("New on an empty folder = %v enrolled, %v", id.Enrolled(), err)
	}
	a := newAuthority(t, time.Hour)
	if err := id.Enroll(context.Background(), a, "agent-1", "bad"); err == nil || id.Enrolled() {
		t.Fatalf("Enroll with a bad token = %v, enrolled %v", err, id.Enrolled())
	}
	if err := id.Enroll(context.Background(), a, "agent-1", " good\n"); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(filepath.Join(dir, File))
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Errorf("the identity file has mode %s, want 0600", perm)
	}
	again, err := New(dir)
	if err != nil || !again.Enrolled() || again.ID() != (pki.AgentID{Site: "PS1", Name: "agent-1"}) {
		t.Fatalf("New after enrollment = %+v enrolled %v, %v", again.ID(), again.Enrolled(), err)
	}
	cert, err := again.ClientCertificate(nil)
	if err != nil || cert.Leaf == nil || cert.Leaf.NotAfter != again.NotAfter() {
		t.Errorf("the client certificate %v, %v is not the loaded one", cert, err)
	}
	if err := os.Chmod(filepath.Join(dir, File), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(dir); err == nil {
		t.Error("an identity file others may read was loaded")
	}
}

func TestKeepRenewedRenewsBeforeExpiryAndRetriesAFailure(t *testing.T) {
	t.Parallel()
	// Three-second certificates: renewed about a second before they
	// expire; the first attempt fails and is retried well before that.
	a := newAuthority(t, 3*time.Second)
	a.failures.Store(1)
	id, err := New(filepath.Join(t.TempDir(), "identity"))
	if err != nil {
		t.Fatal(err)
	}
	if err := id.Enroll(context.Background(), a, "agent-1", "good"); err != nil {
		t.Fatal(err)
	}
	first := id.Leaf()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); id.KeepRenewed(ctx, a, hclog.NewNullLogger()) }()
	defer func() { cancel(); <-done }()
	// Two renewals: the first one is stored before the loop asks for the
	// second.
	for range 2 {
		select {
		case <-a.renewed:
		case <-time.After(time.Minute):
			t.Fatal("no renewal within a minute")
		}
	}
	renewed := id.Leaf()
	if renewed.SerialNumber.Cmp(first.SerialNumber) == 0 || !renewed.NotAfter.After(first.NotAfter) {
		t.Fatalf("the identity holds a certificate expiring %s, want a renewed one after the first's %s", renewed.NotAfter, first.NotAfter)
	}
	if first.PublicKey.(*ecdsa.PublicKey).Equal(renewed.PublicKey) {
		t.Error("the renewal kept the old key; each renewal makes a new one")
	}
	if a.failures.Load() >= 0 {
		t.Error("the failing renewal was not tried")
	}
}
