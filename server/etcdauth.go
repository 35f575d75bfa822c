package server

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/osvc/osvc/pkg/pki"
)

// EtcdAuth is how the server authenticates to an external etcd: TLS with
// the cluster's authority and a client certificate (etcd's
// --client-cert-auth), and etcd's own users. Secrets come from files or
// the environment, never from the command line, where ps shows them.
type EtcdAuth struct {
	// CAFile is the authority of etcd's server certificates (PEM); with it
	// or a client certificate, the endpoints must be https://.
	CAFile string
	// CertFile and KeyFile are the server's client certificate for etcd.
	CertFile, KeyFile string
	// Username is an etcd user; its password is read from PasswordFile.
	Username, PasswordFile string
}

// EtcdPasswordEnv holds the etcd user's password when no file is given.
const EtcdPasswordEnv = "OSVC_ETCD_PASSWORD"

func (a EtcdAuth) tls() bool { return a.CAFile != "" || a.CertFile != "" || a.KeyFile != "" }

// check refuses settings that cannot work, before anything starts.
func (a EtcdAuth) check(external bool) error {
	switch {
	case !external && (a.tls() || a.Username != "" || a.PasswordFile != ""):
		return errors.New("--etcd-ca-file, --etcd-cert-file, --etcd-key-file, --etcd-username and --etcd-password-file are for an external etcd: give --etcd-endpoints too")
	case (a.CertFile == "") != (a.KeyFile == ""):
		return errors.New("--etcd-cert-file and --etcd-key-file go together: give both")
	case a.PasswordFile != "" && a.Username == "":
		return errors.New("--etcd-password-file needs --etcd-username")
	}
	return nil
}

// apply sets the client's TLS and credentials.
func (a EtcdAuth) apply(cfg *clientv3.Config) error {
	if a.tls() {
		for _, ep := range cfg.Endpoints {
			if !strings.HasPrefix(ep, "https://") {
				return fmt.Errorf("etcd endpoint %s: with --etcd-ca-file or --etcd-cert-file the endpoints are https:// URLs", ep)
			}
		}
		info := transport.TLSInfo{CertFile: a.CertFile, KeyFile: a.KeyFile, TrustedCAFile: a.CAFile}
		tlsCfg, err := info.ClientConfig()
		if err != nil {
			return fmt.Errorf("etcd TLS (--etcd-ca-file, --etcd-cert-file, --etcd-key-file): %w", err)
		}
		cfg.TLS = tlsCfg
	}
	if a.Username != "" {
		password, err := a.password()
		if err != nil {
			return err
		}
		cfg.Username, cfg.Password = a.Username, password
	}
	return nil
}

// password reads the etcd user's password from its file, else from
// $OSVC_ETCD_PASSWORD.
func (a EtcdAuth) password() (string, error) {
	if a.PasswordFile == "" {
		p := os.Getenv(EtcdPasswordEnv)
		if p == "" {
			return "", fmt.Errorf("etcd user %s: give its password in --etcd-password-file or $%s", a.Username, EtcdPasswordEnv)
		}
		return p, nil
	}
	p, err := pki.ReadSecretFile(a.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("--etcd-password-file: %w", err)
	}
	return p, nil
}
