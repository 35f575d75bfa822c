// Package servicingtest gives tests a servicing Service on the shared
// embedded etcd, with a content library in a temp dir and helpers to put
// images and updates in the catalog without real WIM or CAB files.
package servicingtest

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/distribution"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/sites"
	"github.com/osvc/osvc/server/store"
	"github.com/osvc/osvc/server/store/storetest"
)

// Env is a Service with what it stands on.
type Env struct {
	Store   *store.Store
	Library *content.Library
	Catalog *catalog.Catalog
	Service *servicing.Service
	// Agents is a registry of agent records for the replica "test".
	Agents *agents.Registry
	Sites  *sites.Registry
	// Distribution follows the distribution points.
	Distribution *distribution.Service
	Logger       hclog.Logger
}

// Options tune the Service.
type Options struct {
	MaxAttempts int
	MaxLogLines int64
	// MaxArtifactBytes is the Service's limit on a run's log files.
	MaxArtifactBytes int64
	// RetryBackoff defaults to a millisecond here, not the Service's 10s:
	// tests that do not look at the backoff should not wait for it.
	RetryBackoff    time.Duration
	MaxRetryBackoff time.Duration
	// KeepVersions is how many versions an image keeps besides its
	// current one (servicing.Config.KeepVersions).
	KeepVersions int
	// Now is the clock of the Service and of the content library (its
	// records' create and update times); time.Now when nil.
	Now func() time.Time
	// BeforeCommit is the store's hook between a transaction's reads and
	// its commit (store.Config.BeforeCommit).
	BeforeCommit func(txn string)
}

// New returns an Env on a fresh store prefix.
func New(t testing.TB, opts Options) *Env {
	t.Helper()
	logger := hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Warn, Output: testWriter{t}})
	var storeOpts []storetest.Option
	if opts.BeforeCommit != nil {
		storeOpts = append(storeOpts, storetest.BeforeCommit(opts.BeforeCommit))
	}
	st := storetest.New(t, storeOpts...)
	lib, err := content.New(content.Config{Dir: t.TempDir(), Store: st, Logger: logger, Now: opts.Now})
	if err != nil {
		t.Fatalf("content library: %v", err)
	}
	cat, err := catalog.New(catalog.Config{Store: st, Library: lib, Logger: logger})
	if err != nil {
		t.Fatalf("catalog: %v", err)
	}
	svc, err := servicing.New(servicing.Config{
		Store: st, Catalog: cat, Library: lib, Logger: logger,
		MaxAttempts: opts.MaxAttempts, MaxLogLines: opts.MaxLogLines, MaxArtifactBytes: opts.MaxArtifactBytes,
		RetryBackoff: cmp.Or(opts.RetryBackoff, time.Millisecond), MaxRetryBackoff: opts.MaxRetryBackoff,
		KeepVersions: opts.KeepVersions,
		Now:          opts.Now,
	})
	if err != nil {
		t.Fatalf("servicing: %v", err)
	}
	reg, err := agents.New(agents.Config{Store: st, Logger: logger, ServerID: "test"})
	if err != nil {
		t.Fatalf("agents: %v", err)
	}
	sr, err := sites.New(sites.Config{Store: st, Logger: logger, Now: opts.Now})
	if err != nil {
		t.Fatalf("sites: %v", err)
	}
	dist, err := distribution.New(distribution.Config{Store: st, Trees: lib, Logger: logger, ServerID: "test", Now: opts.Now})
	if err != nil {
		t.Fatalf("distribution: %v", err)
	}
	return &Env{Store: st, Library: lib, Catalog: cat, Service: svc, Agents: reg, Sites: sr, Distribution: dist, Logger: logger}
}

// Site makes sure site code exists, as an administrator creates it before
// importing images into it or enrolling its agents; a site that exists is
// left as it is. Image, Connect and ImportWIM call it for their site.
func (e *Env) Site(t testing.TB, code string) {
	t.Helper()
	_, err := e.Sites.Create(context.Background(), &osvcv1.Site{Code: code})
	if err != nil && !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("create site %s: %v", code, err)
	}
}

// testWriter sends logs to t.Log, so they show with the failing test only.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Blob writes data to the content library and returns its record.
func (e *Env) Blob(t testing.TB, data string) *osvcv1.Content {
	t.Helper()
	sum := sha256.Sum256([]byte(data))
	c, _, err := e.Library.Write(context.Background(), content.WriteHeader{
		SHA256: hex.EncodeToString(sum[:]), SizeBytes: int64(len(data)), MediaType: "application/octet-stream",
	}, strings.NewReader(data))
	if err != nil {
		t.Fatalf("write blob: %v", err)
	}
	return c
}

// Image records images/{id} of site with version 1 on a blob made for it and
// the given number of x64 indexes, as the catalog's import would.
func (e *Env) Image(t testing.TB, id, site string, indexes int) *osvcv1.Image {
	t.Helper()
	e.Site(t, site)
	blob := e.Blob(t, "wim of "+id+" version 1")
	now := timestamppb.Now()
	img := &osvcv1.Image{
		Name:            catalog.ImageName(id),
		DisplayName:     id,
		Kind:            osvcv1.ImageKind_IMAGE_KIND_OS_IMAGE,
		Site:            site,
		Versions:        []*osvcv1.ImageVersion{{Version: 1, Sha256: blob.GetSha256(), SizeBytes: blob.GetSizeBytes(), CreateTime: now}},
		CurrentVersion:  1,
		ServicingStatus: osvcv1.ServicingStatus_SERVICING_STATUS_NONE,
		CreateTime:      now,
		UpdateTime:      now,
	}
	for i := 1; i <= indexes; i++ {
		img.Indexes = append(img.Indexes, &osvcv1.ImageIndex{
			Index: int32(i), Name: "Windows 11 Enterprise", Architecture: osvcv1.Architecture_ARCHITECTURE_X64,
			Version: "10.0.22631.2428", Build: 22631,
		})
	}
	if _, err := e.Store.Create(context.Background(), e.Store.ImageKey(id), img); err != nil {
		t.Fatalf("create image: %v", err)
	}
	return img
}

// Update records updates/{id} with one file in the library.
func (e *Env) Update(t testing.TB, id string, class osvcv1.Classification, released time.Time) *osvcv1.Update {
	t.Helper()
	blob := e.Blob(t, "package "+id)
	u := &osvcv1.Update{
		Name:            catalog.UpdateName(id),
		Kb:              "KB" + id,
		Title:           "Update " + id,
		Classification:  class,
		Architecture:    osvcv1.Architecture_ARCHITECTURE_X64,
		ReleaseTime:     timestamppb.New(released),
		PackageIdentity: "Package_for_" + id + "~31bf3856ad364e35~amd64~~22621.1.1.0",
		Files:           []*osvcv1.UpdateFile{{FileName: id + ".cab", Sha256: blob.GetSha256(), SizeBytes: blob.GetSizeBytes()}},
	}
	stored, err := e.Catalog.RecordUpdate(context.Background(), u)
	if err != nil {
		t.Fatalf("record update: %v", err)
	}
	return stored
}

// Connect makes agents/{name} present on site as agentsvc would, on a fresh
// lease with ttl, and returns the lease. Like agentsvc, it writes the presence
// and the CONNECTED agent in one transaction: a scheduler pass between two
// separate writes would see a CONNECTED agent without presence and mark it
// LOST, and a LOST agent gets no runs.
func (e *Env) Connect(t testing.TB, name, site string, capacity int32, ttl time.Duration) clientv3.LeaseID {
	t.Helper()
	e.Site(t, site)
	ctx := context.Background()
	g, err := e.Store.Client().Grant(ctx, int64(ttl/time.Second))
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	t.Cleanup(func() { _, _ = e.Store.Client().Revoke(context.Background(), g.ID) })
	agentName := agents.Name(name)
	agent, err := e.Store.Marshal(&osvcv1.Agent{
		Name: agentName, Site: site, Capacity: capacity, State: osvcv1.AgentState_AGENT_STATE_CONNECTED,
	})
	if err != nil {
		t.Fatalf("marshal agent: %v", err)
	}
	presence, err := e.Store.Marshal(&storev1.AgentPresence{Agent: agentName, SessionLease: int64(g.ID), Server: "test"})
	if err != nil {
		t.Fatalf("marshal presence: %v", err)
	}
	if _, err := e.Store.Client().Txn(ctx).Then(
		clientv3.OpPut(e.Store.PresenceKey(name), string(presence), clientv3.WithLease(g.ID)),
		clientv3.OpPut(e.Store.AgentKey(name), string(agent)),
	).Commit(); err != nil {
		t.Fatalf("put agent and presence: %v", err)
	}
	return g.ID
}

// Run reads a run.
func (e *Env) Run(t testing.TB, name string) *osvcv1.Run {
	t.Helper()
	r, err := e.Service.GetRun(context.Background(), name)
	if err != nil {
		t.Fatalf("get run %s: %v", name, err)
	}
	return r
}

// GetImage reads an image.
func (e *Env) GetImage(t testing.TB, name string) *osvcv1.Image {
	t.Helper()
	img, err := e.Catalog.GetImage(context.Background(), name)
	if err != nil {
		t.Fatalf("get image %s: %v", name, err)
	}
	return img
}

// AssignmentRevision returns the ModRevision of the run's assignment key, 0 when absent.
func (e *Env) AssignmentRevision(t testing.TB, run string) int64 {
	t.Helper()
	id, err := servicing.RunID(run)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.Store.Client().Get(context.Background(), e.Store.AssignmentKey(id))
	if err != nil {
		t.Fatalf("get assignment: %v", err)
	}
	if len(resp.Kvs) == 0 {
		return 0
	}
	return resp.Kvs[0].ModRevision
}

// WaitRun waits, watching the run's key, until ok holds; it fails the test
// after 20s.
func (e *Env) WaitRun(t testing.TB, name string, what string, ok func(*osvcv1.Run) bool) *osvcv1.Run {
	t.Helper()
	id, err := servicing.RunID(name)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	run, rev, err := store.Get[*osvcv1.Run](ctx, e.Store, e.Store.RunKey(id))
	if err != nil {
		t.Fatalf("get run %s: %v", name, err)
	}
	if ok(run) {
		return run
	}
	for wresp := range e.Store.Client().Watch(ctx, e.Store.RunKey(id), clientv3.WithRev(rev+1)) {
		for _, ev := range wresp.Events {
			r, err := store.Unmarshal[*osvcv1.Run](ev.Kv.Value)
			if err != nil {
				t.Fatalf("decode run: %v", err)
			}
			run = r
			if ok(run) {
				return run
			}
		}
	}
	t.Fatalf("run %s: waited 20s for %s; last: state %s attempt %d agent %q token %d",
		name, what, run.GetState(), run.GetAttempt(), run.GetAgent(), run.GetFencingToken())
	return nil
}

// CaptureWIM makes a real one-index x64 Windows 11 (build 22631) WIM with
// wimlib-imagex and returns its bytes.
func CaptureWIM(t testing.TB) []byte {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "src", "Windows")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "win.ini"), []byte("[fonts]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	wim := filepath.Join(dir, "install.wim")
	if out, err := exec.Command("wimlib-imagex", "capture", filepath.Join(dir, "src"), wim, "Windows 11 Pro",
		"--image-property", "WINDOWS/ARCH=9", "--image-property", "WINDOWS/VERSION/BUILD=22631").CombinedOutput(); err != nil {
		t.Fatalf("wimlib-imagex capture: %v\n%s", err, out)
	}
	data, err := os.ReadFile(wim)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// ImportWIM imports a captured WIM as images/{id} of site through
// servicing, as ImportImage does, and returns the image and its inspection run.
func (e *Env) ImportWIM(t testing.TB, id, site string) (*osvcv1.Image, *osvcv1.Run) {
	t.Helper()
	e.Site(t, site)
	blob := e.Blob(t, string(CaptureWIM(t)))
	img, run, err := e.Service.ImportImage(context.Background(), catalog.ImportImage{ID: id, Site: site, ContentSHA256: blob.GetSha256()})
	if err != nil {
		t.Fatalf("import %s: %v", id, err)
	}
	return img, run
}
