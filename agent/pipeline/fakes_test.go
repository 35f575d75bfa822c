package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/osvc/osvc/agent/engine"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/runlogs"
	"github.com/osvc/osvc/pkg/transfer"
)

// recordingEngine records the calls the pipeline makes, with their
// arguments, and hands them on to the engine it wraps: the plain-file engine
// where the point is the pipeline's order, wimlib where it is real servicing.
type recordingEngine struct {
	engine.Engine

	mu    sync.Mutex
	calls []string
	// before, when set, runs before a call is handed on; an error it returns
	// fails the call. Tests cancel a run in the middle of a call with it.
	before func(ctx context.Context, call string) error
}

func (e *recordingEngine) record(ctx context.Context, call string) error {
	e.mu.Lock()
	e.calls = append(e.calls, call)
	before := e.before
	e.mu.Unlock()
	if before != nil {
		return before(ctx, call)
	}
	return nil
}

// servicing lists the calls that change an image, in order: mount, add,
// cleanup, unmount and export ("add 1 kb1.cab", "unmount 1 commit").
func (e *recordingEngine) servicing() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, c := range e.calls {
		switch strings.Fields(c)[0] {
		case "mount", "add", "cleanup", "unmount", "export":
			out = append(out, c)
		}
	}
	return out
}

func (e *recordingEngine) Mount(ctx context.Context, wim string, index int, dir string) (*engine.Mount, error) {
	if err := e.record(ctx, fmt.Sprintf("mount %d", index)); err != nil {
		return nil, err
	}
	return e.Engine.Mount(ctx, wim, index, dir)
}

func (e *recordingEngine) AddPackage(ctx context.Context, m *engine.Mount, path string, progress engine.ProgressFunc) (engine.PackageResult, error) {
	if err := e.record(ctx, fmt.Sprintf("add %d %s", m.Index, filepath.Base(path))); err != nil {
		return engine.PackageResult{}, err
	}
	return e.Engine.AddPackage(ctx, m, path, progress)
}

func (e *recordingEngine) Cleanup(ctx context.Context, m *engine.Mount) error {
	if err := e.record(ctx, fmt.Sprintf("cleanup %d", m.Index)); err != nil {
		return err
	}
	return e.Engine.Cleanup(ctx, m)
}

func (e *recordingEngine) Unmount(ctx context.Context, m *engine.Mount, commit bool) error {
	how := "discard"
	if commit {
		how = "commit"
	}
	// A mount left by a crashed run has no index; none is expected here.
	if err := e.record(ctx, fmt.Sprintf("unmount %d %s", m.Index, how)); err != nil {
		return err
	}
	return e.Engine.Unmount(ctx, m, commit)
}

func (e *recordingEngine) Export(ctx context.Context, src string, index int, dst string, progress engine.BytesFunc) error {
	if err := e.record(ctx, fmt.Sprintf("export %d", index)); err != nil {
		return err
	}
	return e.Engine.Export(ctx, src, index, dst, progress)
}

func (e *recordingEngine) Inspect(ctx context.Context, wim string) ([]engine.Index, error) {
	if err := e.record(ctx, "inspect "+filepath.Base(wim)); err != nil {
		return nil, err
	}
	return e.Engine.Inspect(ctx, wim)
}

func (e *recordingEngine) Verify(ctx context.Context, wim string) error {
	if err := e.record(ctx, "verify "+filepath.Base(wim)); err != nil {
		return err
	}
	return e.Engine.Verify(ctx, wim)
}

// fileImage is the plain-file engine's image: JSON listing the indexes and
// the packages installed in each.
type fileImage struct {
	Indexes []fileIndex `json:"indexes"`
}

type fileIndex struct {
	Name      string   `json:"name"`
	Installed []string `json:"installed"`
}

func readImage(path string) (*fileImage, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var im fileImage
	if err := json.Unmarshal(data, &im); err != nil {
		return nil, fmt.Errorf("%s is not an image of the plain-file engine: %w", path, err)
	}
	return &im, nil
}

func (im *fileImage) write(path string) error {
	data, err := json.Marshal(im)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o640)
}

// filePackage is an update file for the plain-file engine: "KB outcome",
// outcome one of applied, not-applicable, unsupported or fail.
func filePackage(kb, outcome string) []byte { return []byte(kb + " " + outcome) }

// fileEngine is an engine.Engine on plain files: an image is a fileImage, a
// mount is a folder holding the index's package list, and an update file
// says what applying it does. It checks what a real engine would refuse
// (a busy mount folder, an unknown index, a file that is not there).
type fileEngine struct{}

var _ engine.Engine = fileEngine{}

// installedFile holds a mounted index's package list in its mount folder.
const installedFile = "installed"

func (fileEngine) Name() string { return "file" }

func (fileEngine) Inspect(_ context.Context, wim string) ([]engine.Index, error) {
	im, err := readImage(wim)
	if err != nil {
		return nil, err
	}
	out := make([]engine.Index, len(im.Indexes))
	for i, ix := range im.Indexes {
		out[i] = engine.Index{Index: i + 1, Name: ix.Name}
	}
	return out, nil
}

func (fileEngine) Verify(_ context.Context, wim string) error {
	_, err := readImage(wim)
	return err
}

func (fileEngine) Mount(_ context.Context, wim string, index int, dir string) (*engine.Mount, error) {
	im, err := readImage(wim)
	if err != nil {
		return nil, err
	}
	if index < 1 || index > len(im.Indexes) {
		return nil, fmt.Errorf("%s has no index %d", wim, index)
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) > 0 {
		return nil, fmt.Errorf("mount in %s: %w", dir, errors.Join(err, engine.ErrMountBusy))
	}
	ix := im.Indexes[index-1]
	if err := os.WriteFile(filepath.Join(dir, installedFile), []byte(strings.Join(ix.Installed, "\n")), 0o640); err != nil {
		return nil, err
	}
	return &engine.Mount{WIM: wim, Index: index, Dir: dir, Info: &engine.Index{Index: index, Name: ix.Name}}, nil
}

func mounted(m *engine.Mount) ([]string, error) {
	data, err := os.ReadFile(filepath.Join(m.Dir, installedFile))
	if err != nil {
		return nil, fmt.Errorf("index %d is not mounted in %s: %w", m.Index, m.Dir, err)
	}
	return strings.Fields(string(data)), nil
}

func (fileEngine) AddPackage(_ context.Context, m *engine.Mount, path string, progress engine.ProgressFunc) (engine.PackageResult, error) {
	installed, err := mounted(m)
	if err != nil {
		return engine.PackageResult{}, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return engine.PackageResult{}, err
	}
	kb, outcome, _ := strings.Cut(string(data), " ")
	if progress != nil {
		progress(100)
	}
	switch outcome {
	case "applied":
		if slices.Contains(installed, kb) {
			return engine.PackageResult{Outcome: engine.AlreadyInstalled}, nil
		}
		installed = append(installed, kb)
		return engine.PackageResult{Outcome: engine.Applied}, os.WriteFile(filepath.Join(m.Dir, installedFile), []byte(strings.Join(installed, "\n")), 0o640)
	case "not-applicable":
		return engine.PackageResult{Outcome: engine.NotApplicable, Detail: kb + " is not for this index"}, nil
	case "unsupported":
		return engine.PackageResult{Outcome: engine.Unsupported}, nil
	}
	return engine.PackageResult{}, fmt.Errorf("%s: the package is damaged", filepath.Base(path))
}

func (fileEngine) InstalledPackages(_ context.Context, m *engine.Mount) ([]engine.Installed, error) {
	installed, err := mounted(m)
	if err != nil {
		return nil, err
	}
	out := make([]engine.Installed, len(installed))
	for i, kb := range installed {
		out[i] = engine.Installed{Identity: kb, KB: kb, State: "Installed"}
	}
	return out, nil
}

func (fileEngine) Cleanup(_ context.Context, m *engine.Mount) error {
	_, err := mounted(m)
	return err
}

func (fileEngine) Unmount(_ context.Context, m *engine.Mount, commit bool) error {
	installed, err := mounted(m)
	if err != nil {
		return err
	}
	if commit {
		im, err := readImage(m.WIM)
		if err != nil {
			return err
		}
		im.Indexes[m.Index-1].Installed = installed
		if err := im.write(m.WIM); err != nil {
			return err
		}
	}
	return os.Remove(filepath.Join(m.Dir, installedFile))
}

func (fileEngine) Export(_ context.Context, src string, index int, dst string, _ engine.BytesFunc) error {
	im, err := readImage(src)
	if err != nil {
		return err
	}
	if index < 1 || index > len(im.Indexes) {
		return fmt.Errorf("%s has no index %d", src, index)
	}
	out, err := readImage(dst)
	if errors.Is(err, os.ErrNotExist) {
		out, err = &fileImage{}, nil
	}
	if err != nil {
		return err
	}
	out.Indexes = append(out.Indexes, im.Indexes[index-1])
	return out.write(dst)
}

// Mounts lists the folders at or below dir that hold a mounted index's
// package list: the file engine's mounts.
func (fileEngine) Mounts(_ context.Context, dir string) ([]engine.MountPoint, error) {
	var out []engine.MountPoint
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if !d.IsDir() && d.Name() == installedFile {
			out = append(out, engine.MountPoint{Dir: filepath.Dir(path), Detail: "file engine"})
		}
		return nil
	})
	slices.Reverse(out)
	return out, err
}

func (fileEngine) Recover(context.Context) error { return nil }

func (fileEngine) ReadInstalled(_ context.Context, wim string, index int) ([]engine.Installed, error) {
	im, err := readImage(wim)
	if err != nil {
		return nil, err
	}
	if index < 1 || index > len(im.Indexes) {
		return nil, fmt.Errorf("%s has no index %d", wim, index)
	}
	var out []engine.Installed
	for _, kb := range im.Indexes[index-1].Installed {
		out = append(out, engine.Installed{Identity: kb, KB: kb, State: "Installed"})
	}
	return out, nil
}

// memContent is an in-memory content library: ImageTransfer and
// UpdateFiles for runs where a server is not the point. It records uploads,
// and each update file's holds, checking at release that the run's work
// folder no longer links the file.
type memContent struct {
	t     *testing.T
	dir   string // where update files are served from
	drive string // the runs' drive

	mu       sync.Mutex
	blobs    map[string][]byte
	uploads  []string
	held     map[string]int
	acquired int
	// logUploads are the uploads of the run's log files, by file name;
	// logHook, when set, runs first and fails the upload with its error.
	logUploads map[string]string
	logHook    func(ctx context.Context, name string) error
}

func newMemContent(t *testing.T, drive string) *memContent {
	return &memContent{t: t, dir: t.TempDir(), drive: drive, blobs: make(map[string][]byte), held: make(map[string]int), logUploads: make(map[string]string)}
}

// put stores data and returns its sha256.
func (c *memContent) put(data []byte) string {
	sum := sha256.Sum256(data)
	sha := hex.EncodeToString(sum[:])
	c.mu.Lock()
	defer c.mu.Unlock()
	c.blobs[sha] = data
	return sha
}

func (c *memContent) get(sha string) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	data, ok := c.blobs[sha]
	if !ok {
		return nil, fmt.Errorf("no blob %s", sha)
	}
	return data, nil
}

func (c *memContent) Fetch(_ context.Context, sha, dst string, _ transfer.Use, progress transfer.ProgressFunc) (transfer.Source, error) {
	data, err := c.get(sha)
	if err != nil {
		return 0, err
	}
	if progress != nil {
		progress(int64(len(data)), int64(len(data)))
	}
	return transfer.Downloaded, os.WriteFile(dst, data, 0o640)
}

// Store keeps the file's data and, as transfer.Client.Store does, takes the
// file: a run that reads its result after storing it fails.
func (c *memContent) Store(ctx context.Context, path, mediaType string, _ transfer.ProgressFunc) (_ *osvcv1.Content, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err == nil {
			os.Remove(path)
		}
	}()
	if mediaType == runlogs.MediaType {
		// The pipeline uploads a copy named after the file.
		name := ""
		for _, n := range runlogs.Names {
			if strings.HasSuffix(path, n) {
				name = n
			}
		}
		c.mu.Lock()
		hook := c.logHook
		c.mu.Unlock()
		if hook != nil {
			if err := hook(ctx, name); err != nil {
				return nil, err
			}
		}
		sum := sha256.Sum256(data)
		sha := hex.EncodeToString(sum[:])
		c.mu.Lock()
		defer c.mu.Unlock()
		c.blobs[sha] = data
		c.logUploads[name] = sha
		return &osvcv1.Content{Name: "contents/" + sha, Sha256: sha, SizeBytes: int64(len(data)), MediaType: mediaType}, nil
	}
	sha := c.put(data)
	c.mu.Lock()
	c.uploads = append(c.uploads, sha)
	c.mu.Unlock()
	return &osvcv1.Content{Name: "contents/" + sha, Sha256: sha, SizeBytes: int64(len(data)), MediaType: mediaType}, nil
}

func (c *memContent) Acquire(_ context.Context, sha string, _ transfer.ProgressFunc) (string, func(), error) {
	data, err := c.get(sha)
	if err != nil {
		return "", nil, err
	}
	path := filepath.Join(c.dir, sha)
	if err := os.WriteFile(path, data, 0o640); err != nil {
		return "", nil, err
	}
	c.mu.Lock()
	c.held[sha]++
	c.acquired++
	c.mu.Unlock()
	var once sync.Once
	return path, func() {
		once.Do(func() {
			if links := c.linksTo(path); len(links) > 0 {
				c.t.Errorf("%s released while the work folder still links it: %q", sha, links)
			}
			c.mu.Lock()
			c.held[sha]--
			c.mu.Unlock()
		})
	}, nil
}

// linksTo lists the files under the drive that are path, by hard link or
// symlink.
func (c *memContent) linksTo(path string) []string {
	target, err := os.Stat(path)
	if err != nil {
		return nil
	}
	var links []string
	_ = filepath.WalkDir(c.drive, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if st, err := os.Stat(p); err == nil && os.SameFile(st, target) {
			links = append(links, p)
		}
		return nil
	})
	return links
}

// holding returns the update files still held, and how many holds were taken.
func (c *memContent) holding() (held []string, acquired int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for sha, n := range c.held {
		if n != 0 {
			held = append(held, sha)
		}
	}
	return held, c.acquired
}

// logFile returns the uploaded log file name, "" when none was uploaded.
func (c *memContent) logFile(name string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	sha, ok := c.logUploads[name]
	if !ok {
		return ""
	}
	return string(c.blobs[sha])
}

// uploaded lists the uploads of images, the run's log files aside.
func (c *memContent) uploaded() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.uploads)
}
