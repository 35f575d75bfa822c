package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/osvc/osvc/pkg/names"
)

// DefaultAgentValidity is how long an agent's certificate is valid; the
// agent renews it when a third of that is left.
const DefaultAgentValidity = 24 * time.Hour

// MaxCSRBytes bounds a certificate request: a P-256 one is under 1 KiB, a
// 4096-bit RSA one under 2 KiB.
const MaxCSRBytes = 16 << 10

// AgentID is an agent's identity as its certificate names it.
type AgentID struct {
	Site, Name string
}

// String is the principal the audit shows: "agent:PS1/name".
func (a AgentID) String() string { return "agent:" + a.Site + "/" + a.Name }

// URI is the certificate's URI SAN: spiffe://osvc/site/{site}/agent/{name}.
func (a AgentID) URI() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: "osvc", Path: "/site/" + a.Site + "/agent/" + a.Name}
}

// Validate checks the site code and the name by osvc's naming rules.
func (a AgentID) Validate() error {
	if err := names.ValidateSite(a.Site); err != nil {
		return fmt.Errorf("site: %w", err)
	}
	if err := names.ValidateID(a.Name); err != nil {
		return fmt.Errorf("agent name %s: %w", names.Quote(a.Name), err)
	}
	return nil
}

// ParseAgentURI reads an agent's identity from its URI SAN, refusing
// anything but spiffe://osvc/site/{site}/agent/{name} with a valid site
// and name.
func ParseAgentURI(u *url.URL) (AgentID, error) {
	if u == nil || u.Scheme != "spiffe" || u.Host != "osvc" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return AgentID{}, errors.New("not an osvc agent identity (spiffe://osvc/site/SITE/agent/NAME)")
	}
	parts := strings.Split(u.Path, "/")
	if len(parts) != 5 || parts[0] != "" || parts[1] != "site" || parts[3] != "agent" {
		return AgentID{}, errors.New("not an osvc agent identity (spiffe://osvc/site/SITE/agent/NAME)")
	}
	id := AgentID{Site: parts[2], Name: parts[4]}
	if err := id.Validate(); err != nil {
		return AgentID{}, err
	}
	return id, nil
}

// AgentFromCert reads the agent identity of a verified client certificate:
// exactly one URI SAN, an osvc agent identity.
func AgentFromCert(cert *x509.Certificate) (AgentID, error) {
	if len(cert.URIs) != 1 {
		return AgentID{}, fmt.Errorf("the certificate has %d URI names, want one agent identity", len(cert.URIs))
	}
	return ParseAgentURI(cert.URIs[0])
}

// ParseCSR reads a PEM certificate request, checks its signature and its
// key (ECDSA P-256/P-384, Ed25519, or RSA of 2048 bits or more) and returns
// it with the agent name its common name gives.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	if len(data) == 0 {
		return nil, errors.New("certificate request: empty; send a PEM CERTIFICATE REQUEST for the agent's key")
	}
	if len(data) > MaxCSRBytes {
		return nil, fmt.Errorf("certificate request: %d bytes, over the limit of %d", len(data), MaxCSRBytes)
	}
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("certificate request: no PEM CERTIFICATE REQUEST block")
	}
	if len(strings.TrimSpace(string(rest))) != 0 {
		return nil, errors.New("certificate request: data after the PEM block; send one request")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request: its signature: %w", err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, errors.New("certificate request: an ECDSA key must be on P-256 or P-384")
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("certificate request: a %d-bit RSA key is too weak; use 2048 bits or more, or P-256", k.N.BitLen())
		}
	default:
		return nil, fmt.Errorf("certificate request: unsupported key type %T", csr.PublicKey)
	}
	return csr, nil
}

// IssueAgentCertificate signs a client certificate for the key of csr,
// naming id, valid for validity from now.
func (ca *CA) IssueAgentCertificate(csr *x509.CertificateRequest, id AgentID, validity time.Duration, now time.Time) (*x509.Certificate, []byte, error) {
	if err := id.Validate(); err != nil {
		return nil, nil, err
	}
	if validity <= 0 {
		validity = DefaultAgentValidity
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: id.Name, Organization: []string{"osvc"}, OrganizationalUnit: []string{"site " + id.Site}},
		// Backdated a little, and by no more than a tenth of the validity:
		// the agent renews when a third of NotAfter−NotBefore is left.
		NotBefore:   now.Add(-min(clockSkew, validity/10)),
		NotAfter:    now.Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{id.URI()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue the agent's certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// SerialHex is how osvc records a certificate's serial number.
func SerialHex(cert *x509.Certificate) string { return cert.SerialNumber.Text(16) }

// NewKeyAndCSR makes an agent's P-256 key and a certificate request for it
// naming the agent; both PEM.
func NewKeyAndCSR(name string) (keyPEM, csrPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	return keyAndCSR(key, name)
}

func keyAndCSR(key crypto.Signer, name string) (keyPEM, csrPEM []byte, err error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// ClientAuthConfig adds client-certificate checking to a server's TLS
// configuration: a client may present a certificate (an agent) or not (a
// token holder, an anonymous health check); one it presents must chain to
// ca and be valid now.
func ClientAuthConfig(cfg *tls.Config, ca *x509.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	cfg.ClientCAs = pool
	cfg.ClientAuth = tls.VerifyClientCertIfGiven
	return cfg
}
