// Package wimlib is the Linux servicing engine: it drives wimlib-imagex for
// the WIM operations and installs CAB/MSU update packages into the mounted
// image the way DISM lays them out (WinSxS, servicing/Packages, Sessions.xml).
package wimlib

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/osvc/osvc/agent/engine"
	"github.com/osvc/osvc/agent/mountinfo"
	"github.com/osvc/osvc/pkg/runlogs"
	"github.com/osvc/osvc/pkg/updatepkg"
	"github.com/osvc/osvc/pkg/wiminfo"
)

// DefaultBinary is the wimlib-imagex executable looked up in PATH.
const DefaultBinary = "wimlib-imagex"

// cleanupTimeout bounds an unmount run after the caller's context ended: a
// discard must still happen, but must not hang the agent forever.
const cleanupTimeout = 5 * time.Minute

// Config configures the wimlib engine.
type Config struct {
	// Logger receives every command run and its output; defaults to a null logger.
	Logger hclog.Logger
	// Binary is the wimlib-imagex executable, a path or a name looked up in
	// PATH; default "wimlib-imagex".
	Binary string
	// Work, when set, is the run's work folder: the engine keeps its own
	// log there, Work/dism.log (the name DISM's /LogPath has on Windows, so
	// a run's files read the same on both engines), with every command it
	// runs, the command's output and how it ended, and what it does to the
	// mounted image. Those lines go to Logger too. Empty for the agent's
	// own engine (recovery), which keeps no such log.
	Work string
}

// Engine services WIM files with wimlib-imagex.
type Engine struct {
	logger hclog.Logger
	binary string
}

var _ engine.Engine = (*Engine)(nil)

// New checks that wimlib-imagex can be found and returns the engine.
func New(cfg Config) (*Engine, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	bin := cfg.Binary
	if bin == "" {
		bin = DefaultBinary
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("wimlib engine: %s not found: install wimtools (apt-get install wimtools): %w", bin, err)
	}
	if cfg.Work != "" {
		logger = engineLog(logger, filepath.Join(cfg.Work, runlogs.EngineLog))
	}
	return &Engine{logger: logger.Named("wimlib"), binary: path}, nil
}

// engineLog is a logger writing to the engine's log file at path and
// passing every line on to the run's logger.
func engineLog(run hclog.Logger, path string) hclog.Logger {
	l := hclog.NewInterceptLogger(&hclog.LoggerOptions{
		Level:      hclog.Debug,
		Output:     appendFile(path),
		TimeFormat: "2006-01-02 15:04:05.000Z07:00",
	})
	l.RegisterSink(forward{to: run})
	return l
}

// appendFile appends each write to the file at path, opened for that write
// only: the engine has no Close, and the log must be whole on disk at any
// moment the pipeline uploads it.
type appendFile string

func (p appendFile) Write(b []byte) (int, error) {
	f, err := os.OpenFile(string(p), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return 0, err
	}
	n, err := f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// forward passes the engine log's lines on to the run's logger, under the
// same name, so the run's log keeps telling what the engine does.
type forward struct{ to hclog.Logger }

func (f forward) Accept(name string, level hclog.Level, msg string, args ...any) {
	f.to.Named(name).Log(level, msg, args...)
}

// Name returns "wimlib".
func (e *Engine) Name() string { return "wimlib" }

// run runs wimlib-imagex, logs its output line by line and returns its
// stdout. logStdout is false for commands whose stdout is data (info --xml).
func (e *Engine) run(ctx context.Context, logStdout bool, args ...string) ([]byte, error) {
	return e.runProgress(ctx, logStdout, nil, args...)
}

// runProgress is run that also hands stdout, as it is written, to progress
// when not nil.
func (e *Engine) runProgress(ctx context.Context, logStdout bool, progress io.Writer, args ...string) ([]byte, error) {
	// The command line is for whoever digs: the run's log at debug, this
	// engine's own log (dism.log) always.
	e.logger.Debug("running", "command", e.binary+" "+strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, e.binary, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	if progress != nil {
		cmd.Stdout = io.MultiWriter(&stdout, progress)
	}
	cmd.Stderr = &stderr
	// mountrw forks a FUSE daemon; should it keep our pipes open, Wait must
	// not block on it.
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	err := cmd.Run()
	if logStdout {
		logLines(e.logger, hclog.Info, stdout.Bytes())
	}
	logLines(e.logger, hclog.Warn, stderr.Bytes())
	e.logger.Debug("command ended", "command", args[0], "exit_code", cmd.ProcessState.ExitCode(), "duration", time.Since(start).Round(time.Millisecond).String())
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("%s %s: %w", filepath.Base(e.binary), args[0], ctxErr)
		}
		msg := lastLines(stderr.Bytes())
		if msg == "" && logStdout {
			msg = lastLines(stdout.Bytes())
		}
		if msg != "" {
			return nil, fmt.Errorf("%s %s: %w: %s", filepath.Base(e.binary), args[0], err, msg)
		}
		return nil, fmt.Errorf("%s %s: %w", filepath.Base(e.binary), args[0], err)
	}
	return stdout.Bytes(), nil
}

// outputLines splits command output into lines; wimlib-imagex redraws its
// progress with '\r', so only the last state of such a line is kept.
func outputLines(out []byte) []string {
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.LastIndexByte(strings.TrimRight(line, "\r"), '\r'); i >= 0 {
			line = line[i+1:]
		}
		line = strings.TrimSpace(line)
		if line != "" {
			lines = append(lines, line)
		}
	}
	return lines
}

func logLines(logger hclog.Logger, level hclog.Level, out []byte) {
	for _, line := range outputLines(out) {
		logger.Log(level, "wimlib-imagex", "output", line)
	}
}

// lastLines is the command's own error message: its last few output lines.
func lastLines(out []byte) string {
	lines := outputLines(out)
	if len(lines) > 4 {
		lines = lines[len(lines)-4:]
	}
	return strings.Join(lines, " ")
}

// Inspect reads the indexes of a WIM file.
func (e *Engine) Inspect(ctx context.Context, wim string) ([]engine.Index, error) {
	out, err := e.run(ctx, false, "info", wim, "--xml")
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", wim, err)
	}
	idx, err := wiminfo.ParseXML(out)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", wim, err)
	}
	return idx, nil
}

// Mounts lists the mount points at or below dir from the kernel's mount
// table: wimlib-imagex mounts are FUSE file systems (fuse.wimfs); any other
// mount there is Foreign.
func (e *Engine) Mounts(_ context.Context, dir string) ([]engine.MountPoint, error) {
	mounts, err := mountinfo.Under(dir)
	if err != nil {
		return nil, err
	}
	out := make([]engine.MountPoint, len(mounts))
	for i, m := range mounts {
		out[i] = engine.MountPoint{Dir: m.Dir, Foreign: !strings.HasPrefix(m.FSType, "fuse"), Detail: m.FSType}
	}
	return out, nil
}

// Recover has nothing to release: wimlib keeps no records of its mounts
// beside the mount table, which Mounts reads.
func (e *Engine) Recover(context.Context) error { return nil }

// Verify runs wimlib-imagex verify: it reads every image's metadata and
// every blob the images use, and checks each against the SHA-1 the file
// records. A file that fails is ErrDamaged with wimlib's own message.
func (e *Engine) Verify(ctx context.Context, wim string) error {
	// A file that cannot be read is not a damaged one: say so first, since
	// wimlib-imagex fails both the same way.
	f, err := os.Open(wim)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	f.Close()
	_, err = e.run(ctx, false, "verify", wim)
	if err == nil {
		return nil
	}
	var exit *exec.ExitError
	if ctx.Err() == nil && errors.As(err, &exit) {
		return fmt.Errorf("verify %s: %w: %w", wim, engine.ErrDamaged, err)
	}
	return fmt.Errorf("verify %s: %w", wim, err)
}

// Mount mounts one index read-write in dir, which must exist and be empty.
func (e *Engine) Mount(ctx context.Context, wim string, index int, dir string) (*engine.Mount, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("mount %s index %d: %w", wim, index, err)
	}
	if err := checkMountDir(dir); err != nil {
		return nil, fmt.Errorf("mount %s index %d: %w", wim, index, err)
	}
	info, err := e.indexInfo(ctx, wim, index)
	if err != nil {
		return nil, fmt.Errorf("mount %s index %d: %w", wim, index, err)
	}
	if _, err := e.run(ctx, true, "mountrw", wim, strconv.Itoa(index), dir); err != nil {
		// A mount killed half way may still have attached the FUSE file
		// system: never leave it behind.
		if mountinfo.IsMountPoint(dir) {
			m := &engine.Mount{WIM: wim, Index: index, Dir: dir, Info: info}
			if uerr := e.Unmount(context.WithoutCancel(ctx), m, false); uerr != nil {
				e.logger.Error("discarding a half-done mount failed", "dir", dir, "error", uerr)
			}
		}
		return nil, fmt.Errorf("mount %s index %d in %s: %w", wim, index, dir, err)
	}
	e.logger.Info("mounted", "wim", wim, "index", index, "dir", dir, "name", info.Name)
	return &engine.Mount{WIM: wim, Index: index, Dir: dir, Info: info}, nil
}

// indexInfo describes one index of a WIM.
func (e *Engine) indexInfo(ctx context.Context, wim string, index int) (*engine.Index, error) {
	indexes, err := e.Inspect(ctx, wim)
	if err != nil {
		return nil, err
	}
	for i := range indexes {
		if indexes[i].Index == index {
			return &indexes[i], nil
		}
	}
	return nil, fmt.Errorf("the WIM has %d indexes, none numbered %d: pick one of 1 to %d", len(indexes), index, len(indexes))
}

// checkMountDir refuses a folder that is missing, not a folder, already a
// mount point or not empty.
func checkMountDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("mount folder: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("mount folder %s is not a folder", dir)
	}
	if mountinfo.IsMountPoint(dir) {
		return fmt.Errorf("%s: %w (already a mount point: unmount it first)", dir, engine.ErrMountBusy)
	}
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("mount folder: %w", err)
	}
	defer f.Close()
	if names, _ := f.Readdirnames(1); len(names) > 0 {
		return fmt.Errorf("%s: %w (not empty: use an empty folder)", dir, engine.ErrMountBusy)
	}
	return nil
}

// Unmount unmounts the index, committing the changes into the WIM when commit
// is true and discarding them otherwise. A discard runs even when ctx has
// ended, so that a failed or canceled run never leaves a mount behind; a
// commit asked for under an ended ctx becomes a discard and returns ctx's error.
func (e *Engine) Unmount(ctx context.Context, m *engine.Mount, commit bool) error {
	if commit && ctx.Err() != nil {
		err := ctx.Err()
		if derr := e.Unmount(ctx, m, false); derr != nil {
			return fmt.Errorf("unmount %s: not committed (%w), and discarding failed: %w", m.Dir, err, derr)
		}
		return fmt.Errorf("unmount %s: changes discarded, not committed: %w", m.Dir, err)
	}
	// A commit is not interrupted half way either: wimlib appends to the WIM
	// and rewrites its header, and the FUSE daemon finishes it anyway.
	runCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	args := []string{"unmount", m.Dir}
	var revision uint32
	if commit {
		args = append(args, "--commit")
		revision = e.servicedRevision(runCtx, m)
	}
	err := e.unmountRetrying(runCtx, args)
	if err == nil {
		// wimlib-imagex returns once the FUSE daemon is done with the WIM;
		// the kernel drops the mount a moment later. Wait for it, so the
		// folder can be mounted again right away.
		if werr := waitUnmounted(runCtx, m.Dir, unmountSettle); werr != nil {
			e.lazyUnmount(runCtx, m.Dir)
			return fmt.Errorf("unmount %s (commit %t): %w", m.Dir, commit, werr)
		}
		e.logger.Info("unmounted", "dir", m.Dir, "commit", commit)
		if revision > 0 {
			return e.setRevision(runCtx, m, revision)
		}
		return nil
	}
	if !mountinfo.IsMountPoint(m.Dir) {
		return fmt.Errorf("unmount %s (commit %t): %w", m.Dir, commit, err)
	}
	if commit {
		e.logger.Error("commit failed, discarding the changes", "dir", m.Dir, "error", err)
		if _, derr := e.run(runCtx, true, "unmount", m.Dir); derr != nil {
			e.logger.Error("discard after a failed commit failed", "dir", m.Dir, "error", derr)
		}
	}
	if mountinfo.IsMountPoint(m.Dir) {
		// Last resort: detach the FUSE mount even while files are open.
		e.lazyUnmount(runCtx, m.Dir)
	}
	return fmt.Errorf("unmount %s (commit %t): %w", m.Dir, commit, err)
}

// exitFilesOpen is wimlib's WIMLIB_ERR_MOUNTED_IMAGE_IS_BUSY: files are
// still open in the mounted image.
const exitFilesOpen = 79

// unmountAttempts bounds the unmounts tried while files are still open.
const unmountAttempts = 6

// unmountRetrying runs wimlib-imagex unmount, and runs it again, after a
// pause, while it finds files still open in the image: a process forked by
// this agent (another run's wimlib-imagex) holds the engine's descriptors
// until it has exec'd, and a file indexer may look into the folder. The
// engine itself has closed every file by then; a file that stays open fails
// the unmount after the last attempt.
func (e *Engine) unmountRetrying(ctx context.Context, args []string) error {
	pause := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		_, err := e.run(ctx, true, args...)
		var exit *exec.ExitError
		if err == nil || attempt == unmountAttempts || !errors.As(err, &exit) || exit.ExitCode() != exitFilesOpen {
			return err
		}
		e.logger.Warn("files are still open in the mounted image; unmounting again", "dir", args[1], "attempt", attempt, "retry_in", pause)
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		pause *= 2
	}
}

// servicedRevision returns the OS revision (4317 of 22631.4317) that the
// newest installed cumulative update brings the mounted index to, or 0 when it
// is not above the index's own. Windows reads its version from the registry,
// which a cumulative update rewrites; an image without a registry hive carries
// it only in the WIM's XML info, so the engine keeps that up to date.
func (e *Engine) servicedRevision(ctx context.Context, m *engine.Mount) uint32 {
	if m.Info == nil {
		return 0
	}
	installed, err := e.InstalledPackages(ctx, m)
	if err != nil {
		e.logger.Warn("cannot read the installed packages for the image version", "dir", m.Dir, "error", err)
		return 0
	}
	return cumulativeRevision(installed, m.Info.Build, m.Info.Version)
}

// cumulativeRevision picks the highest revision of the installed cumulative
// updates (Package_for_RollupFix, version BUILD.REVISION.x.y) for build, when
// it is above the revision of version (MAJOR.MINOR.BUILD.REVISION).
func cumulativeRevision(installed []engine.Installed, build uint32, version string) uint32 {
	var current uint64
	if parts := strings.Split(version, "."); len(parts) == 4 {
		current, _ = strconv.ParseUint(parts[3], 10, 32)
	}
	best := uint32(current)
	for _, in := range installed {
		if in.State != stateInstalled {
			continue
		}
		id, err := updatepkg.ParseIdentity(in.Identity)
		if err != nil || !strings.HasPrefix(id.Name, "Package_for_RollupFix") {
			continue
		}
		parts := strings.Split(id.Version, ".")
		if len(parts) < 2 || parts[0] != strconv.FormatUint(uint64(build), 10) {
			continue
		}
		if rev, err := strconv.ParseUint(parts[1], 10, 32); err == nil && uint32(rev) > best {
			best = uint32(rev)
		}
	}
	if best == uint32(current) {
		return 0
	}
	return best
}

// setRevision records the serviced OS revision in the WIM's XML info.
func (e *Engine) setRevision(ctx context.Context, m *engine.Mount, revision uint32) error {
	if _, err := e.run(ctx, true, "info", m.WIM, strconv.Itoa(m.Index),
		"--image-property", "WINDOWS/VERSION/SPBUILD="+strconv.FormatUint(uint64(revision), 10)); err != nil {
		return fmt.Errorf("record OS revision %d in %s index %d: %w", revision, m.WIM, m.Index, err)
	}
	return nil
}

// unmountSettle bounds the wait for the kernel to drop a mount after
// wimlib-imagex unmount succeeded.
const unmountSettle = 30 * time.Second

// waitUnmounted polls until dir is no longer a mount point.
func waitUnmounted(ctx context.Context, dir string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for mountinfo.IsMountPoint(dir) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s is still mounted %s after wimlib-imagex unmount: %w", dir, limit, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// lazyUnmount detaches a FUSE mount that wimlib-imagex could not unmount.
func (e *Engine) lazyUnmount(ctx context.Context, dir string) {
	for _, tool := range []string{"fusermount3", "fusermount"} {
		path, err := exec.LookPath(tool)
		if err != nil {
			continue
		}
		out, err := exec.CommandContext(ctx, path, "-u", "-z", dir).CombinedOutput()
		logLines(e.logger, hclog.Warn, out)
		if err == nil {
			e.logger.Warn("detached the mount lazily", "dir", dir, "tool", tool)
			return
		}
	}
	e.logger.Error("the mount folder is still mounted: unmount it by hand (fusermount3 -u)", "dir", dir)
}

// Export copies one index of src into dst (appending when dst exists). Only
// the data the index references is written, which is how superseded
// components removed by Cleanup leave the file.
func (e *Engine) Export(ctx context.Context, src string, index int, dst string, progress engine.BytesFunc) error {
	var w io.Writer
	if progress != nil {
		w = newArchiveProgress(progress)
	}
	if _, err := e.runProgress(ctx, true, w, "export", src, strconv.Itoa(index), dst); err != nil {
		return fmt.Errorf("export %s index %d to %s: %w", src, index, dst, err)
	}
	return nil
}

// sessionsFile is where installed packages are recorded inside the image.
var sessionsFile = filepath.Join("Windows", "servicing", "Sessions", "Sessions.xml")

// ReadInstalled lists the packages installed in one index of a WIM file
// without mounting it: it extracts only Sessions.xml.
func (e *Engine) ReadInstalled(ctx context.Context, wim string, index int) ([]engine.Installed, error) {
	tmp, err := os.MkdirTemp("", "osvc-sessions-")
	if err != nil {
		return nil, fmt.Errorf("read installed packages of %s index %d: %w", wim, index, err)
	}
	defer os.RemoveAll(tmp)
	inWIM := "/" + filepath.ToSlash(sessionsFile)
	if _, err := e.run(ctx, true, "extract", wim, strconv.Itoa(index), inWIM,
		"--dest-dir="+tmp, "--no-acls", "--nullglob"); err != nil {
		return nil, fmt.Errorf("read installed packages of %s index %d: %w", wim, index, err)
	}
	data, err := os.ReadFile(filepath.Join(tmp, filepath.Base(sessionsFile)))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // no servicing session ever ran: nothing installed
	}
	if err != nil {
		return nil, fmt.Errorf("read installed packages of %s index %d: %w", wim, index, err)
	}
	doc, err := parseSessions(data)
	if err != nil {
		return nil, fmt.Errorf("read installed packages of %s index %d: %w", wim, index, err)
	}
	return doc.installed(), nil
}

// copyInto copies the file src to dst inside the image, creating dst's folder.
func copyInto(img *os.Root, dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := img.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := img.Create(dst)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}
