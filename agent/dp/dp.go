// Package dp is the agent's distribution point role: it keeps the version
// of each image the server sends it (Distribute) in a store of its own and
// serves it to deployment clients over HTTP(S), with range requests.
//
//   - A version is fetched through a cache.Cache over the store's folder:
//     verified against its sha256, as the chunks the versions already held
//     lack (a monthly update rewrites a small part of a WIM), and resumed
//     from its partial file after an interruption.
//   - The version served changes only once the new one is complete and
//     verified: clients never see a half-fetched file. The replaced one is
//     then removed.
//   - What is served survives a restart: images.json in the folder.
//   - Every step is reported: TRANSFERRING with the bytes in place (every
//     few seconds), DISTRIBUTED, or FAILED with the reason once the retries
//     are spent.
package dp

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/osvc/osvc/agent/cache"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/names"
	"github.com/osvc/osvc/pkg/packagetree"
	"github.com/osvc/osvc/pkg/transfer"
)

// Defaults for the zero values of Config.
const (
	DefaultAttempts      = 3
	DefaultRetryBackoff  = 10 * time.Second
	DefaultProgressEvery = 2 * time.Second
)

// stateFile records what the point serves, in its folder.
const stateFile = "images.json"

// Reporter sends a report to the server and returns its answer; an error
// matching errdefs.ErrStaleLease means the server no longer wants the
// version reported (drop the transfer).
type Reporter func(ctx context.Context, r *osvcv1.DistributionReport) error

// Config configures a Point.
type Config struct {
	// Dir is the point's folder: its store (Dir/store) and its state.
	Dir string
	// Source fetches versions from the content library.
	Source cache.Downloader
	// Report sends reports to the server.
	Report Reporter
	Logger hclog.Logger
	// Attempts is how many times a version is tried before FAILED; default 3.
	Attempts int
	// RetryBackoff is the wait after a failed attempt, doubled each time;
	// default 10s.
	RetryBackoff time.Duration
	// ProgressEvery spaces the TRANSFERRING reports; default 2s.
	ProgressEvery time.Duration
	// URL returns where the point serves, e.g. http://dp1.example:8090/;
	// each report names the image's address under it. Nil: none.
	URL func() string
}

// Served is an image version the point serves.
type Served struct {
	Image     string `json:"image"`
	Version   int32  `json:"version"`
	SHA256    string `json:"sha256"`
	SizeBytes int64  `json:"size_bytes"`
	// Tree is the sha256 of the version's package tree manifest, for an OS
	// upgrade package kept as a folder tree; every file it lists is held.
	Tree string `json:"tree,omitempty"`
}

// Point is a distribution point. It is safe for concurrent use.
type Point struct {
	cfg   Config
	log   hclog.Logger
	store *cache.Cache

	mu     sync.Mutex
	served map[string]Served // by image name
	// trees are the package trees of the images served with one, by image
	// name, then by path lower-cased (Windows paths ignore case).
	trees     map[string]map[string]*osvcv1.PackageFile
	transfers map[string]*fetch // by image name
	closed    bool
	wg        sync.WaitGroup
}

// fetch is one version being fetched.
type fetch struct {
	sha256 string
	cancel context.CancelCauseFunc
	// received counts the bytes of the version's files that crossed the
	// network, over every attempt.
	received atomic.Int64
}

// New opens the point's folder, creating it when missing, and reads what it
// served before.
func New(cfg Config) (*Point, error) {
	if cfg.Dir == "" || cfg.Source == nil || cfg.Report == nil {
		return nil, errors.New("dp: Config.Dir, Source and Report are required")
	}
	if cfg.Attempts < 0 || cfg.RetryBackoff < 0 || cfg.ProgressEvery < 0 {
		return nil, errors.New("dp: Attempts, RetryBackoff and ProgressEvery must not be negative")
	}
	cfg.Attempts = cmp.Or(cfg.Attempts, DefaultAttempts)
	cfg.RetryBackoff = cmp.Or(cfg.RetryBackoff, DefaultRetryBackoff)
	cfg.ProgressEvery = cmp.Or(cfg.ProgressEvery, DefaultProgressEvery)
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("dp: create %s: %w", cfg.Dir, err)
	}
	store, err := cache.New(cache.Config{Dir: filepath.Join(cfg.Dir, "store"), Source: cfg.Source, Logger: cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("dp: %w", err)
	}
	p := &Point{cfg: cfg, log: cfg.Logger.Named("dp"), store: store, served: map[string]Served{},
		trees: map[string]map[string]*osvcv1.PackageFile{}, transfers: map[string]*fetch{}}
	if err := p.load(); err != nil {
		store.Close()
		return nil, err
	}
	return p, nil
}

func (p *Point) load() error {
	data, err := os.ReadFile(filepath.Join(p.cfg.Dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dp: %w", err)
	}
	var list []Served
	if err := json.Unmarshal(data, &list); err != nil {
		return fmt.Errorf("dp: %s is damaged (%v): move it away and distribute the images again", filepath.Join(p.cfg.Dir, stateFile), err)
	}
	for _, s := range list {
		if _, err := imageID(s.Image); err != nil || !transfer.ValidSHA256(s.SHA256) || (s.Tree != "" && !transfer.ValidSHA256(s.Tree)) {
			return fmt.Errorf("dp: %s names a bad image or file (%q, %q): move it away and distribute the images again",
				filepath.Join(p.cfg.Dir, stateFile), s.Image, s.SHA256)
		}
		if s.Tree != "" {
			t, err := p.readTree(s.Tree)
			if err != nil {
				// Served without its tree: the next Distribute fetches it again.
				p.log.Warn("the package tree of a served image cannot be read; its files are not served", "image", s.Image, "error", err)
			} else {
				p.trees[s.Image] = byPath(t)
			}
		}
		p.served[s.Image] = s
	}
	return nil
}

// readTree reads and checks the manifest sha256 from the store.
func (p *Point) readTree(sha256 string) (*osvcv1.PackageTree, error) {
	data, err := readCapped(p.store.Path(sha256), packagetree.MaxManifestBytes)
	if err != nil {
		return nil, err
	}
	return packagetree.Parse(data)
}

func readCapped(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is over %d bytes", path, limit)
	}
	return data, nil
}

// byPath indexes a tree's files by their path lower-cased.
func byPath(t *osvcv1.PackageTree) map[string]*osvcv1.PackageFile {
	m := make(map[string]*osvcv1.PackageFile, len(t.GetFiles()))
	for _, f := range t.GetFiles() {
		m[strings.ToLower(f.GetPath())] = f
	}
	return m
}

// File returns the file at path of image's package tree, matched
// ignoring case, and where the point keeps it.
func (p *Point) File(image, path string) (*osvcv1.PackageFile, string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f, ok := p.trees[image][strings.ToLower(path)]
	if !ok {
		return nil, "", false
	}
	return f, p.store.Path(f.GetSha256()), true
}

// save writes what the point serves; p.mu is held.
func (p *Point) save() error {
	list := make([]Served, 0, len(p.served))
	for _, s := range p.served {
		list = append(list, s)
	}
	data, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(p.cfg.Dir, stateFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o640); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// imageID is the id of images/{id}.
func imageID(name string) (string, error) {
	id, ok := strings.CutPrefix(name, "images/")
	if !ok {
		return "", fmt.Errorf("%s: want images/{id}", names.Quote(name))
	}
	return id, names.ValidateID(id)
}

// Served returns what the point serves for image, if anything.
func (p *Point) Served(image string) (Served, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.served[image]
	return s, ok
}

// Images returns the images the point serves, in name order.
func (p *Point) Images() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Sorted(maps.Keys(p.served))
}

// Withdraw stops serving image: its fetch under way stops and its file is
// removed unless another image serves it.
func (p *Point) Withdraw(image string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if f := p.transfers[image]; f != nil {
		f.cancel(errors.New("withdrawn from this distribution point"))
	}
	old, ok := p.served[image]
	if !ok {
		return
	}
	files := p.blobsOf(image)
	delete(p.served, image)
	if err := p.save(); err != nil {
		p.served[image] = old
		p.log.Error("cannot record the withdrawal; the image is still served", "image", image, "error", err)
		return
	}
	delete(p.trees, image)
	p.log.Info("image withdrawn", "image", image, "version", old.Version)
	p.removeUnused(files, image+" (withdrawn)")
}

// Has tells whether dir holds a distribution point's state: an agent that
// was one serves again at start what it served.
func Has(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, stateFile))
	return err == nil
}

// Path is where the point keeps a served file.
func (p *Point) Path(s Served) string { return p.store.Path(s.SHA256) }

// Distribute starts fetching the version m names, in place of a fetch of
// another version of the same image; the same version again is a no-op
// while it is fetched, and reported DISTRIBUTED at once when served. ctx
// parents the fetch.
func (p *Point) Distribute(ctx context.Context, m *osvcv1.Distribute) {
	if err := validate(m); err != nil {
		p.log.Warn("Distribute refused", "image", m.GetImage(), "error", err)
		return
	}
	image := m.GetImage()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	if f := p.transfers[image]; f != nil {
		if f.sha256 == m.GetSha256() {
			return
		}
		f.cancel(errors.New("a newer version is to be distributed"))
	}
	fctx, cancel := context.WithCancelCause(ctx)
	f := &fetch{sha256: m.GetSha256(), cancel: cancel}
	p.transfers[image] = f
	served := p.served[image].SHA256 == m.GetSha256() && p.served[image].Tree == m.GetTree().GetSha256()
	p.wg.Go(func() {
		defer cancel(nil)
		defer p.forget(image, f)
		if served {
			p.report(fctx, f, m, osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED, m.GetSizeBytes(), 0, "")
			return
		}
		p.run(fctx, f, m)
	})
}

func validate(m *osvcv1.Distribute) error {
	if _, err := imageID(m.GetImage()); err != nil {
		return errdefs.InvalidArgument("distribute.image", err.Error())
	}
	if !transfer.ValidSHA256(m.GetSha256()) {
		return errdefs.InvalidArgument("distribute.sha256", "not a sha256")
	}
	if m.GetVersion() <= 0 || m.GetSizeBytes() < 0 {
		return errdefs.InvalidArgument("distribute.version", "want a positive version and a size")
	}
	if t := m.GetTree(); t != nil && !transfer.ValidSHA256(t.GetSha256()) {
		return errdefs.InvalidArgument("distribute.tree.sha256", "not a sha256")
	}
	return nil
}

func (p *Point) forget(image string, f *fetch) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.transfers[image] == f {
		delete(p.transfers, image)
	}
}

// run fetches m's version, trying again after a failure, and serves it.
func (p *Point) run(ctx context.Context, f *fetch, m *osvcv1.Distribute) {
	log := p.log.With("image", m.GetImage(), "version", m.GetVersion(), "sha256", m.GetSha256())
	backoff := p.cfg.RetryBackoff
	for attempt := 0; ; attempt++ {
		err := p.attempt(ctx, f, m, int32(attempt))
		if err == nil {
			log.Info("distributed", "size", m.GetSizeBytes())
			p.report(ctx, f, m, osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED, m.GetSizeBytes(), 0, "")
			return
		}
		if ctx.Err() != nil {
			log.Info("distribution stopped", "reason", context.Cause(ctx))
			return
		}
		if attempt+1 >= p.cfg.Attempts {
			log.Error("distribution failed", "attempts", attempt+1, "error", err)
			p.report(ctx, f, m, osvcv1.DistributionState_DISTRIBUTION_STATE_FAILED, 0, int32(attempt+1), err.Error())
			return
		}
		log.Warn("distribution attempt failed; trying again", "attempt", attempt+1, "retry_in", backoff, "error", err)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff *= 2
	}
}

// attempt fetches the version once, reporting progress meanwhile, and
// makes it the one served.
func (p *Point) attempt(ctx context.Context, f *fetch, m *osvcv1.Distribute, retries int32) error {
	var done atomic.Int64
	stop := make(chan struct{})
	reported := make(chan struct{})
	go func() {
		defer close(reported)
		t := time.NewTicker(p.cfg.ProgressEvery)
		defer t.Stop()
		p.report(ctx, f, m, osvcv1.DistributionState_DISTRIBUTION_STATE_TRANSFERRING, done.Load(), retries, "")
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				p.report(ctx, f, m, osvcv1.DistributionState_DISTRIBUTION_STATE_TRANSFERRING, done.Load(), retries, "")
			}
		}
	}()
	tree, err := p.fetchAll(ctx, f, m, &done)
	close(stop)
	<-reported
	if err != nil {
		return err
	}
	return p.serve(ctx, m, tree)
}

// fetchAll fetches the version's file, and for a package tree its manifest
// and every file it lists, counting the bytes in place in done and those
// received in f.
func (p *Point) fetchAll(ctx context.Context, f *fetch, m *osvcv1.Distribute, done *atomic.Int64) (*osvcv1.PackageTree, error) {
	var placed int64
	get := func(sha string, size int64) error {
		path, received, release, err := p.store.AcquireCounted(ctx, sha, func(n, _ int64) { done.Store(placed + n) })
		if err != nil {
			return err
		}
		f.received.Add(received)
		defer release()
		info, err := os.Stat(path)
		if err != nil {
			return err
		}
		if size != 0 && info.Size() != size {
			return fmt.Errorf("%s has %d bytes, the server said %d", sha, info.Size(), size)
		}
		placed += info.Size()
		done.Store(placed)
		return nil
	}
	if err := get(m.GetSha256(), m.GetSizeBytes()); err != nil {
		return nil, err
	}
	if m.GetTree() == nil {
		return nil, nil
	}
	if err := get(m.GetTree().GetSha256(), 0); err != nil {
		return nil, fmt.Errorf("package tree manifest: %w", err)
	}
	tree, err := p.readTree(m.GetTree().GetSha256())
	if err != nil {
		return nil, fmt.Errorf("package tree manifest %s: %w", m.GetTree().GetSha256(), err)
	}
	if in := packagetree.Install(tree); in == nil || in.GetSha256() != m.GetSha256() {
		return nil, fmt.Errorf("package tree manifest %s does not hold the version's install.wim %s", m.GetTree().GetSha256(), m.GetSha256())
	}
	for _, f := range packagetree.Blobs(tree) {
		if f.GetSha256() == m.GetSha256() {
			continue
		}
		if err := get(f.GetSha256(), f.GetSizeBytes()); err != nil {
			return nil, fmt.Errorf("%s: %w", f.GetPath(), err)
		}
	}
	return tree, nil
}

// serve makes m's version the one served for its image and removes the
// file it replaces when no other image serves it.
func (p *Point) serve(ctx context.Context, m *osvcv1.Distribute, tree *osvcv1.PackageTree) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	image := m.GetImage()
	old, had := p.served[image]
	oldFiles := p.blobsOf(image)
	p.served[image] = Served{Image: image, Version: m.GetVersion(), SHA256: m.GetSha256(), SizeBytes: m.GetSizeBytes(), Tree: m.GetTree().GetSha256()}
	if err := p.save(); err != nil {
		if had {
			p.served[image] = old
		} else {
			delete(p.served, image)
		}
		return fmt.Errorf("record the version served: %w", err)
	}
	if tree != nil {
		p.trees[image] = byPath(tree)
	} else {
		delete(p.trees, image)
	}
	if had {
		p.removeUnused(oldFiles, fmt.Sprintf("%s version %d", old.Image, old.Version))
	}
	return nil
}

// blobsOf returns every file image is served from: its WIM, and its
// tree's manifest and files; p.mu is held.
func (p *Point) blobsOf(image string) []string {
	s, ok := p.served[image]
	if !ok {
		return nil
	}
	out := []string{s.SHA256}
	if s.Tree != "" {
		out = append(out, s.Tree)
	}
	for _, f := range p.trees[image] {
		if f.GetSizeBytes() > 0 {
			out = append(out, f.GetSha256())
		}
	}
	return out
}

// removeUnused removes those of files no image is served from; p.mu is held.
func (p *Point) removeUnused(files []string, what string) {
	used := map[string]bool{}
	for image := range p.served {
		for _, sha := range p.blobsOf(image) {
			used[sha] = true
		}
	}
	for _, sha := range files {
		if used[sha] {
			continue
		}
		used[sha] = true // once
		if err := p.store.Remove(sha); err != nil {
			p.log.Warn("cannot remove a file no image serves any more", "of", what, "sha256", sha, "error", err)
		}
	}
}

// report sends one report; a stale answer stops the fetch.
func (p *Point) report(ctx context.Context, f *fetch, m *osvcv1.Distribute, state osvcv1.DistributionState, bytes int64, retries int32, errText string) {
	err := p.cfg.Report(ctx, &osvcv1.DistributionReport{
		Image: m.GetImage(), Version: m.GetVersion(), Sha256: m.GetSha256(), State: state,
		BytesTransferred: bytes, BytesReceived: f.received.Load(), Retries: retries, Error: errText, Url: p.imageURL(m.GetImage()),
	})
	switch {
	case err == nil, ctx.Err() != nil:
	case errors.Is(err, errdefs.ErrStaleLease), errors.Is(err, errdefs.ErrNotFound):
		p.log.Info("the server no longer wants this version here: stopping", "image", m.GetImage(), "version", m.GetVersion(), "reason", err)
		f.cancel(err)
	default:
		p.log.Warn("cannot report the distribution", "image", m.GetImage(), "state", state.String(), "error", err)
	}
}

// imageURL is where the point serves image; "" when its address is unknown.
func (p *Point) imageURL(image string) string {
	if p.cfg.URL == nil {
		return ""
	}
	base := p.cfg.URL()
	if base == "" {
		return ""
	}
	return strings.TrimSuffix(base, "/") + "/" + image
}

// Close stops the fetches under way (their partial files stay, for the
// next start to resume) and waits for them.
func (p *Point) Close() {
	p.mu.Lock()
	p.closed = true
	for _, f := range p.transfers {
		f.cancel(errors.New("the agent is shutting down"))
	}
	p.mu.Unlock()
	p.wg.Wait()
	p.store.Close()
}
