package auth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/types/known/durationpb"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/server/sites"
	"github.com/osvc/osvc/server/store"
	"github.com/osvc/osvc/server/store/storetest"
)

// agentValidity is how long the tests' agent certificates are valid.
const agentValidity = time.Hour

// clock is the time the code under test reads: it moves only when a test
// moves it.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func (c *clock) Add(d time.Duration) { c.Set(c.Now().Add(d)) }

// newAccess returns a credential store on a fresh prefix of the shared
// etcd, with a certificate authority of its own and a clock the test moves.
func newAccess(t *testing.T) *Access {
	t.Helper()
	return newAccessOn(t, storetest.New(t), newCA(t))
}

// newAccessOn returns a credential store on st issuing from ca, its clock
// set to the test's start.
func newAccessOn(t *testing.T, st *store.Store, ca *pki.CA) *Access {
	t.Helper()
	a := NewAccess(st, ca, agentValidity)
	a.now = newClock().Now
	return a
}

func newCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, _, err := pki.EnsureCA(filepath.Join(t.TempDir(), "pki"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// newTimedAccess is newAccess with the clock returned, for tests that move it.
func newTimedAccess(t *testing.T) (*Access, *clock) {
	t.Helper()
	a := NewAccess(storetest.New(t), newCA(t), agentValidity)
	c := newClock()
	a.now = c.Now
	return a, c
}

func wantKind(t *testing.T, err, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("error %v, want one of kind %q", err, kind)
	}
}

func createToken(t *testing.T, a *Access, req *osvcv1.CreateTokenRequest) (*osvcv1.Token, string) {
	t.Helper()
	tok, text, err := a.CreateToken(t.Context(), "test", req)
	if err != nil {
		t.Fatalf("create token %v: %v", req, err)
	}
	return tok, text
}

// createSite makes sure site code exists, as an administrator creates it
// before making join tokens for it.
func createSite(t *testing.T, st *store.Store, code string) {
	t.Helper()
	r, err := sites.New(sites.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Create(t.Context(), &osvcv1.Site{Code: code}); err != nil && !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("create site %s: %v", code, err)
	}
}

// joinToken makes a join token as asked, for a site it creates if need be.
func joinToken(t *testing.T, a *Access, req *osvcv1.CreateJoinTokenRequest) string {
	t.Helper()
	createSite(t, a.st, req.GetSite())
	text, _, err := a.CreateJoinToken(t.Context(), "test", req)
	if err != nil {
		t.Fatalf("create join token %v: %v", req, err)
	}
	return text
}

// agentKey is an agent's key and certificate, as the agent keeps them.
type agentKey struct {
	keyPEM  []byte
	csrPEM  []byte
	certPEM []byte
	cert    *x509.Certificate
}

func newCSR(t *testing.T, name string) *agentKey {
	t.Helper()
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(name)
	if err != nil {
		t.Fatal(err)
	}
	return &agentKey{keyPEM: keyPEM, csrPEM: csrPEM}
}

func parseCertPEM(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("no PEM certificate in %q", certPEM)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// enroll enrolls name with join and returns its key and certificate.
func enroll(t *testing.T, a *Access, join, name string) *agentKey {
	t.Helper()
	k := newCSR(t, name)
	resp, _, err := a.Enroll(t.Context(), join, k.csrPEM)
	if err != nil {
		t.Fatalf("enroll %s: %v", name, err)
	}
	k.certPEM = resp.GetCertificate()
	k.cert = parseCertPEM(t, k.certPEM)
	return k
}

// enrollNew enrolls name at site with a join token of its own.
func enrollNew(t *testing.T, a *Access, site, name string) *agentKey {
	t.Helper()
	return enroll(t, a, joinToken(t, a, &osvcv1.CreateJoinTokenRequest{Site: site}), name)
}

// identity reads name's recorded identity, nil when there is none.
func identity(t *testing.T, a *Access, name string) *storev1.AgentIdentity {
	t.Helper()
	ident, _, err := store.Get[*storev1.AgentIdentity](t.Context(), a.st, a.identityKey(name))
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return ident
}

// barrier holds the first n commits its hook sees until all n arrived, so
// n racers have all read what they read before any of them commits.
type barrier struct {
	match   func(txn string) bool
	mu      sync.Mutex
	n       int
	all     chan struct{}
	timeout <-chan struct{}
}

func newBarrier(t *testing.T, n int, match func(txn string) bool) *barrier {
	// The deadline only keeps a broken test from hanging: the racers meet
	// at once when the code is right.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return &barrier{match: match, n: n, all: make(chan struct{}), timeout: ctx.Done()}
}

func (b *barrier) hook(txn string) {
	if !b.match(txn) {
		return
	}
	b.mu.Lock()
	if b.n > 0 {
		if b.n--; b.n == 0 {
			close(b.all)
		}
	}
	b.mu.Unlock()
	select {
	case <-b.all:
	case <-b.timeout:
	}
}

// met reports whether all n racers reached the commit together.
func (b *barrier) met() bool {
	select {
	case <-b.all:
		return true
	default:
		return false
	}
}

func TestCreateTokenRefusesSitesThatDoNotFitTheRole(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	for _, tc := range []struct {
		name  string
		req   *osvcv1.CreateTokenRequest
		field string
	}{
		{"an admin token with a site is refused", &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_ADMIN, Sites: []string{"PS1"}}, "sites"},
		{"a viewer token with a site is refused", &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_VIEWER, Sites: []string{"PS1"}}, "sites"},
		{"an operator token without a site is refused", &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_OPERATOR}, "sites"},
		{"an operator token with a lower-case site is refused", &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_OPERATOR, Sites: []string{"PS1", "ps2"}}, "sites"},
		{"an operator token with a four-letter site is refused", &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_OPERATOR, Sites: []string{"PS12"}}, "sites"},
		{"an agent token is refused", &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_AGENT}, "role"},
		{"a token without a role is refused", &osvcv1.CreateTokenRequest{}, "role"},
		{"a negative lifetime is refused", &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_VIEWER, Ttl: durationpb.New(-time.Hour)}, "ttl"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tok, text, err := a.CreateToken(t.Context(), "test", tc.req)
			if text != "" || tok != nil {
				t.Errorf("CreateToken made token %v", tok)
			}
			var fv *errdefs.FieldViolation
			if !errors.As(err, &fv) || fv.Field != tc.field {
				t.Fatalf("error %v, want an invalid argument about %s", err, tc.field)
			}
		})
	}
	toks, err := a.ListTokens(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(toks) != 0 {
		t.Fatalf("refused requests left tokens: %v", toks)
	}
}

func TestATokenAuthenticatesAsItsRoleAndSites(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	for _, tc := range []struct {
		name      string
		req       *osvcv1.CreateTokenRequest
		wantSites []string
	}{
		{"an admin token is an admin of every site", &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_ADMIN}, nil},
		{"a viewer token is a viewer", &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_VIEWER, Description: "dashboards"}, nil},
		{"an operator token holds its sites sorted and once each", &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_OPERATOR, Sites: []string{"PS2", "PS1", "PS2"}}, []string{"PS1", "PS2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tok, text := createToken(t, a, tc.req)
			if !slices.Equal(tok.GetSites(), tc.wantSites) {
				t.Errorf("token sites %v, want %v", tok.GetSites(), tc.wantSites)
			}
			checkSecretShape(t, kindToken, text, tok.GetId())
			p, err := a.AuthenticateToken(t.Context(), text)
			if err != nil {
				t.Fatal(err)
			}
			if p.ID != "token:"+tok.GetId() || p.Role != tc.req.GetRole() || !slices.Equal(p.Sites, tc.wantSites) {
				t.Fatalf("principal %+v, want token:%s of role %v and sites %v", p, tok.GetId(), tc.req.GetRole(), tc.wantSites)
			}
		})
	}
}

func TestATokenIsRefusedWhenItIsNotTheOneStored(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	tok, text := createToken(t, a, &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_ADMIN})
	_, key := splitSecret(t, text)
	_, other, _ := newSecret(kindToken)
	_, otherKey := splitSecret(t, other)
	joinText := joinToken(t, a, &osvcv1.CreateJoinTokenRequest{Site: "PS1"})

	for _, tc := range []struct {
		name, text string
	}{
		{"another key with the token's id is refused", "osvc.tok." + tok.GetId() + "." + otherKey},
		{"the token relabelled as a join token is refused", "osvc.join." + tok.GetId() + "." + key},
		{"a well-formed token never made is refused", other},
		{"a join token is refused", joinText},
		{"an empty text is refused", ""},
		{"the token with a trailing newline is refused", text + "\n"},
		{"the token without its key is refused", "osvc.tok." + tok.GetId() + "."},
		{"the token's id in upper case is refused", "osvc.tok." + strings.ToUpper(tok.GetId()) + "." + key},
		{"the token's key in the standard alphabet is refused", "osvc.tok." + tok.GetId() + "." + strings.NewReplacer("-", "+", "_", "/").Replace(key) + "+"},
		{"a huge text is refused", strings.Repeat(text, 100)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, err := a.AuthenticateToken(t.Context(), tc.text)
			if p != nil {
				t.Errorf("authenticated as %+v", p)
			}
			wantKind(t, err, errdefs.ErrUnauthenticated)
		})
	}
}

func TestARevokedTokenIsRefused(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	tok, text := createToken(t, a, &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_OPERATOR, Sites: []string{"PS1"}})
	kept, keptText := createToken(t, a, &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_VIEWER})
	if _, err := a.AuthenticateToken(t.Context(), text); err != nil {
		t.Fatal(err)
	}
	if err := a.RevokeToken(t.Context(), tok.GetId()); err != nil {
		t.Fatal(err)
	}
	_, err := a.AuthenticateToken(t.Context(), text)
	wantKind(t, err, errdefs.ErrUnauthenticated)

	if _, err := a.AuthenticateToken(t.Context(), keptText); err != nil {
		t.Errorf("revoking another token refused this one: %v", err)
	}
	toks, err := a.ListTokens(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(toks) != 1 || toks[0].GetId() != kept.GetId() {
		t.Errorf("tokens after revoking %s: %v, want only %s", tok.GetId(), toks, kept.GetId())
	}
	wantKind(t, a.RevokeToken(t.Context(), tok.GetId()), errdefs.ErrNotFound)
	wantKind(t, a.RevokeToken(t.Context(), "short"), errdefs.ErrInvalidArgument)
}

func TestATokenIsRefusedFromTheMomentItExpires(t *testing.T) {
	t.Parallel()
	a, c := newTimedAccess(t)
	start := c.Now()
	_, expiring := createToken(t, a, &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_VIEWER, Ttl: durationpb.New(time.Hour)})
	_, lasting := createToken(t, a, &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_VIEWER})

	c.Set(start.Add(time.Hour - time.Nanosecond))
	if _, err := a.AuthenticateToken(t.Context(), expiring); err != nil {
		t.Fatalf("a token one nanosecond before its expiry: %v", err)
	}
	c.Set(start.Add(time.Hour))
	_, err := a.AuthenticateToken(t.Context(), expiring)
	wantKind(t, err, errdefs.ErrUnauthenticated)

	c.Set(start.Add(10 * 365 * 24 * time.Hour))
	if _, err := a.AuthenticateToken(t.Context(), lasting); err != nil {
		t.Fatalf("a token without a lifetime expired: %v", err)
	}
}

func TestTheStoredTokenHoldsTheDigestOfItsSecretNotTheSecret(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	tok, text := createToken(t, a, &osvcv1.CreateTokenRequest{Role: osvcv1.Role_ROLE_ADMIN})
	_, key := splitSecret(t, text)
	resp, err := a.st.Client().Get(t.Context(), a.tokenKey(tok.GetId()))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 {
		t.Fatalf("%d values at %s, want the token", len(resp.Kvs), a.tokenKey(tok.GetId()))
	}
	raw := resp.Kvs[0].Value
	if bytes.Contains(raw, []byte(key)) {
		t.Fatalf("the stored token holds the secret's key %q", key)
	}
	stored, err := store.Unmarshal[*storev1.StoredToken](raw)
	if err != nil {
		t.Fatal(err)
	}
	if want := sha256.Sum256([]byte(key)); !bytes.Equal(stored.GetSecretSha256(), want[:]) {
		t.Fatalf("stored digest %x, want the SHA-256 of the key %x", stored.GetSecretSha256(), want)
	}
}

func TestBootstrapWritesTheFirstAdminTokenOnce(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	dir := filepath.Join(t.TempDir(), "data")
	path, err := a.Bootstrap(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(dir, AdminTokenFile) {
		t.Fatalf("Bootstrap wrote %q, want %q", path, filepath.Join(dir, AdminTokenFile))
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Errorf("%s has mode %v, want 0600", path, perm)
	}
	first, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p, err := a.AuthenticateToken(t.Context(), strings.TrimSpace(string(first)))
	if err != nil {
		t.Fatalf("the token in %s: %v", path, err)
	}
	if p.Role != osvcv1.Role_ROLE_ADMIN || len(p.Sites) != 0 {
		t.Fatalf("the token in %s is %+v, want an admin of every site", path, p)
	}

	// A restart, or another replica on the same store, makes no second one.
	for _, again := range []*Access{a, newAccessOn(t, a.st, a.ca)} {
		path, err := again.Bootstrap(t.Context(), dir)
		if err != nil || path != "" {
			t.Fatalf("Bootstrap again = %q, %v; want \"\", nil", path, err)
		}
	}
	now, err := os.ReadFile(filepath.Join(dir, AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(now, first) {
		t.Fatalf("Bootstrap again rewrote %s", path)
	}
	toks, err := a.ListTokens(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(toks) != 1 || "token:"+toks[0].GetId() != p.ID {
		t.Fatalf("tokens %v, want only the first admin token %s", toks, p.ID)
	}
}

func TestRacingBootstrapsLeaveOneAdminToken(t *testing.T) {
	t.Parallel()
	const replicas = 4
	var tokensPrefix string
	// Every replica makes its token only after all of them found none, so
	// the race is run every time rather than when the scheduler allows.
	b := newBarrier(t, replicas, func(txn string) bool { return strings.HasPrefix(txn, "create "+tokensPrefix) })
	st := storetest.New(t, storetest.BeforeCommit(b.hook))
	ca := newCA(t)
	tokensPrefix = st.Prefix() + "tokens/"

	dirs := make([]string, replicas)
	paths := make([]string, replicas)
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	for i := range replicas {
		a := newAccessOn(t, st, ca)
		dirs[i] = filepath.Join(t.TempDir(), "data")
		wg.Go(func() { paths[i], errs[i] = a.Bootstrap(t.Context(), dirs[i]) })
	}
	wg.Wait()
	if !b.met() {
		t.Fatal("the replicas never all reached their commit together")
	}

	a := newAccessOn(t, st, ca)
	var written []string
	for i := range replicas {
		if errs[i] != nil {
			t.Fatalf("replica %d: %v", i, errs[i])
		}
		_, statErr := os.Stat(filepath.Join(dirs[i], AdminTokenFile))
		if paths[i] == "" {
			if !errors.Is(statErr, os.ErrNotExist) {
				t.Errorf("replica %d returned no path but %s exists (%v)", i, AdminTokenFile, statErr)
			}
			continue
		}
		written = append(written, paths[i])
	}
	if len(written) != 1 {
		t.Fatalf("paths written %q, want exactly one", written)
	}
	text, err := os.ReadFile(written[0])
	if err != nil {
		t.Fatal(err)
	}
	p, err := a.AuthenticateToken(t.Context(), strings.TrimSpace(string(text)))
	if err != nil {
		t.Fatalf("the surviving token in %s: %v", written[0], err)
	}
	toks, err := a.ListTokens(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(toks) != 1 || toks[0].GetRole() != osvcv1.Role_ROLE_ADMIN || "token:"+toks[0].GetId() != p.ID {
		t.Fatalf("tokens %v, want only the admin token of %s (%s)", toks, written[0], p.ID)
	}
}

func TestEnrollIssuesAClientCertificateForTheTokensSiteAndTheRequestsName(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	join := joinToken(t, a, &osvcv1.CreateJoinTokenRequest{Site: "PS2"})
	k := newCSR(t, "agent-7")
	resp, principal, err := a.Enroll(t.Context(), join, k.csrPEM)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := splitSecret(t, join)
	if principal != "join-token:"+id {
		t.Errorf("enrollment audited as %q, want join-token:%s", principal, id)
	}
	if resp.GetSite() != "PS2" || resp.GetName() != "agent-7" || !bytes.Equal(resp.GetCaCertificate(), a.ca.CertPEM) {
		t.Errorf("response names %s/%s and CA %q; want PS2/agent-7 and the authority's", resp.GetSite(), resp.GetName(), resp.GetCaCertificate())
	}
	cert := parseCertPEM(t, resp.GetCertificate())
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://osvc/site/PS2/agent/agent-7" {
		t.Errorf("certificate URIs %v, want spiffe://osvc/site/PS2/agent/agent-7", cert.URIs)
	}
	if cert.Subject.CommonName != "agent-7" {
		t.Errorf("certificate common name %q, want agent-7", cert.Subject.CommonName)
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Errorf("certificate extended key usage %v, want client authentication only", cert.ExtKeyUsage)
	}
	if _, err := tls.X509KeyPair(resp.GetCertificate(), k.keyPEM); err != nil {
		t.Errorf("the certificate is not for the request's key: %v", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(a.ca.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: a.now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the certificate does not chain to the authority: %v", err)
	}
	if got := cert.NotAfter.Sub(a.now()); got > agentValidity || got < agentValidity-time.Second {
		t.Errorf("the certificate is valid for %v more, want %v", got, agentValidity)
	}
	ident := identity(t, a, "agent-7")
	if ident.GetSite() != "PS2" || !slices.Equal(ident.GetSerials(), []string{pki.SerialHex(cert)}) || ident.GetRevoked() {
		t.Errorf("identity %v, want site PS2 accepting serial %s", ident, pki.SerialHex(cert))
	}
	p, err := a.AuthenticateAgent(t.Context(), cert)
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != "agent:PS2/agent-7" || p.Role != osvcv1.Role_ROLE_AGENT || p.Agent != "agent-7" || !slices.Equal(p.Sites, []string{"PS2"}) || p.Serial != pki.SerialHex(cert) {
		t.Errorf("principal %+v, want agent:PS2/agent-7", p)
	}
}

func TestASingleUseJoinTokenEnrollsOneOfTwoRacingAgents(t *testing.T) {
	t.Parallel()
	// Both agents read the token before either commits.
	b := newBarrier(t, 2, func(txn string) bool { return txn == "enroll" })
	st := storetest.New(t, storetest.BeforeCommit(b.hook))
	a := newAccessOn(t, st, newCA(t))
	join := joinToken(t, a, &osvcv1.CreateJoinTokenRequest{Site: "PS1"})

	names := []string{"agent-a", "agent-b"}
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		k := newCSR(t, name)
		wg.Go(func() { _, _, errs[i] = a.Enroll(t.Context(), join, k.csrPEM) })
	}
	wg.Wait()
	if !b.met() {
		t.Fatal("the two enrollments never reached their commit together")
	}
	var enrolled []string
	for i, err := range errs {
		switch {
		case err == nil:
			enrolled = append(enrolled, names[i])
		case !errors.Is(err, errdefs.ErrUnauthenticated):
			t.Errorf("%s: %v, want the token refused as used up", names[i], err)
		}
		if ident := identity(t, a, names[i]); (ident != nil) != (err == nil) {
			t.Errorf("%s: enroll error %v but identity %v", names[i], err, ident)
		}
	}
	if len(enrolled) != 1 {
		t.Fatalf("enrolled %v with one single-use token, want exactly one", enrolled)
	}
}

func TestAJoinTokenOfTwoUsesEnrollsTwoAgents(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	join := joinToken(t, a, &osvcv1.CreateJoinTokenRequest{Site: "PS1", Uses: 2})
	id, _ := splitSecret(t, join)

	enroll(t, a, join, "agent-1")
	resp, err := a.st.Client().Get(t.Context(), a.joinKey(id))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 {
		t.Fatal("the join token is gone after one of its two uses")
	}
	jt, err := store.Unmarshal[*storev1.JoinToken](resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	if jt.GetUsesLeft() != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("after one use: %d uses left on lease %x, want 1 use still on the token's lease", jt.GetUsesLeft(), resp.Kvs[0].Lease)
	}

	enroll(t, a, join, "agent-2")
	resp, err = a.st.Client().Get(t.Context(), a.joinKey(id))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 0 {
		t.Errorf("the join token is still stored after its last use")
	}
	_, _, err = a.Enroll(t.Context(), join, newCSR(t, "agent-3").csrPEM)
	wantKind(t, err, errdefs.ErrUnauthenticated)
}

func TestAJoinTokenWithNoUsesLeftIsRefused(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	join := joinToken(t, a, &osvcv1.CreateJoinTokenRequest{Site: "PS1", Uses: 3})
	id, _ := splitSecret(t, join)
	// Enroll deletes a token at its last use; a record of none left (from
	// an older server, or a restore) must still be refused.
	if _, _, err := store.Update(t.Context(), a.st, a.joinKey(id), func(jt *storev1.JoinToken) error {
		jt.UsesLeft = 0
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_, _, err := a.Enroll(t.Context(), join, newCSR(t, "agent-1").csrPEM)
	wantKind(t, err, errdefs.ErrUnauthenticated)
}

func TestAJoinTokenIsRefusedFromTheMomentItExpires(t *testing.T) {
	t.Parallel()
	a, c := newTimedAccess(t)
	start := c.Now()
	req := &osvcv1.CreateJoinTokenRequest{Site: "PS1", Ttl: durationpb.New(10 * time.Minute)}
	before, at := joinToken(t, a, req), joinToken(t, a, req)

	c.Set(start.Add(10*time.Minute - time.Nanosecond))
	enroll(t, a, before, "agent-1")
	c.Set(start.Add(10 * time.Minute))
	_, _, err := a.Enroll(t.Context(), at, newCSR(t, "agent-2").csrPEM)
	wantKind(t, err, errdefs.ErrUnauthenticated)
	if identity(t, a, "agent-2") != nil {
		t.Error("an expired join token enrolled agent-2")
	}
}

func TestAJoinTokenWithAWrongKeyIsRefusedAndKeepsItsUse(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	join := joinToken(t, a, &osvcv1.CreateJoinTokenRequest{Site: "PS1"})
	id, _ := splitSecret(t, join)
	_, other, _ := newSecret(kindJoin)
	_, otherKey := splitSecret(t, other)

	for _, text := range []string{"osvc.join." + id + "." + otherKey, "osvc.tok." + id + "." + otherKey, other, "", join + "\n"} {
		_, _, err := a.Enroll(t.Context(), text, newCSR(t, "agent-1").csrPEM)
		wantKind(t, err, errdefs.ErrUnauthenticated)
	}
	enroll(t, a, join, "agent-1")
}

func TestEnrollRefusesABadRequestWithoutSpendingTheToken(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	for _, tc := range []struct {
		name string
		csr  []byte
		// agent then enrolls with the same single-use token.
		agent string
	}{
		{"a request naming an invalid agent is refused", newCSR(t, "Bad/Name").csrPEM, "agent-1"},
		{"a request naming no agent is refused", newCSR(t, "").csrPEM, "agent-2"},
		{"a request that is not PEM is refused", []byte("not a certificate request"), "agent-3"},
		{"an empty request is refused", nil, "agent-4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			join := joinToken(t, a, &osvcv1.CreateJoinTokenRequest{Site: "PS1"})
			resp, _, err := a.Enroll(t.Context(), join, tc.csr)
			if resp != nil {
				t.Errorf("enrolled %v", resp)
			}
			wantKind(t, err, errdefs.ErrInvalidArgument)
			enroll(t, a, join, tc.agent)
		})
	}
}

func TestEnrollingANameTakenIsRefusedUntilTheAgentIsRevoked(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	old := enrollNew(t, a, "PS1", "agent-1")

	second := joinToken(t, a, &osvcv1.CreateJoinTokenRequest{Site: "PS1"})
	_, _, err := a.Enroll(t.Context(), second, newCSR(t, "agent-1").csrPEM)
	wantKind(t, err, errdefs.ErrConflict)
	if _, err := a.AuthenticateAgent(t.Context(), old.cert); err != nil {
		t.Fatalf("a refused enrollment under its name refused agent-1: %v", err)
	}

	wantKind(t, a.RevokeAgent(t.Context(), "admin", "agent-2", "never enrolled"), errdefs.ErrNotFound)
	if err := a.RevokeAgent(t.Context(), "admin", "agent-1", "disk replaced"); err != nil {
		t.Fatal(err)
	}
	_, err = a.AuthenticateAgent(t.Context(), old.cert)
	wantKind(t, err, errdefs.ErrUnauthenticated)
	if ident := identity(t, a, "agent-1"); !ident.GetRevoked() || len(ident.GetSerials()) != 0 || ident.GetRevokedBy() != "admin" || ident.GetRevokeReason() != "disk replaced" {
		t.Errorf("identity after revocation %v", ident)
	}

	// The refused enrollment did not spend the second token's use.
	renewed := enroll(t, a, second, "agent-1")
	if _, err := a.AuthenticateAgent(t.Context(), renewed.cert); err != nil {
		t.Fatalf("the certificate enrolled after revocation: %v", err)
	}
	_, err = a.AuthenticateAgent(t.Context(), old.cert)
	wantKind(t, err, errdefs.ErrUnauthenticated)
}

func TestRenewKeepsTheCallersCertificateAndDropsOlderOnes(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	first := enrollNew(t, a, "PS1", "agent-1")

	renew := func(from *agentKey) *agentKey {
		t.Helper()
		p, err := a.AuthenticateAgent(t.Context(), from.cert)
		if err != nil {
			t.Fatal(err)
		}
		k := newCSR(t, "agent-1")
		k.certPEM, err = a.Renew(t.Context(), p, k.csrPEM)
		if err != nil {
			t.Fatal(err)
		}
		k.cert = parseCertPEM(t, k.certPEM)
		if _, err := tls.X509KeyPair(k.certPEM, k.keyPEM); err != nil {
			t.Fatalf("the renewed certificate is not for the request's key: %v", err)
		}
		return k
	}
	accepted := func(k *agentKey) bool {
		t.Helper()
		_, err := a.AuthenticateAgent(t.Context(), k.cert)
		if err != nil && !errors.Is(err, errdefs.ErrUnauthenticated) {
			t.Fatal(err)
		}
		return err == nil
	}

	second := renew(first)
	if second.cert.URIs[0].String() != first.cert.URIs[0].String() {
		t.Errorf("renewed as %v, enrolled as %v", second.cert.URIs, first.cert.URIs)
	}
	if !accepted(second) || !accepted(first) {
		t.Fatalf("after one renewal: renewed accepted %v, renewing accepted %v; want both", accepted(second), accepted(first))
	}
	third := renew(second)
	if !accepted(third) || !accepted(second) || accepted(first) {
		t.Fatalf("after two renewals: accepted third %v, second %v, first %v; want the first refused",
			accepted(third), accepted(second), accepted(first))
	}
}

func TestRenewRefusesWhatIsNotTheAgentsOwnCurrentCertificate(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	first := enrollNew(t, a, "PS1", "agent-1")
	enrollNew(t, a, "PS1", "agent-2")
	p, err := a.AuthenticateAgent(t.Context(), first.cert)
	if err != nil {
		t.Fatal(err)
	}

	_, err = a.Renew(t.Context(), p, newCSR(t, "agent-2").csrPEM)
	wantKind(t, err, errdefs.ErrInvalidArgument)

	admin := &Principal{ID: "token:0123456789abcdef", Role: osvcv1.Role_ROLE_ADMIN, Agent: "agent-1", Serial: p.Serial}
	_, err = a.Renew(t.Context(), admin, newCSR(t, "agent-1").csrPEM)
	wantKind(t, err, errdefs.ErrPermissionDenied)

	// After two renewals the first certificate is superseded: it may not
	// renew itself back into the accepted set.
	second, err := a.Renew(t.Context(), p, newCSR(t, "agent-1").csrPEM)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := a.AuthenticateAgent(t.Context(), parseCertPEM(t, second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Renew(t.Context(), p2, newCSR(t, "agent-1").csrPEM); err != nil {
		t.Fatal(err)
	}
	_, err = a.Renew(t.Context(), p, newCSR(t, "agent-1").csrPEM)
	wantKind(t, err, errdefs.ErrUnauthenticated)

	if err := a.RevokeAgent(t.Context(), "admin", "agent-1", "stolen"); err != nil {
		t.Fatal(err)
	}
	_, err = a.Renew(t.Context(), p2, newCSR(t, "agent-1").csrPEM)
	wantKind(t, err, errdefs.ErrUnauthenticated)

	// A revoked identity that still lists the caller's serial: only the
	// revocation refuses the renewal.
	if _, _, err := store.Update(t.Context(), a.st, a.identityKey("agent-1"), func(ident *storev1.AgentIdentity) error {
		ident.Serials = []string{p2.Serial}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_, err = a.Renew(t.Context(), p2, newCSR(t, "agent-1").csrPEM)
	wantKind(t, err, errdefs.ErrUnauthenticated)
}

func TestAuthenticateAgentRefusesCertificatesTheServerDoesNotAccept(t *testing.T) {
	t.Parallel()
	a, c := newTimedAccess(t)
	start := c.Now()
	issue := func(id pki.AgentID, validity time.Duration, now time.Time) *x509.Certificate {
		t.Helper()
		csr, err := pki.ParseCSR(newCSR(t, id.Name).csrPEM)
		if err != nil {
			t.Fatal(err)
		}
		cert, _, err := a.ca.IssueAgentCertificate(csr, id, validity, now)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}

	// agent-old enrolled two hours ago: its certificate expired an hour ago.
	c.Set(start.Add(-2 * time.Hour))
	expired := enrollNew(t, a, "PS1", "agent-old")
	c.Set(start)
	enrolled := enrollNew(t, a, "PS1", "agent-1")
	if _, err := a.AuthenticateAgent(t.Context(), enrolled.cert); err != nil {
		t.Fatal(err)
	}

	// agent-moved is recorded at PS1 accepting the serial of a certificate
	// naming PS2: only the site tells them apart.
	moved := issue(pki.AgentID{Site: "PS2", Name: "agent-moved"}, time.Hour, start)
	if _, err := a.st.Put(t.Context(), a.identityKey("agent-moved"), &storev1.AgentIdentity{
		Name: "agent-moved", Site: "PS1", Serials: []string{pki.SerialHex(moved)},
	}); err != nil {
		t.Fatal(err)
	}
	// agent-revoked is revoked yet still lists its serial: only the
	// revocation refuses it.
	revoked := issue(pki.AgentID{Site: "PS1", Name: "agent-revoked"}, time.Hour, start)
	if _, err := a.st.Put(t.Context(), a.identityKey("agent-revoked"), &storev1.AgentIdentity{
		Name: "agent-revoked", Site: "PS1", Serials: []string{pki.SerialHex(revoked)}, Revoked: true,
	}); err != nil {
		t.Fatal(err)
	}
	server, err := a.ca.ServerCertificate([]string{"localhost"}, start)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		cert *x509.Certificate
	}{
		{"a certificate the authority issued but the server never recorded", issue(pki.AgentID{Site: "PS1", Name: "agent-1"}, time.Hour, start)},
		{"a certificate of an agent never enrolled", issue(pki.AgentID{Site: "PS1", Name: "agent-9"}, time.Hour, start)},
		{"an expired certificate the server recorded", expired.cert},
		{"an expired certificate the server never recorded", issue(pki.AgentID{Site: "PS1", Name: "agent-1"}, time.Hour, start.Add(-2*time.Hour))},
		{"a certificate naming another site than the recorded one", moved},
		{"a certificate of a revoked identity", revoked},
		{"a certificate of the same name at another site", issue(pki.AgentID{Site: "PS2", Name: "agent-1"}, time.Hour, start)},
		{"a certificate without an agent identity", server.Leaf},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, err := a.AuthenticateAgent(t.Context(), tc.cert)
			if p != nil {
				t.Errorf("authenticated as %+v", p)
			}
			wantKind(t, err, errdefs.ErrUnauthenticated)
		})
	}

	// The recorded certificate was accepted until it expired: the expiry
	// alone refuses it now.
	t.Run("a recorded certificate is accepted until the second it expires", func(t *testing.T) {
		t.Parallel()
		b := NewAccess(a.st, a.ca, agentValidity)
		b.now = func() time.Time { return expired.cert.NotAfter.Add(-time.Second) }
		if _, err := b.AuthenticateAgent(t.Context(), expired.cert); err != nil {
			t.Fatalf("one second before its expiry: %v", err)
		}
		b.now = func() time.Time { return expired.cert.NotAfter }
		_, err := b.AuthenticateAgent(t.Context(), expired.cert)
		wantKind(t, err, errdefs.ErrUnauthenticated)
	})
}

// auditEvents returns the methods of events, which the tests use to name them.
func auditEvents(evs []*osvcv1.AuditEvent) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.GetMethod()
	}
	return out
}

// newAudit returns an audit trail keeping events a day, with three events
// an hour apart: m1 and m3 by token:a, m2 by token:b.
func newAudit(t *testing.T) (*Audit, *clock, time.Time) {
	t.Helper()
	au := NewAudit(storetest.New(t), 24*time.Hour, hclog.NewNullLogger())
	c := newClock()
	au.now = c.Now
	start := c.Now()
	for i, principal := range []string{"token:a", "token:b", "token:a"} {
		c.Set(start.Add(time.Duration(i) * time.Hour))
		if err := au.Record(t.Context(), &osvcv1.AuditEvent{Principal: principal, Method: "m" + string(rune('1'+i)), Code: "OK"}); err != nil {
			t.Fatal(err)
		}
	}
	return au, c, start
}

func TestAuditListsEventsNewestFirst(t *testing.T) {
	t.Parallel()
	au, _, start := newAudit(t)
	for _, tc := range []struct {
		name      string
		since     time.Time
		principal string
		want      []string
	}{
		{"every event is listed newest first", time.Time{}, "", []string{"m3", "m2", "m1"}},
		{"since keeps the events at or after it", start.Add(time.Hour), "", []string{"m3", "m2"}},
		{"since after every event lists none", start.Add(3 * time.Hour), "", nil},
		{"a principal keeps its own events", time.Time{}, "token:a", []string{"m3", "m1"}},
		{"a principal and since both apply", start.Add(time.Nanosecond), "token:a", []string{"m3"}},
		{"an unknown principal lists none", time.Time{}, "token:c", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			evs, next, err := au.List(t.Context(), tc.since, tc.principal, 0, "")
			if err != nil {
				t.Fatal(err)
			}
			if got := auditEvents(evs); !slices.Equal(got, tc.want) || next != "" {
				t.Fatalf("listed %v, next %q; want %v and no next page", got, next, tc.want)
			}
		})
	}

	t.Run("an event is stamped with the time it was recorded", func(t *testing.T) {
		t.Parallel()
		evs, _, err := au.List(t.Context(), time.Time{}, "", 0, "")
		if err != nil {
			t.Fatal(err)
		}
		for i, ev := range evs {
			if want := start.Add(time.Duration(2-i) * time.Hour); !ev.GetTime().AsTime().Equal(want) {
				t.Errorf("%s at %v, want %v", ev.GetMethod(), ev.GetTime().AsTime(), want)
			}
		}
	})

	for _, tc := range []struct {
		name      string
		principal string
		want      []string
	}{
		{"pages of one walk every event", "", []string{"m3", "m2", "m1"}},
		{"pages of one walk a principal's events", "token:a", []string{"m3", "m1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var got []string
			token := ""
			for page := 0; ; page++ {
				if page > len(tc.want) {
					t.Fatalf("still paging after %d pages: %v", page, got)
				}
				evs, next, err := au.List(t.Context(), time.Time{}, tc.principal, 1, token)
				if err != nil {
					t.Fatal(err)
				}
				if len(evs) != 1 {
					t.Fatalf("page %d holds %v, want one event", page, auditEvents(evs))
				}
				got = append(got, auditEvents(evs)...)
				if next == "" {
					break
				}
				token = next
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("paged through %v, want %v", got, tc.want)
			}
		})
	}

	t.Run("a page token too long to be the server's is refused", func(t *testing.T) {
		t.Parallel()
		_, _, err := au.List(t.Context(), time.Time{}, "", 1, strings.Repeat("9", 65))
		wantKind(t, err, errdefs.ErrInvalidArgument)
	})
}

func TestAuditPruneDeletesOnlyEventsPastTheRetention(t *testing.T) {
	t.Parallel()
	au, c, start := newAudit(t)

	// The events are 0, 1 and 2 hours after start; the retention is a day.
	c.Set(start.Add(24 * time.Hour))
	if n, err := au.Prune(t.Context()); err != nil || n != 0 {
		t.Fatalf("Prune when the oldest event is exactly a day old = %d, %v; want 0 deleted", n, err)
	}
	c.Set(start.Add(25*time.Hour + 30*time.Minute))
	n, err := au.Prune(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	evs, _, err := au.List(t.Context(), time.Time{}, "", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := auditEvents(evs); n != 2 || !slices.Equal(got, []string{"m3"}) {
		t.Fatalf("pruned %d, kept %v; want 2 pruned and m3 kept", n, got)
	}
}

func TestAuditPagesOfAPrincipalsEventsSkipOthersAndLoseNone(t *testing.T) {
	t.Parallel()
	au := NewAudit(storetest.New(t), 24*time.Hour, hclog.NewNullLogger())
	c := newClock()
	au.now = c.Now
	// Newest first: m4 by a, m3 by b, m2 by a, m1 by a. A page of two of
	// a's events reads m4 and m3, then m2 and m1: it is full at m2 with m1
	// read but not returned, which the next page must still return.
	for i, principal := range []string{"token:a", "token:a", "token:b", "token:a"} {
		c.Add(time.Minute)
		if err := au.Record(t.Context(), &osvcv1.AuditEvent{Principal: principal, Method: "m" + string(rune('1'+i))}); err != nil {
			t.Fatal(err)
		}
	}
	var pages [][]string
	token := ""
	for {
		if len(pages) > 3 {
			t.Fatalf("still paging after %v", pages)
		}
		evs, next, err := au.List(t.Context(), time.Time{}, "token:a", 2, token)
		if err != nil {
			t.Fatal(err)
		}
		pages = append(pages, auditEvents(evs))
		if next == "" {
			break
		}
		token = next
	}
	if len(pages) != 2 || !slices.Equal(pages[0], []string{"m4", "m2"}) || !slices.Equal(pages[1], []string{"m1"}) {
		t.Fatalf("pages %v, want [m4 m2] then [m1]", pages)
	}
}

func TestBootstrapMakesTheTokenFilePrivateEvenOverAnOldOne(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	dir := t.TempDir()
	// A data directory reused after etcd was wiped: an old admin.token readable by all.
	if err := os.WriteFile(filepath.Join(dir, AdminTokenFile), []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	path, err := a.Bootstrap(context.Background(), dir)
	if err != nil || path == "" {
		t.Fatalf("Bootstrap = %q, %v", path, err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Errorf("admin.token has mode %s, want 0600", perm)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := a.AuthenticateToken(context.Background(), strings.TrimSpace(string(data))); err != nil || p.Role != osvcv1.Role_ROLE_ADMIN {
		t.Errorf("the written token authenticates as %v, %v; want admin", p, err)
	}
}

func TestABootstrapThatCannotWriteItsFileLeavesNoTokenAndTriesAgain(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	ctx := context.Background()
	parent := t.TempDir()
	dir := filepath.Join(parent, "data")
	// The data directory is a file: the token cannot be written.
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if path, err := a.Bootstrap(ctx, dir); err == nil {
		t.Fatalf("Bootstrap wrote %q into a file", path)
	}
	if toks, err := a.ListTokens(ctx); err != nil || len(toks) != 0 {
		t.Fatalf("after a failed bootstrap: %d tokens (%v), want none nobody knows", len(toks), err)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	path, err := a.Bootstrap(ctx, dir)
	if err != nil || path == "" {
		t.Fatalf("Bootstrap after the cause was fixed = %q, %v; want the token written", path, err)
	}
}

func TestARevokedJoinTokenEnrollsNoOneAndIsNoLongerListed(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	ctx := context.Background()
	join := joinToken(t, a, &osvcv1.CreateJoinTokenRequest{Site: "PS1", Uses: 3})
	jts, err := a.ListJoinTokens(ctx)
	if err != nil || len(jts) != 1 || jts[0].GetSite() != "PS1" || jts[0].GetUsesLeft() != 3 {
		t.Fatalf("ListJoinTokens = %v, %v; want the PS1 token with 3 uses", jts, err)
	}
	if strings.Contains(jts[0].String(), strings.Split(join, ".")[3]) {
		t.Error("the listed join token shows its secret")
	}
	if err := a.RevokeJoinToken(ctx, jts[0].GetId()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Enroll(ctx, join, newCSR(t, "agent-1").csrPEM); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("Enroll with a revoked join token = %v, want Unauthenticated", err)
	}
	if jts, _ := a.ListJoinTokens(ctx); len(jts) != 0 {
		t.Errorf("the revoked join token is still listed: %v", jts)
	}
	wantKind(t, a.RevokeJoinToken(ctx, joinID(join)), errdefs.ErrNotFound)
}

// joinID is the id in a join token's text.
func joinID(join string) string { return strings.Split(join, ".")[2] }

func TestAJoinTokenForASiteThatDoesNotExistIsRefusedWithTheWayToCreateIt(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	_, _, err := a.CreateJoinToken(t.Context(), "test", &osvcv1.CreateJoinTokenRequest{Site: "PS7"})
	wantKind(t, err, errdefs.ErrFailedPrecondition)
	if !strings.Contains(err.Error(), "create it with: osvcctl site create PS7") {
		t.Errorf("the refusal %q does not say how to create PS7", err)
	}
	if jts, err := a.ListJoinTokens(t.Context()); err != nil || len(jts) != 0 {
		t.Errorf("join tokens after the refusal = %v, %v; want none", jts, err)
	}
}

// TestAnEnrollmentIntoASiteThatIsGoneIsRefusedAndKeepsTheTokensUse holds a
// join token of a site whose record is gone (data of an older server, say):
// the enrollment is refused, saying how to create the site, and the token
// can still enroll once the site exists.
func TestAnEnrollmentIntoASiteThatIsGoneIsRefusedAndKeepsTheTokensUse(t *testing.T) {
	t.Parallel()
	a := newAccess(t)
	join := joinToken(t, a, &osvcv1.CreateJoinTokenRequest{Site: "PS1"})
	if _, err := a.st.Client().Delete(t.Context(), a.st.SiteKey("PS1")); err != nil {
		t.Fatal(err)
	}
	_, _, err := a.Enroll(t.Context(), join, newCSR(t, "agent-1").csrPEM)
	wantKind(t, err, errdefs.ErrFailedPrecondition)
	if !strings.Contains(err.Error(), "create it with: osvcctl site create PS1") || identity(t, a, "agent-1") != nil {
		t.Errorf("enrollment into a site that is gone = %v; want a refusal saying how to create PS1, and no identity", err)
	}
	createSite(t, a.st, "PS1")
	enroll(t, a, join, "agent-1")
}
