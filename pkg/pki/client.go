package pki

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Environment variables the clients read for their TLS flags' defaults.
const (
	CAFileEnv   = "OSVC_CA_FILE"
	InsecureEnv = "OSVC_INSECURE"
)

// DefaultCAFile is where an osvc-server started in the same folder with its
// default --data-dir keeps its authority's certificate: a client run there
// (the README's commands) trusts it with no flag.
var DefaultCAFile = filepath.Join("osvc-data", "pki", CACertFile)

// ClientOptions say how a client trusts the server it dials.
type ClientOptions struct {
	// CAFile is a PEM file of the authorities to trust. Empty: DefaultCAFile
	// when it exists, else the system's roots (a server certificate from
	// --tls-cert signed by a public or company authority).
	CAFile string
	// Insecure dials in plaintext, which only a loopback address allows.
	Insecure bool
	// Certificate, when set, gives the client certificate of each
	// handshake (an agent's, renewed meanwhile).
	Certificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
}

// ClientCredentials returns the transport credentials of a client dialing
// addr with o; addr may be a comma-separated list of servers (NewClient),
// whose certificates are then each checked against its own address's host.
func ClientCredentials(addr string, o ClientOptions) (credentials.TransportCredentials, error) {
	addrs, err := SplitServers(addr)
	if err != nil {
		return nil, err
	}
	if o.Insecure {
		for _, a := range addrs {
			if !Loopback(a) {
				return nil, fmt.Errorf("plaintext to %s is refused: it is not a loopback address; drop --insecure (the server speaks TLS unless started with --insecure)", a)
			}
		}
		return insecure.NewCredentials(), nil
	}
	host := ""
	if len(addrs) == 1 {
		if host, _, err = net.SplitHostPort(addrs[0]); err != nil {
			host = addrs[0]
		}
	}
	cfg, err := ClientConfig(host, o)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(cfg), nil
}

// ClientConfig is the TLS configuration ClientCredentials uses to reach
// the server named serverName (a host name or an IP address); empty, the
// name of each connection's address, which gRPC sets per handshake. With
// o.CAFile the authority is read once, now. Without it the roots are
// chosen at each handshake: DefaultCAFile once it exists (a server started
// beside the client a moment earlier makes it only then), else the
// system's; the chain and the server's name are verified as crypto/tls
// would.
func ClientConfig(serverName string, o ClientOptions) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName, GetClientCertificate: o.Certificate}
	if o.CAFile != "" {
		pool, err := readRoots(o.CAFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
		return cfg, nil
	}
	// Verified below, against the roots of the moment, never skipped.
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("TLS: the server sent no certificate")
		}
		name := cmp.Or(serverName, cs.ServerName)
		if name == "" {
			return errors.New("TLS: the server's name is required to verify its certificate")
		}
		roots, err := defaultRoots()
		if err != nil {
			return err
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err = cs.PeerCertificates[0].Verify(x509.VerifyOptions{
			DNSName: name, Roots: roots, Intermediates: inter,
		})
		return err
	}
	return cfg, nil
}

// defaultRoots are DefaultCAFile's authority when the file exists, else the
// system's roots.
func defaultRoots() (*x509.CertPool, error) {
	if _, err := os.Stat(DefaultCAFile); err == nil {
		return readRoots(DefaultCAFile)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("TLS: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		return nil, fmt.Errorf("TLS: the system's roots: %w; give the server's authority with --ca-file", err)
	}
	return pool, nil
}

func readRoots(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("TLS: the authority to trust: %w; give the server's %s with --ca-file or $%s", err, filepath.Join("<data-dir>", "pki", CACertFile), CAFileEnv)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("TLS: %s holds no PEM certificate; give the server's %s", file, filepath.Join("<data-dir>", "pki", CACertFile))
	}
	return pool, nil
}

// Bearer returns per-call credentials sending token as
// "authorization: Bearer <token>". secure is false only for plaintext to a
// loopback server (--insecure).
func Bearer(token string, secure bool) credentials.PerRPCCredentials {
	return bearer{token: token, secure: secure}
}

type bearer struct {
	token  string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.secure }
