package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/osvc/osvc/agent/engine"
)

// discardMounts unmounts, without committing, every mount at or below dir:
// mounts a crashed agent (or a crashed attempt of a run) left behind, as the
// engine lists them. The WIM they were mounted from is left as it was. A
// wimlib mount whose FUSE daemon died with the agent cannot be unmounted by
// wimlib-imagex; the engine then detaches it lazily, which is as good for a
// discard.
func discardMounts(ctx context.Context, eng engine.Engine, dir string, log hclog.Logger) error {
	mounts, err := eng.Mounts(ctx, dir)
	if err != nil {
		return fmt.Errorf("list the mounts in %s: %w", dir, err)
	}
	var errs []error
	for _, mp := range mounts {
		if mp.Foreign {
			// Not an image the engine mounted: someone else's, and the
			// engine's unmount cannot detach it anyway.
			errs = append(errs, fmt.Errorf("%s is a %s mount, not a WIM mounted by a run: left alone: unmount it or move it out of the work folder", mp.Dir, mp.Detail))
			continue
		}
		log.Warn("a mount left by an earlier run: unmounting it without commit", "dir", mp.Dir, "detail", mp.Detail)
		// Discarding needs the folder only; Info and WIM serve a commit.
		uerr := eng.Unmount(ctx, &engine.Mount{Dir: mp.Dir}, false)
		still, err := eng.Mounts(ctx, mp.Dir)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		mounted := false
		for _, m := range still {
			mounted = mounted || m.Dir == mp.Dir
		}
		if mounted {
			if uerr == nil {
				uerr = errors.New("still listed as mounted after the unmount")
			}
			errs = append(errs, fmt.Errorf("discard the mount in %s: %w: unmount it by hand (with the %s engine's tool)", mp.Dir, uerr, eng.Name()))
			continue
		}
		if uerr != nil {
			log.Warn("the mount is gone, though unmounting it reported an error", "dir", mp.Dir, "error", uerr)
		}
		log.Info("stale mount discarded", "dir", mp.Dir)
	}
	return errors.Join(errs...)
}

// isLog tells the files of a work folder that outlive the run.
func isLog(name string) bool { return name == LogFile || name == EngineLogFile }

// tidyWork removes everything from a work folder but the logs: the copies
// (source.wim, export.wim and their partial downloads), wimlib's staging
// folders, stage-* folders, linked updates and the mount folder. A work
// folder that still holds a mount point is left whole: deleting into a
// mounted image, or from under its FUSE daemon, is never safe. It returns the
// names it removed.
func tidyWork(ctx context.Context, eng engine.Engine, work string, log hclog.Logger) ([]string, error) {
	entries, err := os.ReadDir(work)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tidy the work folder %s: %w", work, err)
	}
	mounts, err := eng.Mounts(ctx, work)
	if err != nil {
		return nil, fmt.Errorf("tidy the work folder: %w", err)
	}
	if len(mounts) > 0 {
		return nil, fmt.Errorf("tidy the work folder: %s is still mounted: left in place", mounts[0].Dir)
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		if isLog(e.Name()) && e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(work, e.Name())
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
			continue
		}
		log.Debug("leftover removed", "path", p)
		removed = append(removed, e.Name())
	}
	return removed, errors.Join(errs...)
}

// workFolders lists the run folders under <drive>/OfflineImageServicing.
// Only real folders count: a symlink there is not followed.
func workFolders(drive string) ([]string, error) {
	root := filepath.Join(drive, WorkFolder)
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list the work folders in %s: %w", root, err)
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, filepath.Join(root, e.Name()))
		}
	}
	return dirs, nil
}

// Recover cleans up what earlier runs left under <drive>/OfflineImageServicing
// when their agent crashed: every mount point in a work folder is unmounted
// without commit (the engine needs Unmount with commit false to work from
// Mount.Dir alone), then the copies and other leftovers are removed; the logs
// stay. The agent calls it at start, before it takes any run. It goes on past
// a folder it cannot clean and returns what it could not do.
func Recover(ctx context.Context, eng engine.Engine, drive string, logger hclog.Logger) error {
	if eng == nil {
		return errors.New("recover the work folders: an engine is required")
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	// The engine's own records first: DISM forgets mounts whose folders
	// are gone only when told to.
	if err := eng.Recover(ctx); err != nil {
		logger.Named("recovery").Warn("the engine could not release what a crashed agent left", "engine", eng.Name(), "error", err)
	}
	return RecoverFolders(ctx, eng, drive, logger)
}

// RecoverFolders is Recover without the engine's own records: the work
// folders of one drive only. The agent calls it for a drive it starts to
// use while other runs may be under way elsewhere, where releasing every
// mount the engine knows would hit theirs; no run of its own is on that drive.
func RecoverFolders(ctx context.Context, eng engine.Engine, drive string, logger hclog.Logger) error {
	if eng == nil {
		return errors.New("recover the work folders: an engine is required")
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	log := logger.Named("recovery")
	dirs, err := workFolders(drive)
	if err != nil {
		return fmt.Errorf("recover the work folders: %w", err)
	}
	var errs []error
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			errs = append(errs, fmt.Errorf("recover %s: %w", dir, err))
			continue
		}
		leftovers := 0
		for _, e := range entries {
			if !isLog(e.Name()) || !e.Type().IsRegular() {
				leftovers++
			}
		}
		mounts, err := eng.Mounts(ctx, dir)
		if err != nil {
			errs = append(errs, fmt.Errorf("recover %s: %w", dir, err))
			continue
		}
		if leftovers == 0 && len(mounts) == 0 {
			continue // an ended run: its logs only
		}
		log.Warn("work folder left by an earlier run: cleaning it up", "dir", dir, "mounts", len(mounts), "leftovers", leftovers)
		if err := discardMounts(ctx, eng, dir, log); err != nil {
			errs = append(errs, fmt.Errorf("recover %s: %w", dir, err))
			continue
		}
		removed, err := tidyWork(ctx, eng, dir, log)
		if err != nil {
			errs = append(errs, fmt.Errorf("recover %s: %w", dir, err))
			continue
		}
		log.Info("work folder cleaned up, logs kept", "dir", dir, "removed", strings.Join(removed, " "))
	}
	return errors.Join(errs...)
}

// RemoveExpired removes the work folders of ended runs (nothing but logs
// left) last modified more than retention before now: the pipeline touches a
// work folder when a run starts and when it ends, so that is the age of the
// run's logs. keep, when set, names run ids (the folder names) not to touch:
// the runs the agent holds. A folder with anything but logs in it is left to
// Recover or to its run. It returns the folders removed.
func RemoveExpired(ctx context.Context, eng engine.Engine, drive string, retention time.Duration, now time.Time, keep func(runID string) bool, logger hclog.Logger) ([]string, error) {
	if retention <= 0 {
		return nil, fmt.Errorf("remove expired work folders: retention %s: want a positive duration", retention)
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	log := logger.Named("retention")
	dirs, err := workFolders(drive)
	if err != nil {
		return nil, fmt.Errorf("remove expired work folders: %w", err)
	}
	var removed []string
	var errs []error
	for _, dir := range dirs {
		if keep != nil && keep(filepath.Base(dir)) {
			continue
		}
		st, err := os.Lstat(dir)
		if err != nil {
			errs = append(errs, fmt.Errorf("remove expired work folders: %w", err))
			continue
		}
		age := now.Sub(st.ModTime())
		if age < retention {
			continue
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			errs = append(errs, fmt.Errorf("remove expired work folders: %w", err))
			continue
		}
		ended := true
		for _, e := range entries {
			ended = ended && isLog(e.Name()) && e.Type().IsRegular()
		}
		if !ended {
			continue
		}
		if mounts, err := eng.Mounts(ctx, dir); err != nil || len(mounts) > 0 {
			continue // the folder itself is a mount point: not ours to delete
		}
		// File by file, never RemoveAll: whatever appeared since the listing stays.
		var ferr error
		for _, e := range entries {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				ferr = err
			}
		}
		if ferr == nil {
			ferr = os.Remove(dir)
		}
		if ferr != nil {
			errs = append(errs, fmt.Errorf("remove the expired work folder %s: %w", dir, ferr))
			continue
		}
		log.Info("removed the work folder of an ended run", "dir", dir, "modified", st.ModTime().UTC().Format(time.RFC3339),
			"age", age.Round(time.Minute).String(), "retention", retention.String())
		removed = append(removed, dir)
	}
	return removed, errors.Join(errs...)
}
