package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc"

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
	creds, err := t.agentCredentials(ctx, name, site)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(t.addr, append([]grpc.DialOption{creds}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to osvc-server at %s: %w", t.addr, err)
	}
	return conn, nil
}

// agentCredentials enrolls agent name of site as osvc-agent does and
// returns the transport credentials it connects with: mutual TLS with the
// certificate the server issued.
func (t target) agentCredentials(ctx context.Context, name, site string) (grpc.DialOption, error) {
	token, err := t.joinToken(ctx, site)
	if err != nil {
		return nil, err
	}
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(name)
	if err != nil {
		return nil, err
	}
	anon, err := target{addr: t.addr, caFile: t.caFile}.dial()
	if err != nil {
		return nil, err
	}
	resp, err := osvcv1.NewAgentServiceClient(anon).Enroll(ctx, &osvcv1.EnrollRequest{JoinToken: token, Csr: csrPEM})
	anon.Close()
	if err != nil {
		return nil, fmt.Errorf("enroll %s: %w", name, err)
	}
	cert, err := tls.X509KeyPair(resp.GetCertificate(), keyPEM)
	if err != nil {
		return nil, fmt.Errorf("enroll %s: %w", name, err)
	}
	creds, err := pki.ClientCredentials(t.addr, pki.ClientOptions{CAFile: t.caFile,
		Certificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }})
	if err != nil {
		return nil, err
	}
	return grpc.WithTransportCredentials(creds), nil
}
