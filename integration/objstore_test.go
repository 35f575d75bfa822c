package integration

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/integration/sampledata"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/pkg/transfer"
	"github.com/osvc/osvc/server/content/s3store/s3test"
	"github.com/osvc/osvc/server/store/storetest"
)

// TestTwoServersOnOneEtcdShareAContentLibraryOnAnObjectStore runs two
// osvc-server processes on one etcd and one S3 bucket, and an agent
// connected to the second: what is uploaded and imported through the first
// is inspected by the agent, which downloads it and uploads its log files
// through the second, and every blob reads the same through either.
func TestTwoServersOnOneEtcdShareAContentLibraryOnAnObjectStore(t *testing.T) {
	ctx := context.Background()
	etcd := storetest.StartEtcdProcess(t)
	s3, err := s3test.Start(ctx, t.TempDir(), s3test.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s3.Close)
	if err := s3.MakeBucket(ctx, "osvc"); err != nil {
		t.Fatal(err)
	}
	store, err := s3.StoreConfig(t.TempDir(), "osvc")
	if err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--etcd-endpoints", etcd,
		"--s3-endpoint", store.Endpoint, "--s3-bucket", store.Bucket, "--s3-prefix", "library/", "--s3-path-style",
		"--s3-access-key-id", store.AccessKeyID, "--s3-secret-key-file", store.SecretKeyFile,
	}
	first := newCluster(t, args...)
	second := newReplica(t, first, args...)
	second.agent = second.startAgent(t, "agent-ps1")

	sample, err := sampledata.Create(ctx, sampledata.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	// Through the first server; the inspection runs on the second's agent.
	img, updates := first.importSample(t, sample)

	t.Run("every blob reads the same through either server", func(t *testing.T) {
		files := map[string]string{img.GetVersions()[0].GetSha256(): sample.WIM}
		for i, u := range updates {
			files[u.GetFiles()[0].GetSha256()] = sample.Updates[i].File
		}
		for sha, path := range files {
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for name, c := range map[string]*cluster{"first": first, "second": second} {
				dst := filepath.Join(t.TempDir(), filepath.Base(path))
				if err := transfer.Download(ctx, c.contents, sha, dst, nil); err != nil {
					t.Fatalf("download %s through the %s server: %v", filepath.Base(path), name, err)
				}
				if got, _ := os.ReadFile(dst); !bytes.Equal(got, want) {
					t.Errorf("the %s server serves other bytes for %s", name, filepath.Base(path))
				}
			}
		}
	})

	t.Run("the inspection's log files, uploaded through the second, read through the first", func(t *testing.T) {
		runs, err := first.svc.ListRuns(ctx, &osvcv1.ListRunsRequest{Image: img.GetName()})
		if err != nil || len(runs.GetRuns()) != 1 || runs.GetRuns()[0].GetKind() != osvcv1.RunKind_RUN_KIND_INSPECTION {
			t.Fatalf("runs of %s: %v, %v; want the inspection", img.GetName(), runs.GetRuns(), err)
		}
		run := runs.GetRuns()[0]
		if files := first.logFiles(t, run); len(files) != 2 || files["OfflineServicingMgr.log"] == "" {
			t.Errorf("log files %v of %s", run.GetArtifacts(), run.GetName())
		}
	})

	t.Run("the bucket holds the blobs, under the prefix, and nothing half written", func(t *testing.T) {
		keys, err := s3.Keys(ctx, "osvc")
		if err != nil {
			t.Fatal(err)
		}
		// The image, the updates and the inspection's two log files.
		if want := 1 + len(updates) + 2; len(keys) != want {
			t.Errorf("the bucket holds %d keys, want %d: %q", len(keys), want, keys)
		}
		for _, k := range keys {
			if !strings.HasPrefix(k, "library/blobs/") {
				t.Errorf("the bucket holds %q", k)
			}
		}
	})
}

// newReplica starts another osvc-server on the etcd of first's arguments,
// with first's certificate authority, as several servers on one etcd must
// share one; it answers to first's admin token.
func newReplica(t *testing.T, first *cluster, serverArgs ...string) *cluster {
	t.Helper()
	c := &cluster{addr: freeAddr(t), dataDir: filepath.Join(t.TempDir(), "server"), serverArgs: serverArgs}
	for _, name := range []string{pki.CACertFile, pki.CAKeyFile} {
		data, err := os.ReadFile(filepath.Join(first.dataDir, "pki", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(c.dataDir, "pki"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(c.dataDir, "pki", name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c.startServer(t)
	c.connect(t, first.adminToken(t))
	return c
}
