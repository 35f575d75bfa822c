package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/server/store"
)

// sharedAuthority returns the certificate authority every replica on the
// store shares, kept in dir as well (clients read its ca.crt there). The
// first replica stores its own in etcd, made now or found in dir; the
// others write etcd's into dir. A dir holding another authority than the
// store's is refused: the agents enrolled through it would not be trusted by
// the other replicas. created tells that this call made the authority.
func sharedAuthority(ctx context.Context, st *store.Store, dir string) (ca *pki.CA, created bool, err error) {
	key := st.AuthorityKey()
	certPath, keyPath := filepath.Join(dir, pki.CACertFile), filepath.Join(dir, pki.CAKeyFile)
	for {
		stored, _, err := store.Get[*storev1.CertificateAuthority](ctx, st, key)
		switch {
		case err == nil:
			local, err := os.ReadFile(certPath)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				if err := os.MkdirAll(dir, 0o700); err != nil {
					return nil, false, fmt.Errorf("certificate authority: %w", err)
				}
				if err := pki.WriteFile(keyPath, stored.GetKeyPem(), 0o600); err != nil {
					return nil, false, fmt.Errorf("certificate authority: %w", err)
				}
				if err := pki.WriteFile(certPath, stored.GetCertPem(), 0o644); err != nil {
					return nil, false, fmt.Errorf("certificate authority: %w", err)
				}
			case err != nil:
				return nil, false, fmt.Errorf("certificate authority: %w", err)
			case !bytes.Equal(local, stored.GetCertPem()):
				return nil, false, fmt.Errorf("the certificate authority in %s is not the one the other replicas on this etcd share: "+
					"move %s and %s away and start again to take the shared one (agents enrolled through this one must enroll again)", dir, certPath, keyPath)
			}
			ca, _, err := pki.EnsureCA(dir, time.Now())
			return ca, false, err
		case !errors.Is(err, errdefs.ErrNotFound):
			return nil, false, fmt.Errorf("certificate authority: %w", err)
		}
		// None stored yet: this replica's, made now if dir has none.
		ca, created, err := pki.EnsureCA(dir, time.Now())
		if err != nil {
			return nil, false, err
		}
		keyPEM, err := os.ReadFile(keyPath)
		if err != nil {
			return nil, false, fmt.Errorf("certificate authority: %w", err)
		}
		data, err := st.Marshal(&storev1.CertificateAuthority{CertPem: ca.CertPEM, KeyPem: keyPEM})
		if err != nil {
			return nil, false, err
		}
		resp, err := st.Client().Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(data))).Commit()
		if err != nil {
			return nil, false, fmt.Errorf("store the certificate authority: %w", err)
		}
		if resp.Succeeded {
			return ca, created, nil
		}
		// Another replica stored its own first. One this call just made
		// gives way; one found in dir is refused above.
		if created {
			if err := errors.Join(os.Remove(certPath), os.Remove(keyPath)); err != nil {
				return nil, false, fmt.Errorf("certificate authority: %w", err)
			}
		}
	}
}
