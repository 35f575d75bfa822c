package server_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/server"
	"github.com/osvc/osvc/server/store/storetest"
)

// Two replicas on one etcd issue from one authority: the second takes the
// first's into its data directory, and a third whose data directory holds
// an authority of its own is refused with what to do.
func TestReplicasOnOneEtcdShareTheirAuthority(t *testing.T) {
	t.Parallel()
	endpoint := storetest.StartEtcdProcess(t)
	replica := func(dataDir string) server.Config {
		cfg := testConfig(t, dataDir)
		cfg.EtcdEndpoints = []string{endpoint}
		cfg.Prefix = "/osvc-replicas/"
		return cfg
	}
	first := startServer(t, replica(t.TempDir()))
	second := startServer(t, replica(t.TempDir()))
	a, err := os.ReadFile(first.srv.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(second.srv.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("the second replica made an authority of its own")
	}
	// The second serves a certificate of it and takes the first admin
	// token (written beside the first) as any replica does.
	token, err := os.ReadFile(first.srv.AdminTokenFile())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(second.srv.AdminTokenFile(), token, 0o600); err != nil {
		t.Fatal(err)
	}
	importImage(t, dial(t, second.srv), "win11")

	other := t.TempDir()
	if _, _, err := pki.EnsureCA(filepath.Join(other, "pki"), time.Now()); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(replica(other))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := srv.Run(ctx); err == nil || !strings.Contains(err.Error(), "is not the one the other replicas on this etcd share") {
		t.Errorf("a replica with another authority = %v, want refused saying so", err)
	}
}
