package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/sites"
	"github.com/osvc/osvc/server/store"
)

// maxWorkers bounds -c: each worker is an agent of a site of its own, and
// site codes have three characters (see siteCode).
const maxWorkers = 1000

// benchUpdate is the update every benchmark run installs.
const benchUpdate = "bench-cu"

// etcdClientTimeout bounds the first contact with the benchmark's etcd.
const etcdClientTimeout = 10 * time.Second

// benchEtcd is an embedded etcd in a fresh directory with a client on it:
// the one etcd both sides of a throughput ratio run on.
type benchEtcd struct {
	dir    string
	etcd   *store.Embedded
	client *clientv3.Client
	// tls is the client side of its mutual TLS, nil in plaintext.
	tls *transport.TLSInfo
}

// startBenchEtcd starts embedded etcd, with short ticks under -fast; both
// sides of a ratio run on it.
func startBenchEtcd(ctx context.Context, cfg benchConfig) (*benchEtcd, error) {
	return startBenchEtcdTLS(ctx, cfg, false)
}

// startBenchEtcdTLS is startBenchEtcd serving mutual TLS when secure, as
// osvc-server runs its embedded etcd, with an authority of its own.
func startBenchEtcdTLS(ctx context.Context, cfg benchConfig, secure bool) (*benchEtcd, error) {
	dir, err := os.MkdirTemp("", "osvc-bench-etcd-*")
	if err != nil {
		return nil, fmt.Errorf("etcd data directory: %w", err)
	}
	ecfg := store.EmbeddedConfig{Dir: filepath.Join(dir, "etcd"), Logger: cfg.Logger, FastTicks: cfg.Fast}
	var clientTLS *tls.Config
	if secure {
		info, err := benchEtcdTLS(filepath.Join(dir, "pki"))
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		if clientTLS, err = info.ClientConfig(); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("etcd TLS: %w", err)
		}
		ecfg.TLS = info
	}
	e, err := store.StartEmbedded(ctx, ecfg)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   e.Endpoints(),
		DialTimeout: etcdClientTimeout,
		Logger:      zap.NewNop(),
		TLS:         clientTLS,
	})
	if err != nil {
		e.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return &benchEtcd{dir: dir, etcd: e, client: client, tls: ecfg.TLS}, nil
}

// benchEtcdTLS makes an authority in dir and the embedded etcd's
// certificate from it, as osvc-server does.
func benchEtcdTLS(dir string) (*transport.TLSInfo, error) {
	ca, _, err := pki.EnsureCA(dir, time.Now())
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := ca.EtcdCertificate(time.Now())
	if err != nil {
		return nil, err
	}
	certFile, keyFile, err := pki.WriteKeyPair(filepath.Join(dir, "etcd"), "etcd", certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	return &transport.TLSInfo{CertFile: certFile, KeyFile: keyFile, TrustedCAFile: ca.CertPath}, nil
}

// close stops etcd and removes its directory.
func (e *benchEtcd) close() error {
	clientErr := e.client.Close()
	etcdErr := e.etcd.Close()
	dirErr := os.RemoveAll(e.dir)
	if etcdErr != nil {
		return fmt.Errorf("stop embedded etcd: %w", etcdErr)
	}
	if clientErr != nil {
		return fmt.Errorf("close etcd client: %w", clientErr)
	}
	if dirErr != nil {
		return fmt.Errorf("remove etcd data directory: %w", dirErr)
	}
	return nil
}

// agentID names worker w's agent.
func agentID(w int) string { return fmt.Sprintf("bench-agent-%d", w) }

// putUpdate records the benchmark's cumulative update in the catalog, as an
// import would, without its file in the library: leases and reports do not
// read it.
func putUpdate(ctx context.Context, st *store.Store) error {
	u := &osvcv1.Update{
		Name:            catalog.UpdateName(benchUpdate),
		Kb:              "KB5031354",
		Title:           "2024-10 Cumulative Update for Windows 11 Version 23H2 for x64-based Systems (KB5031354)",
		Classification:  osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE,
		Architecture:    osvcv1.Architecture_ARCHITECTURE_X64,
		ReleaseTime:     timestamppb.New(time.Date(2024, 10, 8, 0, 0, 0, 0, time.UTC)),
		PackageIdentity: "Package_for_RollupFix~31bf3856ad364e35~amd64~~22621.2428.1.10",
		Files: []*osvcv1.UpdateFile{{
			FileName:  "windows11.0-kb5031354-x64.cab",
			Sha256:    "0000000000000000000000000000000000000000000000000000000000000000",
			SizeBytes: 700 << 20,
		}},
	}
	if _, err := st.Create(ctx, st.UpdateKey(benchUpdate), u); err != nil {
		return fmt.Errorf("record update %s: %w", u.GetName(), err)
	}
	return nil
}

// putSite records site code, as an administrator creates it before its
// images and agents; a site recorded already is left as it is.
func putSite(ctx context.Context, st *store.Store, code string) error {
	r, err := sites.New(sites.Config{Store: st})
	if err != nil {
		return err
	}
	if _, err := r.Create(ctx, &osvcv1.Site{Code: code}); err != nil && !errors.Is(err, errdefs.ErrConflict) {
		return err
	}
	return nil
}

// putImage records images/{id} on site with one version and one index, as an
// import would, without its WIM in the library: leases and reports do not
// read it. The site is recorded first when need be.
func putImage(ctx context.Context, st *store.Store, id, site string) (*osvcv1.Image, error) {
	if err := putSite(ctx, st, site); err != nil {
		return nil, err
	}
	now := timestamppb.Now()
	img := &osvcv1.Image{
		Name:        catalog.ImageName(id),
		DisplayName: id,
		Kind:        osvcv1.ImageKind_IMAGE_KIND_OS_IMAGE,
		Site:        site,
		Versions: []*osvcv1.ImageVersion{{
			Version: 1, Sha256: "1111111111111111111111111111111111111111111111111111111111111111",
			SizeBytes: 5 << 30, CreateTime: now,
		}},
		CurrentVersion:  1,
		ServicingStatus: osvcv1.ServicingStatus_SERVICING_STATUS_NONE,
		Indexes: []*osvcv1.ImageIndex{{
			Index: 1, Name: "Windows 11 Enterprise", Architecture: osvcv1.Architecture_ARCHITECTURE_X64,
			Version: "10.0.22631.2428", Build: 22631,
		}},
		CreateTime: now,
		UpdateTime: now,
	}
	if _, err := st.Create(ctx, st.ImageKey(id), img); err != nil {
		return nil, fmt.Errorf("record image %s: %w", img.GetName(), err)
	}
	return img, nil
}

// siteCode names worker w's site: three upper-case letters or digits, as
// catalog.ValidateSite wants ("B" and w in base 36).
func siteCode(w int) string {
	code := strings.ToUpper(strconv.FormatInt(int64(w), 36))
	if len(code) < 2 {
		code = "0" + code
	}
	return "B" + code
}
