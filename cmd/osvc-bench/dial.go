package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/pki"
)

// target is a server under test: its address, the authority it made,
// which the benchmark's clients trust as osvcctl and agents do, and the
// first admin token it wrote.
type target struct {
	addr, caFile, tokenFile string
	// insecure is the bare server's plaintext (startBareServer).
	insecure bool
}

// dial connects to t over TLS as its admin.
func (t target) dial(opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	creds, err := pki.ClientCredentials(t.addr, pki.ClientOptions{CAFile: t.caFile, Insecure: t.insecure})
	if err != nil {
		return nil, err
	}
	all := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if t.tokenFile != "" {
		token, err := os.ReadFile(t.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("the server's admin token: %w", err)
		}
		all = append(all, grpc.WithPerRPCCredentials(pki.Bearer(strings.TrimSpace(string(token)), true)))
	}
	conn, err := grpc.NewClient(t.addr, append(all, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to osvc-server at %s: %w", t.addr, err)
	}
	return conn, nil
}

// createSite creates site code through conn, as an administrator does
// before its images and agents; a site that exists is left as it is.
func createSite(ctx context.Context, conn *grpc.ClientConn, code string) error {
	_, err := osvcv1.NewSiteServiceClient(conn).CreateSite(ctx, &osvcv1.CreateSiteRequest{Site: &osvcv1.Site{Code: code}})
	if status.Code(err) == codes.AlreadyExists {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create site %s: %w", code, err)
	}
	return nil
}

// joinToken makes a single-use join token for site, as an admin does.
func (t target) joinToken(ctx context.Context, site string) (string, error) {
	conn, err := t.dial()
	if err != nil {
		return "", err
	}
	defer conn.Close()
	resp, err := osvcv1.NewAgentServiceClient(conn).CreateJoinToken(ctx, &osvcv1.CreateJoinTokenRequest{Site: site})
	if err != nil {
		return "", fmt.Errorf("join token for %s: %w", site, err)
	}
	return resp.GetToken(), nil
}

// dialAgent enrolls agent name of site as osvc-agent does (a join token,
// a key made here, the certificate the server issues) and connects with
// that certificate, over mutual TLS.
func (t target) dialAgent(ctx context.Context, name, site string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if t.insecure {
		return t.dial(opts...)
	}
	cert, err := t.enroll(ctx, name, site)
	if err != nil {
		return nil, err
	}
	return t.dialCert(cert, opts...)
}

// agentCredentials enrolls agent name of site as osvc-agent does and
// returns the transport credentials it connects with: mutual TLS with the
// certificate the server issued.
func (t target) agentCredentials(ctx context.Context, name, site string) (grpc.DialOption, error) {
	cert, err := t.enroll(ctx, name, site)
	if err != nil {
		return nil, err
	}
	creds, err := t.certCredentials(cert)
	if err != nil {
		return nil, err
	}
	return grpc.WithTransportCredentials(creds), nil
}

// enroll makes a join token for site and enrolls agent name with it, as
// osvc-agent does, and returns the certificate the server issued with its key.
func (t target) enroll(ctx context.Context, name, site string) (tls.Certificate, error) {
	token, err := t.joinToken(ctx, site)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(name)
	if err != nil {
		return tls.Certificate{}, err
	}
	anon, err := target{addr: t.addr, caFile: t.caFile}.dial()
	if err != nil {
		return tls.Certificate{}, err
	}
	resp, err := osvcv1.NewAgentServiceClient(anon).Enroll(ctx, &osvcv1.EnrollRequest{JoinToken: token, Csr: csrPEM})
	anon.Close()
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("enroll %s: %w", name, err)
	}
	cert, err := tls.X509KeyPair(resp.GetCertificate(), keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("enroll %s: %w", name, err)
	}
	return cert, nil
}

// certCredentials are mutual TLS to t with an agent's certificate.
func (t target) certCredentials(cert tls.Certificate) (credentials.TransportCredentials, error) {
	return pki.ClientCredentials(t.addr, pki.ClientOptions{CAFile: t.caFile,
		Certificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }})
}

// dialCert connects to t over mutual TLS with an agent's certificate.
func (t target) dialCert(cert tls.Certificate, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	creds, err := t.certCredentials(cert)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(t.addr, append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to osvc-server at %s: %w", t.addr, err)
	}
	return conn, nil
}
