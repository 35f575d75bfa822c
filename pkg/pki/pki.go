// Package pki is osvc's transport security: the certificate authority an
// osvc-server makes in its data directory on first start, the server
// certificate it issues itself from it, and the client side (osvcctl,
// osvc-agent) that trusts that authority, another one, or the system's.
//
// Plaintext is possible only when asked for (Insecure) and only on a
// loopback address (see Loopback).
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"
)

// Files of the authority under its directory (<data-dir>/pki).
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// Validity of what this package makes.
const (
	CAValidity     = 10 * 365 * 24 * time.Hour
	ServerValidity = 365 * 24 * time.Hour
	// clockSkew backdates certificates so a peer whose clock is a little
	// behind accepts them at once.
	clockSkew = 5 * time.Minute
)

// CA is the certificate authority of one osvc installation.
type CA struct {
	Cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	CertPEM []byte
	// CertPath is the file clients are given to trust the authority.
	CertPath string
}

// Fingerprint is the SHA-256 of the authority's certificate: what an
// administrator compares before trusting it.
func (ca *CA) Fingerprint() string {
	return Fingerprint(ca.Cert)
}

// Fingerprint is the SHA-256 of cert's DER bytes as openssl prints it
// (openssl x509 -noout -fingerprint -sha256): "SHA256:AB:CD:…".
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = strings.ToUpper(hex.EncodeToString([]byte{b}))
	}
	return "SHA256:" + strings.Join(parts, ":")
}

// EnsureCA loads the authority kept in dir, or makes one there when dir
// holds none (created is then true). The key is written 0600 in a folder
// of mode 0700; a key file readable by others, or a certificate without
// its key, is refused with what to do.
func EnsureCA(dir string, now time.Time) (ca *CA, created bool, err error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := os.ReadFile(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		ca, err := parseCA(certPEM, keyPEM, certPath)
		if err != nil {
			return nil, false, err
		}
		if err := checkPrivate(keyPath); err != nil {
			return nil, false, err
		}
		return ca, false, nil
	case errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
	case certErr != nil && !errors.Is(certErr, fs.ErrNotExist):
		return nil, false, fmt.Errorf("certificate authority: %w", certErr)
	case keyErr != nil && !errors.Is(keyErr, fs.ErrNotExist):
		return nil, false, fmt.Errorf("certificate authority: %w", keyErr)
	default:
		return nil, false, fmt.Errorf("certificate authority in %s: one of %s and %s is missing: restore it from a backup, or remove both to make a new authority (every agent must then trust the new one)",
			dir, CACertFile, CAKeyFile)
	}

	// Made in a folder of its own, renamed into place whole: two servers
	// starting on one data directory end up with one authority.
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return nil, false, fmt.Errorf("certificate authority: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), "."+filepath.Base(dir)+"-*")
	if err != nil {
		return nil, false, fmt.Errorf("certificate authority: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o700); err != nil && !windows() {
		return nil, false, fmt.Errorf("certificate authority: %w", err)
	}
	certPEM, keyPEM, err = newCA(now)
	if err != nil {
		return nil, false, fmt.Errorf("certificate authority: %w", err)
	}
	if err := writeFile(filepath.Join(tmp, CAKeyFile), keyPEM, 0o600); err != nil {
		return nil, false, fmt.Errorf("certificate authority: %w", err)
	}
	if err := writeFile(filepath.Join(tmp, CACertFile), certPEM, 0o644); err != nil {
		return nil, false, fmt.Errorf("certificate authority: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, statErr := os.Stat(filepath.Join(dir, CACertFile)); statErr == nil {
			return EnsureCA(dir, now) // another server made it meanwhile
		}
		// dir exists with other files (the embedded etcd's folder): the
		// files go in one by one, the key first, each only if absent.
		for _, name := range []string{CAKeyFile, CACertFile} {
			if err := os.Link(filepath.Join(tmp, name), filepath.Join(dir, name)); err != nil {
				if errors.Is(err, fs.ErrExist) && name == CAKeyFile {
					return EnsureCA(dir, now) // another server made it meanwhile
				}
				return nil, false, fmt.Errorf("certificate authority: %w", err)
			}
		}
	}
	ca, err = parseCA(certPEM, keyPEM, certPath)
	return ca, true, err
}

// newCA makes an authority's certificate and key, PEM-encoded.
func newCA(now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "osvc certificate authority", Organization: []string{"osvc"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

func parseCA(certPEM, keyPEM []byte, certPath string) (*CA, error) {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate authority %s: %w", certPath, err)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, fmt.Errorf("certificate authority: %s holds no PEM key", filepath.Join(filepath.Dir(certPath), CAKeyFile))
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certificate authority key: %w", err)
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok || !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("certificate authority: the key in %s is not the key of %s", CAKeyFile, certPath)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("certificate authority: %s is not a CA certificate", certPath)
	}
	return &CA{Cert: cert, key: key, CertPEM: certPEM, CertPath: certPath}, nil
}

func parseCert(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

// checkPrivate refuses a key file others may read.
func checkPrivate(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("certificate authority: %w", err)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 && !windows() {
		return fmt.Errorf("certificate authority: %s has mode %s, readable by others: chmod 600 it (and consider the key exposed)", path, perm)
	}
	return nil
}

// writeFile writes data to path through a temp file in the same folder,
// so a crash never leaves half a file.
func writeFile(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(perm); err != nil && !windows() {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n
}

// ServerCertificate issues a server certificate for hosts (names and IP
// addresses) signed by the authority, with a fresh key kept in memory.
func (ca *CA) ServerCertificate(hosts []string, now time.Time) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "osvc-server", Organization: []string{"osvc"}},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     now.Add(ServerValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue the server certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.Cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// EtcdCertificate issues the certificate of an embedded etcd on the
// loopback address, for serving, peering and its one client (the server
// in the same process): server and client auth, 127.0.0.1, PEM.
func (ca *CA) EtcdCertificate(now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "osvc embedded etcd", Organization: []string{"osvc"}},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     now.Add(ServerValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue the embedded etcd's certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// WriteKeyPair writes a certificate and its key as PEM files in dir (made
// 0700), the key 0600, each through a temporary file.
func WriteKeyPair(dir, name string, certPEM, keyPEM []byte) (certFile, keyFile string, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := writeFile(keyFile, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	if err := writeFile(certFile, certPEM, 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// ServerHosts are the names a server listening on listen is reached by on
// this machine and by its host name: localhost, the loopback addresses, the
// host name, the listen host when it names one, and extra.
func ServerHosts(listen string, extra []string) []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if name, err := os.Hostname(); err == nil && name != "" {
		hosts = append(hosts, name)
	}
	if host, _, err := net.SplitHostPort(listen); err == nil && host != "" {
		if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
			hosts = append(hosts, host)
		}
	}
	hosts = append(hosts, extra...)
	seen := make(map[string]bool)
	out := hosts[:0]
	for _, h := range hosts {
		if h = strings.TrimSpace(h); h != "" && !seen[h] {
			seen[h] = true
			out = append(out, h)
		}
	}
	return out
}

// ServerConfig is the TLS configuration of a server presenting cert.
func ServerConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2"},
	}
}

// Loopback reports whether the host of addr (host:port) only ever reaches
// this machine: localhost or a loopback IP. An empty host (every address)
// is not.
func Loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ServerCredentials are gRPC's TLS credentials for a server presenting cert.
func ServerCredentials(cert tls.Certificate) (credentials.TransportCredentials, error) {
	if len(cert.Certificate) == 0 {
		return nil, errors.New("TLS: no server certificate")
	}
	return credentials.NewTLS(ServerConfig(cert)), nil
}
