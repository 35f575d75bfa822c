package wimlib

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/osvc/osvc/agent/engine"
	"github.com/osvc/osvc/pkg/applicability"
	"github.com/osvc/osvc/pkg/updatepkg"
)

// Cleanup is DISM's /Cleanup-Image /StartComponentCleanup /ResetBase: in
// Windows/WinSxS every version of a component (same architecture, name and
// public key token) lower than the highest is removed with its manifest, and
// the packages an installed package supersedes are marked Superseded.
func (e *Engine) Cleanup(ctx context.Context, m *engine.Mount) error {
	log := e.logger.With("mount", m.Dir)
	img, err := openImage(m)
	if err != nil {
		return fmt.Errorf("component cleanup in %s: %w", m.Dir, err)
	}
	defer img.Close()
	entries, err := fs.ReadDir(img.FS(), filepath.ToSlash(winSxSDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("component cleanup in %s: %w", m.Dir, err)
	}
	type key struct{ arch, name, token string }
	type version struct {
		dir     string
		version string
	}
	groups := map[key][]version{}
	var keys []key
	for _, ent := range entries {
		if !ent.IsDir() {
			continue
		}
		c, ok := updatepkg.ParseSxSName(ent.Name())
		if !ok {
			continue
		}
		k := key{strings.ToLower(c.Arch), strings.ToLower(c.Name), strings.ToLower(c.PublicKeyToken)}
		if _, seen := groups[k]; !seen {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], version{dir: ent.Name(), version: c.Version})
	}
	var removed int
	var removedBytes int64
	for _, k := range keys {
		vs := groups[k]
		if len(vs) < 2 {
			continue
		}
		highest := vs[0].version
		for _, v := range vs[1:] {
			if updatepkg.CompareVersions(v.version, highest) > 0 {
				highest = v.version
			}
		}
		for _, v := range vs {
			if updatepkg.CompareVersions(v.version, highest) >= 0 {
				continue
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("component cleanup in %s: %w", m.Dir, err)
			}
			n, err := removeComponent(img, v.dir)
			if err != nil {
				return fmt.Errorf("component cleanup in %s: %w", m.Dir, err)
			}
			removed++
			removedBytes += n
			log.Info("removed superseded component", "component", v.dir, "kept_version", highest, "bytes", n)
		}
	}
	superseded, err := e.markSuperseded(ctx, img)
	if err != nil {
		return fmt.Errorf("component cleanup in %s: %w", m.Dir, err)
	}
	log.Info("component cleanup done", "components_removed", removed, "bytes_removed", removedBytes,
		"packages_superseded", superseded)
	return nil
}

// removeComponent removes a WinSxS component folder and its manifest and
// returns the bytes they held.
func removeComponent(img *os.Root, name string) (int64, error) {
	var n int64
	dir := filepath.Join(winSxSDir, name)
	err := fs.WalkDir(img.FS(), filepath.ToSlash(dir), func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			n += info.Size()
		}
		return nil
	})
	if err != nil {
		return n, err
	}
	if err := img.RemoveAll(dir); err != nil {
		return n, err
	}
	manifest := filepath.Join(winSxSDir, "Manifests", name+".manifest")
	if st, err := img.Stat(manifest); err == nil {
		n += st.Size()
		if err := img.Remove(manifest); err != nil {
			return n, err
		}
	}
	return n, nil
}

// markSuperseded records as Superseded every installed package that another
// installed package's manifest lists in its supersedes.
func (e *Engine) markSuperseded(ctx context.Context, img *os.Root) (int, error) {
	doc, err := readSessions(img)
	if err != nil {
		return 0, err
	}
	installed := doc.installed()
	var active []engine.Installed
	for _, in := range installed {
		if in.State == stateInstalled {
			active = append(active, in)
		}
	}
	var marks []sessionPackage
	for _, newer := range active {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		man, err := readInstalledManifest(img, newer.Identity)
		if err != nil {
			e.logger.Warn("cannot read an installed package's manifest, its supersedence is not applied",
				"package", newer.Identity, "error", err)
			continue
		}
		for _, old := range active {
			if old.Identity == newer.Identity || !applicability.Supersedes(man.Supersedes, old.Identity, old.KB) {
				continue
			}
			if slices.ContainsFunc(marks, func(p sessionPackage) bool { return p.ID == old.Identity }) {
				continue
			}
			marks = append(marks, sessionPackage{ID: old.Identity, Name: old.KB, TargetState: stateSuperseded, State: stateSuperseded})
			e.logger.Info("package superseded", "package", old.Identity, "kb", old.KB, "by", newer.Identity)
		}
	}
	if len(marks) == 0 {
		return 0, nil
	}
	doc.add(time.Now(), marks)
	return len(marks), writeSessions(img, doc)
}
