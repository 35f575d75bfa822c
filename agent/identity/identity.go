// Package identity is an agent's credential: the key it made and the
// client certificate the server's authority issued for it at enrollment,
// kept together in one file (identity/agent.pem, 0600) under the agent's
// data folder, presented on every TLS handshake and renewed before it
// expires.
package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/pki"
)

// File is the identity's file under its folder.
const File = "agent.pem"

// JoinTokenEnv is the environment variable an agent reads its join token from.
const JoinTokenEnv = "OSVC_JOIN_TOKEN"

// Identity is an agent's key and certificate, safe for concurrent use.
type Identity struct {
	dir string

	mu   sync.Mutex
	cert *tls.Certificate
	id   pki.AgentID
}

// New returns the identity kept in dir, loaded when the file exists.
func New(dir string) (*Identity, error) {
	id := &Identity{dir: dir}
	data, err := os.ReadFile(id.path())
	if errors.Is(err, fs.ErrNotExist) {
		return id, nil
	}
	if err != nil {
		return nil, fmt.Errorf("agent identity: %w", err)
	}
	if err := checkPrivate(id.path()); err != nil {
		return nil, err
	}
	cert, agent, err := parse(data)
	if err != nil {
		return nil, fmt.Errorf("agent identity %s: %w; remove it and enroll again with a new join token", id.path(), err)
	}
	id.set(cert, agent)
	return id, nil
}

func (i *Identity) path() string { return filepath.Join(i.dir, File) }

// Enrolled reports whether the identity holds a certificate.
func (i *Identity) Enrolled() bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.cert != nil
}

// ID is the site and name the certificate names.
func (i *Identity) ID() pki.AgentID {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.id
}

// NotAfter is when the certificate expires.
func (i *Identity) NotAfter() time.Time {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.cert == nil {
		return time.Time{}
	}
	return i.cert.Leaf.NotAfter
}

// ClientCertificate is tls.Config.GetClientCertificate: the current
// certificate, or none before enrollment.
func (i *Identity) ClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.cert == nil {
		return &tls.Certificate{}, nil
	}
	return i.cert, nil
}

// parse reads a PEM bundle (certificate, then key) into a key pair and
// the agent it names.
func parse(bundle []byte) (*tls.Certificate, pki.AgentID, error) {
	var certPEM, keyPEM []byte
	for rest := bundle; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		switch block.Type {
		case "CERTIFICATE":
			if certPEM == nil {
				certPEM = pem.EncodeToMemory(block)
			}
		case "PRIVATE KEY":
			keyPEM = pem.EncodeToMemory(block)
		}
	}
	if certPEM == nil || keyPEM == nil {
		return nil, pki.AgentID{}, errors.New("want a CERTIFICATE and a PRIVATE KEY")
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, pki.AgentID{}, err
	}
	id, err := pki.AgentFromCert(cert.Leaf)
	if err != nil {
		return nil, pki.AgentID{}, err
	}
	return &cert, id, nil
}

// set makes a parsed bundle current.
func (i *Identity) set(cert *tls.Certificate, id pki.AgentID) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.cert, i.id = cert, id
}

// store checks the bundle, writes it to the file (0600, whole or not at
// all) and makes it current.
func (i *Identity) store(certPEM, keyPEM []byte) error {
	bundle := append(append([]byte{}, certPEM...), keyPEM...)
	cert, id, err := parse(bundle)
	if err != nil {
		return fmt.Errorf("agent identity: the server's certificate: %w", err)
	}
	if err := os.MkdirAll(i.dir, 0o700); err != nil {
		return fmt.Errorf("agent identity: %w", err)
	}
	if err := pki.WriteFile(i.path(), bundle, 0o600); err != nil {
		return fmt.Errorf("agent identity: %w", err)
	}
	i.set(cert, id)
	return nil
}

// Enroll trades the join token for a certificate naming name, through
// client (a connection that trusts the server).
func (i *Identity) Enroll(ctx context.Context, client osvcv1.AgentServiceClient, name, joinToken string) error {
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(name)
	if err != nil {
		return fmt.Errorf("agent identity: %w", err)
	}
	resp, err := client.Enroll(ctx, &osvcv1.EnrollRequest{JoinToken: strings.TrimSpace(joinToken), Csr: csrPEM})
	if err != nil {
		return fmt.Errorf("enroll with the join token: %w", err)
	}
	return i.store(resp.GetCertificate(), keyPEM)
}

// Renew asks the server for a certificate for a new key and makes it current.
func (i *Identity) Renew(ctx context.Context, client osvcv1.AgentServiceClient) error {
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(i.ID().Name)
	if err != nil {
		return fmt.Errorf("agent identity: %w", err)
	}
	resp, err := client.RenewCertificate(ctx, &osvcv1.RenewCertificateRequest{Csr: csrPEM})
	if err != nil {
		return fmt.Errorf("renew the agent's certificate: %w", err)
	}
	return i.store(resp.GetCertificate(), keyPEM)
}

// RenewBefore is how long before expiry a certificate is renewed: a third
// of its lifetime.
func (i *Identity) RenewBefore() time.Duration {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.cert == nil {
		return 0
	}
	return i.cert.Leaf.NotAfter.Sub(i.cert.Leaf.NotBefore) / 3
}

// KeepRenewed renews the certificate when a third of its lifetime is left,
// retrying after a failure every minute (sooner for a short-lived
// certificate), until ctx ends.
func (i *Identity) KeepRenewed(ctx context.Context, client osvcv1.AgentServiceClient, logger hclog.Logger) {
	const retry = time.Minute
	for {
		// At least a tenth of the margin between renewals, so a certificate
		// the server issues short never makes a busy loop.
		wait := max(time.Until(i.NotAfter().Add(-i.RenewBefore())), i.RenewBefore()/10)
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		if err := i.Renew(ctx, client); err != nil {
			if ctx.Err() != nil {
				return
			}
			// Again within a minute, and several times before the expiry
			// even for a certificate issued short.
			again := min(retry, i.RenewBefore()/4)
			logger.Warn("renewing the agent's certificate failed; trying again", "error", err, "expires", i.NotAfter(), "retry_in", again)
			select {
			case <-ctx.Done():
				return
			case <-time.After(again):
			}
			continue
		}
		logger.Info("renewed the agent's certificate", "expires", i.NotAfter())
	}
}

// checkPrivate refuses an identity file others may read.
func checkPrivate(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("agent identity: %w", err)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 && runtime.GOOS != "windows" {
		return fmt.Errorf("agent identity: %s has mode %s, readable by others: chmod 600 it (and consider the key exposed: revoke the agent)", path, perm)
	}
	return nil
}

// Leaf is the current certificate, nil before enrollment.
func (i *Identity) Leaf() *x509.Certificate {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.cert == nil {
		return nil
	}
	return i.cert.Leaf
}
