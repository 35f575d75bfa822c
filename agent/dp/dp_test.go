package dp_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/osvc/osvc/agent/dp"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/packagetree"
	"github.com/osvc/osvc/pkg/transfer"
)

// folder is a content source of files named by sha256 in a folder; gate,
// when set, holds each download until it is closed or sent a value.
type folder struct {
	dir  string
	mu   sync.Mutex
	gate chan struct{}
	fail error
	// downloads counts the downloads started.
	downloads int
}

func (f *folder) put(t *testing.T, data []byte) string {
	t.Helper()
	sum := sha256.Sum256(data)
	sha := hex.EncodeToString(sum[:])
	if err := os.WriteFile(filepath.Join(f.dir, sha), data, 0o600); err != nil {
		t.Fatal(err)
	}
	return sha
}

func (f *folder) Download(ctx context.Context, sha, dst string, progress transfer.ProgressFunc) error {
	f.mu.Lock()
	gate, fail := f.gate, f.fail
	f.downloads++
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if fail != nil {
		return fail
	}
	data, err := os.ReadFile(filepath.Join(f.dir, sha))
	if err != nil {
		return err
	}
	if progress != nil {
		progress(int64(len(data)), int64(len(data)))
	}
	return os.WriteFile(dst, data, 0o600)
}

// reports records what the point reports; answer, when set, is returned.
type reports struct {
	mu     sync.Mutex
	list   []*osvcv1.DistributionReport
	answer error
	got    chan *osvcv1.DistributionReport
}

func newReports() *reports { return &reports{got: make(chan *osvcv1.DistributionReport, 100)} }

func (r *reports) report(_ context.Context, m *osvcv1.DistributionReport) error {
	r.mu.Lock()
	r.list = append(r.list, m)
	answer := r.answer
	r.mu.Unlock()
	r.got <- m
	return answer
}

// until waits for a report in state st of version v.
func (r *reports) until(t *testing.T, st osvcv1.DistributionState, v int32) *osvcv1.DistributionReport {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case m := <-r.got:
			if m.GetState() == st && m.GetVersion() == v {
				return m
			}
		case <-timeout:
			t.Fatalf("no %s report of version %d", st, v)
		}
	}
}

func newPoint(t *testing.T, src *folder, rep *reports, dir string) *dp.Point {
	t.Helper()
	p, err := dp.New(dp.Config{Dir: dir, Source: src, Report: rep.report, RetryBackoff: time.Millisecond, ProgressEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func distribute(image string, v int32, sha string, size int) *osvcv1.Distribute {
	return &osvcv1.Distribute{Image: image, Version: v, Sha256: sha, SizeBytes: int64(size)}
}

func get(t *testing.T, srv *httptest.Server, path string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func TestAVersionIsFetchedReportedAndServedWithRanges(t *testing.T) {
	src, rep := &folder{dir: t.TempDir()}, newReports()
	p := newPoint(t, src, rep, t.TempDir())
	defer p.Close()
	data := bytes.Repeat([]byte("version one of the image "), 4000)
	sha := src.put(t, data)

	p.Distribute(context.Background(), distribute("images/win11", 1, sha, len(data)))
	rep.until(t, osvcv1.DistributionState_DISTRIBUTION_STATE_TRANSFERRING, 1)
	done := rep.until(t, osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED, 1)
	if done.GetSha256() != sha || done.GetBytesTransferred() != int64(len(data)) || done.GetImage() != "images/win11" {
		t.Fatalf("DISTRIBUTED report: %v", done)
	}

	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	resp, body := get(t, srv, "/images/win11", nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) || resp.Header.Get("ETag") != `"`+sha+`"` {
		t.Fatalf("GET: %s, %d bytes, ETag %s", resp.Status, len(body), resp.Header.Get("ETag"))
	}
	resp, body = get(t, srv, "/images/win11", http.Header{"Range": {"bytes=1000-1999"}})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, data[1000:2000]) {
		t.Fatalf("ranged GET: %s, %d bytes", resp.Status, len(body))
	}
	// A range request resumed against another version gets the whole file.
	resp, body = get(t, srv, "/images/win11", http.Header{"Range": {"bytes=10-"}, "If-Range": {`"0000"`}})
	if resp.StatusCode != http.StatusOK || len(body) != len(data) {
		t.Fatalf("ranged GET with a stale If-Range: %s, %d bytes; want the whole file", resp.Status, len(body))
	}
	for _, path := range []string{"/images/other", "/images/..%2fstore", "/images/Bad_Name"} {
		if resp, _ := get(t, srv, path, nil); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %s, want 404", path, resp.Status)
		}
	}
	resp, body = get(t, srv, "/images/", nil)
	var list []map[string]any
	if err := json.Unmarshal(body, &list); err != nil || resp.StatusCode != http.StatusOK || len(list) != 1 || list[0]["sha256"] != sha {
		t.Fatalf("GET /images/: %s %s (%v)", resp.Status, body, err)
	}
	post, err := srv.Client().Post(srv.URL+"/images/win11", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	post.Body.Close()
	if post.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %s, want 405", post.Status)
	}

	// The same version again is reported at once, not fetched again.
	p.Distribute(context.Background(), distribute("images/win11", 1, sha, len(data)))
	rep.until(t, osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED, 1)
	if src.downloads != 1 {
		t.Fatalf("%d downloads, want 1", src.downloads)
	}
}

func TestTheOldVersionIsServedUntilTheNewOneIsInPlaceAndThenRemoved(t *testing.T) {
	src, rep := &folder{dir: t.TempDir()}, newReports()
	p := newPoint(t, src, rep, t.TempDir())
	defer p.Close()
	v1, v2 := []byte("version one"), []byte("version two, serviced")
	sha1, sha2 := src.put(t, v1), src.put(t, v2)
	p.Distribute(context.Background(), distribute("images/win11", 1, sha1, len(v1)))
	rep.until(t, osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED, 1)
	s1, _ := p.Served("images/win11")
	oldPath := p.Path(s1)

	gate := make(chan struct{})
	src.mu.Lock()
	src.gate = gate
	src.mu.Unlock()
	p.Distribute(context.Background(), distribute("images/win11", 2, sha2, len(v2)))
	rep.until(t, osvcv1.DistributionState_DISTRIBUTION_STATE_TRANSFERRING, 2)
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	if _, body := get(t, srv, "/images/win11", nil); !bytes.Equal(body, v1) {
		t.Fatalf("while version 2 is fetched: %q, want version 1", body)
	}
	close(gate)
	rep.until(t, osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED, 2)
	if _, body := get(t, srv, "/images/win11", nil); !bytes.Equal(body, v2) {
		t.Fatalf("after version 2: %q", body)
	}
	if _, err := os.Stat(oldPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the replaced version's file: %v, want removed", err)
	}
}

func TestAFetchThatKeepsFailingIsReportedFailedWithItsRetries(t *testing.T) {
	src, rep := &folder{dir: t.TempDir(), fail: errors.New("connection reset")}, newReports()
	p := newPoint(t, src, rep, t.TempDir())
	defer p.Close()
	sha := src.put(t, []byte("x"))
	p.Distribute(context.Background(), distribute("images/win11", 1, sha, 1))
	failed := rep.until(t, osvcv1.DistributionState_DISTRIBUTION_STATE_FAILED, 1)
	if failed.GetRetries() != dp.DefaultAttempts || failed.GetError() == "" {
		t.Fatalf("FAILED report: %v; want %d retries and the reason", failed, dp.DefaultAttempts)
	}
	if src.downloads != dp.DefaultAttempts {
		t.Fatalf("%d downloads, want %d", src.downloads, dp.DefaultAttempts)
	}
	if _, ok := p.Served("images/win11"); ok {
		t.Fatal("a version never fetched is served")
	}
}

func TestAStaleAnswerStopsTheFetch(t *testing.T) {
	gate := make(chan struct{})
	src, rep := &folder{dir: t.TempDir(), gate: gate}, newReports()
	rep.answer = fmt.Errorf("targets another file: %w", errdefs.ErrStaleLease)
	p := newPoint(t, src, rep, t.TempDir())
	defer p.Close()
	sha := src.put(t, []byte("x"))
	p.Distribute(context.Background(), distribute("images/win11", 1, sha, 1))
	rep.until(t, osvcv1.DistributionState_DISTRIBUTION_STATE_TRANSFERRING, 1)
	close(gate)
	p.Close() // waits for the fetch to end
	if _, ok := p.Served("images/win11"); ok {
		t.Fatal("a version the server no longer wants was put in place")
	}
	for _, m := range rep.list {
		if m.GetState() != osvcv1.DistributionState_DISTRIBUTION_STATE_TRANSFERRING {
			t.Fatalf("report %s after the stale answer", m.GetState())
		}
	}
}

func TestWhatIsServedSurvivesARestart(t *testing.T) {
	src, rep := &folder{dir: t.TempDir()}, newReports()
	dir := t.TempDir()
	p := newPoint(t, src, rep, dir)
	data := []byte("version one")
	sha := src.put(t, data)
	p.Distribute(context.Background(), distribute("images/win11", 1, sha, len(data)))
	rep.until(t, osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED, 1)
	p.Close()

	again := newPoint(t, src, rep, dir)
	defer again.Close()
	s, ok := again.Served("images/win11")
	if !ok || s.SHA256 != sha || s.Version != 1 {
		t.Fatalf("after a restart: %v, %v", s, ok)
	}
	if got, err := os.ReadFile(again.Path(s)); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the served file after a restart: %q, %v", got, err)
	}
}

func TestADamagedStateFileIsAClearError(t *testing.T) {
	dir := t.TempDir()
	for _, content := range []string{"{not json", `[{"image":"images/../x","sha256":"00"}]`} {
		if err := os.WriteFile(filepath.Join(dir, "images.json"), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := dp.New(dp.Config{Dir: dir, Source: &folder{dir: t.TempDir()}, Report: newReports().report})
		if err == nil {
			t.Fatalf("state %q: no error", content)
		}
	}
}

func TestABadDistributeIsIgnored(t *testing.T) {
	src, rep := &folder{dir: t.TempDir()}, newReports()
	p := newPoint(t, src, rep, t.TempDir())
	sha := src.put(t, []byte("x"))
	for _, m := range []*osvcv1.Distribute{
		distribute("images/../../etc", 1, sha, 1),
		distribute("win11", 1, sha, 1),
		distribute("images/win11", 1, "../"+sha[3:], 1),
		distribute("images/win11", 0, sha, 1),
	} {
		p.Distribute(context.Background(), m)
	}
	p.Close()
	if len(rep.list) != 0 || src.downloads != 0 {
		t.Fatalf("bad Distributes led to %d reports and %d downloads", len(rep.list), src.downloads)
	}
}

func TestAWithdrawnImageIsNoLongerServedAndItsFileIsRemoved(t *testing.T) {
	src, rep := &folder{dir: t.TempDir()}, newReports()
	dir := t.TempDir()
	p := newPoint(t, src, rep, dir)
	data := []byte("version one")
	sha := src.put(t, data)
	for _, image := range []string{"images/a", "images/b"} {
		p.Distribute(context.Background(), distribute(image, 1, sha, len(data)))
		rep.until(t, osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED, 1)
	}
	s, _ := p.Served("images/a")
	file := p.Path(s)
	p.Withdraw("images/a")
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("the file images/b still serves: %v", err)
	}
	p.Withdraw("images/b")
	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the file no image serves: %v, want removed", err)
	}
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	if resp, _ := get(t, srv, "/images/a", nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET a withdrawn image: %s", resp.Status)
	}
	p.Close()
	if !dp.Has(dir) {
		t.Fatal("the point's state is gone")
	}
	again := newPoint(t, src, rep, dir)
	defer again.Close()
	if images := again.Images(); len(images) != 0 {
		t.Fatalf("after a restart the point serves %v, want nothing", images)
	}
}

// tree puts the files of a package tree and its manifest in src and returns
// the Distribute of it as version v.
func tree(t *testing.T, src *folder, v int32, files map[string][]byte) *osvcv1.Distribute {
	t.Helper()
	m := &osvcv1.PackageTree{}
	for path, data := range files {
		m.Files = append(m.Files, &osvcv1.PackageFile{Path: path, Sha256: src.put(t, data), SizeBytes: int64(len(data))})
	}
	packagetree.Sort(m)
	data, err := packagetree.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	wim := packagetree.Install(m)
	return &osvcv1.Distribute{Image: "images/upgrade", Version: v, Sha256: wim.GetSha256(), SizeBytes: wim.GetSizeBytes(),
		Tree: &osvcv1.PackageTreeRef{Sha256: src.put(t, data), FileCount: int32(len(m.GetFiles()))}}
}

func TestAPackageTreeIsHeldWholeAndServedByPath(t *testing.T) {
	src, rep := &folder{dir: t.TempDir()}, newReports()
	dir := t.TempDir()
	p := newPoint(t, src, rep, dir)
	setup, wim1, wim2 := []byte("setup.exe bytes"), []byte("install.wim version 1"), []byte("install.wim version 2")
	v1 := tree(t, src, 1, map[string][]byte{"setup.exe": setup, "sources/install.wim": wim1, "sources/empty.txt": nil})
	p.Distribute(context.Background(), v1)
	rep.until(t, osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED, 1)

	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	for path, want := range map[string][]byte{"/images/upgrade/setup.exe": setup, "/images/upgrade/SOURCES/Install.wim": wim1,
		"/images/upgrade": wim1, "/images/upgrade/sources/empty.txt": {}} {
		if resp, body := get(t, srv, path, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
			t.Fatalf("GET %s: %s %q, want %q", path, resp.Status, body, want)
		}
	}
	for _, path := range []string{"/images/upgrade/sources", "/images/upgrade/missing.txt", "/images/upgrade/../upgrade/setup.exe/x"} {
		if resp, _ := get(t, srv, path, nil); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %s, want 404", path, resp.Status)
		}
	}
	_, oldWIM, _ := p.File("images/upgrade", "sources/install.wim")

	// Version 2 changes install.wim only: setup.exe stays, the old WIM goes.
	p.Distribute(context.Background(), tree(t, src, 2, map[string][]byte{"setup.exe": setup, "sources/install.wim": wim2, "sources/empty.txt": nil}))
	rep.until(t, osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED, 2)
	if _, body := get(t, srv, "/images/upgrade/sources/install.wim", nil); !bytes.Equal(body, wim2) {
		t.Fatalf("install.wim after version 2: %q", body)
	}
	if _, body := get(t, srv, "/images/upgrade/setup.exe", nil); !bytes.Equal(body, setup) {
		t.Fatalf("setup.exe after version 2: %q", body)
	}
	if _, err := os.Stat(oldWIM); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("version 1's install.wim: %v, want removed", err)
	}
	p.Close()
	again := newPoint(t, src, rep, dir)
	defer again.Close()
	if _, _, ok := again.File("images/upgrade", "Setup.exe"); !ok {
		t.Fatal("after a restart the tree's files are not served")
	}
}

func TestATreeWhoseManifestLacksTheVersionsWIMFails(t *testing.T) {
	src, rep := &folder{dir: t.TempDir()}, newReports()
	p := newPoint(t, src, rep, t.TempDir())
	defer p.Close()
	m := tree(t, src, 1, map[string][]byte{"setup.exe": []byte("x"), "sources/install.wim": []byte("wim")})
	m.Sha256, m.SizeBytes = src.put(t, []byte("another wim")), int64(len("another wim"))
	p.Distribute(context.Background(), m)
	failed := rep.until(t, osvcv1.DistributionState_DISTRIBUTION_STATE_FAILED, 1)
	if !strings.Contains(failed.GetError(), "does not hold the version's install.wim") {
		t.Fatalf("FAILED: %q", failed.GetError())
	}
	if _, ok := p.Served("images/upgrade"); ok {
		t.Fatal("a tree that does not hold the version's WIM is served")
	}
}
