package wimlib

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/osvc/osvc/agent/engine"
	"github.com/osvc/osvc/pkg/applicability"
	"github.com/osvc/osvc/pkg/updatepkg"
	"github.com/osvc/osvc/pkg/winpath"
)

// AddPackage applies one update file to the mounted index: a CAB package, or
// an MSU whose inner packages are applied in order. The package is staged
// in a folder beside the mount folder and installed by copying its
// components into Windows/WinSxS, its update.mum into
// Windows/servicing/Packages and recording it in Sessions.xml.
//
// Any other file is Unsupported, and so is a package the engine cannot
// install faithfully, which it never reports Applied: one osvc does not
// read (Quantum, an MSU that is or carries a WIM) and one Windows built
// (updatepkg.Package.NotInstallable: nested packages, DCM-compressed
// manifests, PSF payload, Windows' catalogs and WinSxS names), once it is
// known to apply (one already installed or not applicable says so). The
// result's Detail says why.
func (e *Engine) AddPackage(ctx context.Context, m *engine.Mount, path string, progress engine.ProgressFunc) (engine.PackageResult, error) {
	log := e.logger.With("file", path, "mount", m.Dir)
	ext := strings.ToLower(filepath.Ext(path))
	if ext != ".cab" && ext != ".msu" {
		return unsupported(log, filepath.Base(path)+" is not a CAB or MSU package"), nil
	}
	pkg, err := updatepkg.Open(path)
	if errors.Is(err, updatepkg.ErrUnsupported) {
		return unsupported(log, err.Error()), nil
	}
	if err != nil {
		return engine.PackageResult{}, fmt.Errorf("add package %s: %w", path, err)
	}
	if progress == nil {
		progress = func(int) {}
	}
	if m.Info == nil {
		// Applicability needs the index's description; a Mount made
		// elsewhere than Mount may lack it.
		if m.Info, err = e.indexInfo(ctx, m.WIM, m.Index); err != nil {
			return engine.PackageResult{}, fmt.Errorf("add package %s: %w", path, err)
		}
	}
	img, err := openImage(m)
	if err != nil {
		return engine.PackageResult{}, fmt.Errorf("add package %s: %w", path, err)
	}
	defer img.Close()
	doc, err := readSessions(img)
	if err != nil {
		return engine.PackageResult{}, fmt.Errorf("add package %s: %w", path, err)
	}
	// Decide on the manifests Open validated, so that a file none of whose
	// packages will be installed is never extracted.
	apply := make([]bool, len(pkg.Manifests))
	result := engine.PackageResult{Outcome: engine.NotApplicable}
	var reasons []string
	for i, man := range pkg.Manifests {
		decided := e.decide(log, m, img, doc, man)
		switch decided.Outcome {
		case engine.Applied:
			apply[i] = true
		case engine.AlreadyInstalled:
			result.Outcome = engine.AlreadyInstalled
		default:
			reasons = append(reasons, decided.Detail)
		}
	}
	if !slices.Contains(apply, true) {
		if result.Outcome == engine.NotApplicable {
			result.Detail = strings.Join(reasons, "; ")
		}
		return result, nil
	}
	if len(pkg.NotInstallable) > 0 {
		// Installing what osvc can of it would record a package installed
		// that is not: report it, for the dism engine to apply.
		return unsupported(log, "the wimlib engine does not install it: "+strings.Join(pkg.NotInstallable, "; ")), nil
	}
	if err := ctx.Err(); err != nil {
		return engine.PackageResult{}, fmt.Errorf("add package %s: %w", path, err)
	}
	progress(0)
	stageDir, err := os.MkdirTemp(filepath.Dir(m.Dir), "stage-")
	if err != nil {
		return engine.PackageResult{}, fmt.Errorf("add package %s: create the staging folder: %w", path, err)
	}
	defer func() {
		if err := os.RemoveAll(stageDir); err != nil {
			log.Warn("removing the staging folder failed", "dir", stageDir, "error", err)
		}
	}()
	staged, err := pkg.Stage(stageDir)
	if errors.Is(err, updatepkg.ErrUnsupported) {
		// e.g. payload compressed with Quantum, which the cabinet reader cannot expand.
		return unsupported(log, err.Error()), nil
	}
	if err != nil {
		return engine.PackageResult{}, fmt.Errorf("add package %s: stage: %w", path, err)
	}
	var todo []*updatepkg.Staged
	for i, s := range staged {
		if apply[i] {
			todo = append(todo, s)
		}
	}
	if err := e.install(ctx, log, img, doc, todo, progress); err != nil {
		return engine.PackageResult{}, fmt.Errorf("add package %s: %w", path, err)
	}
	return engine.PackageResult{Outcome: engine.Applied}, nil
}

// unsupported logs and returns the result of a file the engine does not
// apply, saying why after the message administrators know.
func unsupported(log hclog.Logger, reason string) engine.PackageResult {
	log.Warn(engine.UnsupportedMessage, "reason", reason)
	return engine.PackageResult{Outcome: engine.Unsupported, Detail: engine.UnsupportedMessage + ": " + reason}
}

// decide returns Applied when the package should be installed, or why not,
// by the applicability rule the catalog uses too. Packages recorded
// Installed or Superseded count as installed; the supersedes lists of those
// recorded Installed say what they replace.
func (e *Engine) decide(log hclog.Logger, m *engine.Mount, img *os.Root, doc *sessionsDoc, man *updatepkg.Manifest) engine.PackageResult {
	log = log.With("package", man.Identity.String(), "kb", man.KB)
	var installed []applicability.Installed
	for _, in := range doc.installed() {
		if in.State != stateInstalled && in.State != stateSuperseded {
			continue
		}
		ai := applicability.Installed{Identity: in.Identity, KB: in.KB}
		if in.State == stateInstalled {
			if newer, err := readInstalledManifest(img, in.Identity); err == nil {
				ai.Supersedes = newer.Supersedes
			} else {
				log.Debug("cannot read an installed package's manifest", "installed", in.Identity, "error", err)
			}
		}
		installed = append(installed, ai)
	}
	ix := applicability.NewIndex(m.Info.Index, m.Info.Arch, m.Info.Build, installed)
	switch verdict, reason := applicability.Check(man.Applicability(), ix); verdict {
	case applicability.Applies:
		return engine.PackageResult{Outcome: engine.Applied}
	case applicability.AlreadyInstalled:
		log.Info("package already installed")
		return engine.PackageResult{Outcome: engine.AlreadyInstalled, Detail: reason}
	default:
		log.Info("package not applicable", "reason", reason)
		return engine.PackageResult{Outcome: engine.NotApplicable, Detail: reason}
	}
}

// Folders inside the image.
var (
	packagesDir = filepath.Join("Windows", "servicing", "Packages")
	winSxSDir   = filepath.Join("Windows", "WinSxS")
)

func readInstalledManifest(img *os.Root, identity string) (*updatepkg.Manifest, error) {
	if err := winpath.CheckName(identity + ".mum"); err != nil {
		return nil, err
	}
	data, err := img.ReadFile(filepath.Join(packagesDir, identity+".mum"))
	if err != nil {
		return nil, err
	}
	return updatepkg.ParseManifest(data)
}

// copyOp is one file to write into the image (dst is relative to its root):
// from src, or data when set.
type copyOp struct {
	src, dst string
	data     []byte
	size     int64
}

// install copies the staged packages into the image and records them as
// installed in one session.
func (e *Engine) install(ctx context.Context, log hclog.Logger, img *os.Root, doc *sessionsDoc, todo []*updatepkg.Staged, progress engine.ProgressFunc) error {
	var ops []copyOp
	var total int64
	for _, s := range todo {
		sops, err := planCopies(s)
		if err != nil {
			return err
		}
		for _, op := range sops {
			total += op.size
		}
		ops = append(ops, sops...)
	}
	// AddPackage reported 0 before staging; the last file reports 100.
	var done int64
	last := 0
	report := func() {
		pct := 100
		if total > 0 {
			pct = int(done * 100 / total)
		}
		if pct != last {
			last = pct
			progress(pct)
		}
	}
	for _, op := range ops {
		if err := ctx.Err(); err != nil {
			return err
		}
		if op.data != nil {
			if err := img.MkdirAll(filepath.Dir(op.dst), 0o755); err != nil {
				return err
			}
			if err := img.WriteFile(op.dst, op.data, 0o644); err != nil {
				return err
			}
		} else if err := copyInto(img, op.dst, op.src); err != nil {
			return err
		}
		done += op.size
		report()
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var pkgs []sessionPackage
	for _, s := range todo {
		pkgs = append(pkgs, sessionPackage{
			ID:          s.Manifest.Identity.String(),
			Name:        s.Manifest.KB,
			TargetState: stateInstalled,
			State:       stateInstalled,
		})
		log.Info("package installed", "package", s.Manifest.Identity.String(), "kb", s.Manifest.KB,
			"components", len(s.Components))
	}
	doc.add(time.Now(), pkgs)
	if err := writeSessions(img, doc); err != nil {
		return err
	}
	log.Info("copied package files into the image", "files", len(ops), "bytes", total)
	return nil
}

// planCopies lists the files one staged package puts into the image.
func planCopies(s *updatepkg.Staged) ([]copyOp, error) {
	var ops []copyOp
	id := s.Manifest.Identity.String()
	// The names were checked by updatepkg.Open with the same rule; checked
	// again here because they become names inside the image.
	if err := winpath.CheckName(id + ".mum"); err != nil {
		return nil, fmt.Errorf("package %s: %w", id, err)
	}
	for _, sc := range s.Components {
		name := sc.Component.SxSName()
		if err := winpath.CheckName(name); err != nil {
			return nil, fmt.Errorf("component %s: %w", sc.Component.Name, err)
		}
		dst := filepath.Join(winSxSDir, name)
		files, err := payloadFiles(sc)
		if err != nil {
			return nil, fmt.Errorf("component %s: %w", name, err)
		}
		for _, rel := range files {
			src := filepath.Join(sc.PayloadDir, rel)
			st, err := os.Lstat(src)
			if err != nil {
				return nil, fmt.Errorf("component %s: %w", name, err)
			}
			if !st.Mode().IsRegular() {
				return nil, fmt.Errorf("component %s: payload %s is not a regular file", name, rel)
			}
			ops = append(ops, copyOp{src: src, dst: filepath.Join(dst, rel), size: st.Size()})
		}
		if sc.ManifestPath != "" {
			st, err := os.Stat(sc.ManifestPath)
			if err != nil {
				return nil, fmt.Errorf("component %s: %w", name, err)
			}
			ops = append(ops, copyOp{
				src:  sc.ManifestPath,
				dst:  filepath.Join(winSxSDir, "Manifests", name+".manifest"),
				size: st.Size(),
			})
		}
	}
	mumDst := filepath.Join(packagesDir, id+".mum")
	mum := filepath.Join(s.Dir, "update.mum")
	if st, err := os.Stat(mum); err == nil && st.Mode().IsRegular() {
		ops = append(ops, copyOp{src: mum, dst: mumDst, size: st.Size()})
	} else {
		data, err := s.Manifest.Marshal()
		if err != nil {
			return nil, fmt.Errorf("package %s: %w", id, err)
		}
		ops = append(ops, copyOp{dst: mumDst, data: data, size: int64(len(data))})
	}
	return ops, nil
}

// payloadFiles lists a component's payload, relative to its PayloadDir:
// the files its manifest names, which Stage wrote there.
func payloadFiles(sc updatepkg.StagedComponent) ([]string, error) {
	out := make([]string, 0, len(sc.Component.Files))
	for _, f := range sc.Component.Files {
		rel, err := winpath.Clean(f)
		if err != nil {
			return nil, fmt.Errorf("payload file: %w", err)
		}
		out = append(out, filepath.FromSlash(rel))
	}
	return out, nil
}
