// Package dism is the Windows servicing engine: it runs dism.exe for every
// operation (mount, add package, component cleanup, commit, export) and
// reads its console: progress from its progress bars, listings from its
// key/value output, and the outcome from its exit code and "Error: …" line.
//
// Every command runs with /English, so listings keep their English keys;
// codes, which the parsers rely on, read the same in every language. A run's
// engine writes DISM's log to the run's work folder (/LogPath) and its
// scratch files there too (/ScratchDir), so both stay on the chosen drive.
//
// On Linux the engine is tested through the real exec path with
// cmd/dism-replay standing in for dism.exe, against real recorded output.
package dism

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/osvc/osvc/agent/engine"
	"github.com/osvc/osvc/pkg/runlogs"
	"github.com/osvc/osvc/pkg/updatepkg"
)

// Name is the engine's name as agents announce it.
const Name = "dism"

// busyRetries and busyPause: how often and how far apart a command that
// found the mount in use runs again.
const (
	busyRetries = 4
	busyPause   = 2 * time.Second
)

// cleanupTimeout bounds a discard run after the caller's context ended.
const cleanupTimeout = 5 * time.Minute

// Config configures the dism engine.
type Config struct {
	// Logger receives every command run and its output.
	Logger hclog.Logger
	// Binary is dism.exe: a path, or a name looked up in PATH. Default:
	// %WINDIR%\System32\Dism.exe on Windows. Elsewhere it must be given:
	// only a stand-in (cmd/dism-replay, for tests) runs there.
	Binary string
	// Work is the run's work folder: DISM's log goes to Work\dism.log and
	// its scratch files to Work\scratch. Empty for the agent's own engine
	// (recovery), which uses DISM's defaults.
	Work string
	// CodePage is the code page dism.exe writes its console in: 0 for the
	// system's OEM code page on Windows (UTF-8 elsewhere), or a Windows code
	// page number (850, 936, 65001 for UTF-8).
	CodePage int
}

// Engine services WIM files with dism.exe.
type Engine struct {
	logger  hclog.Logger
	binary  string
	work    string
	scratch string
	// codePage is the code page of dism.exe's output.
	codePage int
	// pause waits between tries of a busy command; tests shorten it.
	pause func(context.Context, time.Duration) error
}

var _ engine.Engine = (*Engine)(nil)

// ErrNoDISM is returned by New where there is no dism.exe to run.
var ErrNoDISM = errors.New("the dism engine runs dism.exe, which Windows has and this system does not: use the wimlib engine here")

// New finds dism.exe and returns the engine.
func New(cfg Config) (*Engine, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	bin := cfg.Binary
	if bin == "" {
		if runtime.GOOS != "windows" {
			return nil, ErrNoDISM
		}
		bin = filepath.Join(cmpOr(os.Getenv("WINDIR"), `C:\Windows`), "System32", "Dism.exe")
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("dism engine: %s not found: %w", bin, err)
	}
	cp := cfg.CodePage
	if cp == 0 {
		cp = systemCodePage()
	}
	e := &Engine{logger: logger.Named("dism"), binary: path, work: cfg.Work, codePage: cp, pause: sleep}
	if cfg.Work != "" {
		e.scratch = filepath.Join(cfg.Work, "scratch")
	}
	return e, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Name returns "dism".
func (e *Engine) Name() string { return Name }

// LogFile is DISM's log in a run's work folder; the pipeline keeps it and
// uploads it when the run ends.
const LogFile = runlogs.EngineLog

// run runs dism.exe with args after the switches every command gets, logs
// its output line by line (progress redraws aside), reports the percent of
// its progress bars to progress, and returns its output and how it ended.
// An error is one of running it at all; a command that ran and failed has
// a Result that is not OK.
func (e *Engine) run(ctx context.Context, progress engine.ProgressFunc, args ...string) ([]byte, Result, error) {
	full := []string{"/English"}
	if e.work != "" {
		if err := os.MkdirAll(e.scratch, 0o750); err != nil {
			return nil, Result{}, fmt.Errorf("dism scratch folder: %w", err)
		}
		full = append(full, "/LogPath:"+filepath.Join(e.work, LogFile), "/ScratchDir:"+e.scratch)
	}
	full = append(full, args...)
	// The command line is for whoever digs: the run's log at debug.
	e.logger.Debug("running", "command", e.binary+" "+strings.Join(full, " "))
	cmd := exec.CommandContext(ctx, e.binary, full...)
	var stdout, stderr bytes.Buffer
	var w io.Writer = &stdout
	if progress != nil {
		w = io.MultiWriter(&stdout, newProgressWriter(progress))
	}
	cmd.Stdout = w
	cmd.Stderr = &stderr
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	outText, errText := decode(e.codePage, stdout.Bytes()), decode(e.codePage, stderr.Bytes())
	for _, l := range lines(outText) {
		if !boundary(l) || !strings.HasPrefix(l, "[") {
			e.logger.Info("dism", "output", l)
		}
	}
	for _, l := range lines(errText) {
		e.logger.Warn("dism", "output", l)
	}
	var exit *exec.ExitError
	switch {
	case err == nil:
		return outText, Result{}, nil
	case ctx.Err() != nil:
		return nil, Result{}, fmt.Errorf("dism %s: %w", verb(args), ctx.Err())
	case errors.As(err, &exit):
		out := append(outText, errText...)
		return out, parseResult(exit.ExitCode(), out), nil
	}
	return nil, Result{}, fmt.Errorf("run dism %s: %w", verb(args), err)
}

// verb is the DISM verb of args, for messages: the first /Xxx-Yyy.
func verb(args []string) string {
	for _, a := range args {
		if strings.HasPrefix(a, "/") && strings.Contains(a, "-") && !strings.Contains(a, ":") {
			return a
		}
	}
	return strings.Join(args, " ")
}

// runOK runs a command that must succeed; one that finds the mount in use
// runs again a few times, a pause apart.
func (e *Engine) runOK(ctx context.Context, progress engine.ProgressFunc, args ...string) ([]byte, error) {
	for attempt := 1; ; attempt++ {
		out, res, err := e.run(ctx, progress, args...)
		if err != nil {
			return nil, err
		}
		if res.OK() {
			return out, nil
		}
		if !res.busy() || attempt == busyRetries {
			return nil, failure(verb(args), res)
		}
		e.logger.Warn("the mount is in use; trying again", "command", verb(args), "code", res.Code, "attempt", attempt)
		if err := e.pause(ctx, busyPause); err != nil {
			return nil, failure(verb(args), res)
		}
	}
}

// Inspect reads the indexes of a WIM file: /Get-WimInfo lists them, then
// once per index for its details (architecture, version, edition, languages).
func (e *Engine) Inspect(ctx context.Context, wim string) ([]engine.Index, error) {
	out, err := e.runOK(ctx, nil, "/Get-WimInfo", "/WimFile:"+wim)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", wim, err)
	}
	listed := parseWimInfo(out)
	if len(listed) == 0 {
		return nil, fmt.Errorf("inspect %s: dism listed no image", wim)
	}
	indexes := make([]engine.Index, 0, len(listed))
	for _, ix := range listed {
		detail, err := e.indexInfo(ctx, wim, ix.Index)
		if err != nil {
			return nil, err
		}
		indexes = append(indexes, *detail)
	}
	return indexes, nil
}

// indexInfo describes one index of a WIM.
func (e *Engine) indexInfo(ctx context.Context, wim string, index int) (*engine.Index, error) {
	out, err := e.runOK(ctx, nil, "/Get-WimInfo", "/WimFile:"+wim, "/Index:"+strconv.Itoa(index))
	if err != nil {
		return nil, fmt.Errorf("inspect %s index %d: %w", wim, index, err)
	}
	for _, ix := range parseWimInfo(out) {
		if ix.Index == index {
			return &ix, nil
		}
	}
	return nil, fmt.Errorf("inspect %s: dism describes no index %d", wim, index)
}

// Verify applies every index of the WIM to a folder on the drive with
// /CheckIntegrity and /Verify: DISM reads every file of every image and
// checks it against the hashes the WIM records, which is the only full
// check DISM offers. The folder is removed after each index.
func (e *Engine) Verify(ctx context.Context, wim string) error {
	if _, err := os.Stat(wim); err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	indexes, err := e.Inspect(ctx, wim)
	if err != nil {
		return fmt.Errorf("verify %s: %w: %w", wim, engine.ErrDamaged, err)
	}
	base := e.scratch
	if base == "" {
		base = filepath.Dir(wim)
	}
	for _, ix := range indexes {
		dir, err := os.MkdirTemp(base, "verify-")
		if err != nil {
			return fmt.Errorf("verify %s: %w", wim, err)
		}
		_, res, err := e.run(ctx, nil, "/Apply-Image", "/ImageFile:"+wim, "/Index:"+strconv.Itoa(ix.Index), "/ApplyDir:"+dir, "/CheckIntegrity", "/Verify")
		if rerr := os.RemoveAll(dir); rerr != nil {
			e.logger.Warn("removing the verification folder failed", "dir", dir, "error", rerr)
		}
		if err != nil {
			return fmt.Errorf("verify %s: %w", wim, err)
		}
		if !res.OK() {
			return fmt.Errorf("verify %s index %d: %w: %w", wim, ix.Index, engine.ErrDamaged, failure("/Apply-Image", res))
		}
	}
	return nil
}

// Mount mounts one index read-write in dir.
func (e *Engine) Mount(ctx context.Context, wim string, index int, dir string) (*engine.Mount, error) {
	info, err := e.indexInfo(ctx, wim, index)
	if err != nil {
		return nil, fmt.Errorf("mount %s index %d: %w", wim, index, err)
	}
	if _, err := e.runOK(ctx, nil, "/Mount-Image", "/ImageFile:"+wim, "/Index:"+strconv.Itoa(index), "/MountDir:"+dir); err != nil {
		return nil, fmt.Errorf("mount %s index %d in %s: %w", wim, index, dir, err)
	}
	e.logger.Info("mounted", "wim", wim, "index", index, "dir", dir, "name", info.Name)
	return &engine.Mount{WIM: wim, Index: index, Dir: dir, Info: info}, nil
}

// AddPackage applies a .cab or .msu with /Add-Package. A package whose
// identities the image has installed already is not handed to DISM; one
// DISM finds not applicable (0x800f081e) is NotApplicable with DISM's
// words; any other failure is an error with DISM's code and message.
func (e *Engine) AddPackage(ctx context.Context, m *engine.Mount, path string, progress engine.ProgressFunc) (engine.PackageResult, error) {
	ext := strings.ToLower(filepath.Ext(path))
	if ext != ".cab" && ext != ".msu" {
		e.logger.Warn(engine.UnsupportedMessage, "file", path)
		return engine.PackageResult{Outcome: engine.Unsupported, Detail: engine.UnsupportedMessage}, nil
	}
	if installed, err := e.alreadyInstalled(ctx, m, path); err != nil {
		return engine.PackageResult{}, err
	} else if installed {
		return engine.PackageResult{Outcome: engine.AlreadyInstalled}, nil
	}
	_, res, err := e.run(ctx, progress, "/Image:"+m.Dir, "/Add-Package", "/PackagePath:"+path)
	switch {
	case err != nil:
		return engine.PackageResult{}, fmt.Errorf("add package: %w", err)
	case res.OK():
		return engine.PackageResult{Outcome: engine.Applied}, nil
	case res.Code == codeNotApplicable:
		e.logger.Info("package not applicable", "file", path, "code", res.Code, "message", res.Message)
		return engine.PackageResult{Outcome: engine.NotApplicable, Detail: res.Code + ": " + res.Message}, nil
	}
	return engine.PackageResult{}, fmt.Errorf("add package: %w", failure("/Add-Package", res))
}

// alreadyInstalled reads the package identities of a CAB or MSU osvc can
// read and tells whether the mounted image has every one installed. A
// package osvc cannot read (a Quantum cabinet) is left to DISM.
func (e *Engine) alreadyInstalled(ctx context.Context, m *engine.Mount, path string) (bool, error) {
	pkg, err := updatepkg.Open(path)
	if err != nil {
		e.logger.Debug("package not read ahead; DISM decides", "file", path, "error", err)
		return false, nil
	}
	installed, err := e.InstalledPackages(ctx, m)
	if err != nil {
		return false, err
	}
	have := map[string]bool{}
	for _, in := range installed {
		if strings.EqualFold(in.State, "Installed") || strings.EqualFold(in.State, "Superseded") {
			have[strings.ToLower(in.Identity)] = true
		}
	}
	for _, man := range pkg.Manifests {
		if !have[strings.ToLower(man.Identity.String())] {
			return false, nil
		}
	}
	return len(pkg.Manifests) > 0, nil
}

// InstalledPackages lists the packages of the mounted index (/Get-Packages).
func (e *Engine) InstalledPackages(ctx context.Context, m *engine.Mount) ([]engine.Installed, error) {
	out, err := e.runOK(ctx, nil, "/Image:"+m.Dir, "/Get-Packages")
	if err != nil {
		return nil, fmt.Errorf("list the packages of %s: %w", m.Dir, err)
	}
	return parsePackages(out), nil
}

// Cleanup removes superseded components: /Cleanup-Image
// /StartComponentCleanup /ResetBase.
func (e *Engine) Cleanup(ctx context.Context, m *engine.Mount) error {
	if _, err := e.runOK(ctx, nil, "/Image:"+m.Dir, "/Cleanup-Image", "/StartComponentCleanup", "/ResetBase"); err != nil {
		return fmt.Errorf("component cleanup of %s: %w", m.Dir, err)
	}
	return nil
}

// Unmount commits the index and unmounts it (/Unmount-Image /Commit), or
// discards it (/Discard). A commit after the context ended is a discard; a
// discard runs even then, within its own time limit. A failed commit is
// followed by a discard, so no mount is left behind.
func (e *Engine) Unmount(ctx context.Context, m *engine.Mount, commit bool) error {
	if commit && ctx.Err() != nil {
		err := ctx.Err()
		if derr := e.Unmount(ctx, m, false); derr != nil {
			return fmt.Errorf("unmount %s: not committed (%w), and discarding failed: %w", m.Dir, err, derr)
		}
		return fmt.Errorf("unmount %s: changes discarded, not committed: %w", m.Dir, err)
	}
	runCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	how := "/Discard"
	if commit {
		how = "/Commit"
	}
	_, err := e.runOK(runCtx, nil, "/Unmount-Image", "/MountDir:"+m.Dir, how)
	if err == nil {
		e.logger.Info("unmounted", "dir", m.Dir, "commit", commit)
		return nil
	}
	if commit {
		e.logger.Error("commit failed, discarding the changes", "dir", m.Dir, "error", err)
		if _, derr := e.runOK(runCtx, nil, "/Unmount-Image", "/MountDir:"+m.Dir, "/Discard"); derr != nil {
			e.logger.Error("discard after a failed commit failed", "dir", m.Dir, "error", derr)
		}
	}
	return fmt.Errorf("unmount %s (commit %t): %w", m.Dir, commit, err)
}

// Export copies one index of src into dst (/Export-Image): only the data
// the index uses is written. DISM prints only a percent; progress is told
// it as that share of src's size, the most the export can write.
func (e *Engine) Export(ctx context.Context, src string, index int, dst string, progress engine.BytesFunc) error {
	var pct engine.ProgressFunc
	if progress != nil {
		st, err := os.Stat(src)
		if err != nil {
			return fmt.Errorf("export %s index %d: %w", src, index, err)
		}
		pct = func(p int) { progress(st.Size()*int64(p)/100, st.Size()) }
	}
	if _, err := e.runOK(ctx, pct, "/Export-Image", "/SourceImageFile:"+src, "/SourceIndex:"+strconv.Itoa(index), "/DestinationImageFile:"+dst); err != nil {
		return fmt.Errorf("export %s index %d to %s: %w", src, index, dst, err)
	}
	return nil
}

// ReadInstalled mounts the index read-only in a folder beside the WIM,
// lists its packages and discards the mount.
func (e *Engine) ReadInstalled(ctx context.Context, wim string, index int) ([]engine.Installed, error) {
	dir, err := os.MkdirTemp(filepath.Dir(wim), "read-")
	if err != nil {
		return nil, fmt.Errorf("read installed packages of %s index %d: %w", wim, index, err)
	}
	defer os.RemoveAll(dir)
	if _, err := e.runOK(ctx, nil, "/Mount-Image", "/ImageFile:"+wim, "/Index:"+strconv.Itoa(index), "/MountDir:"+dir, "/ReadOnly"); err != nil {
		return nil, fmt.Errorf("read installed packages of %s index %d: %w", wim, index, err)
	}
	m := &engine.Mount{WIM: wim, Index: index, Dir: dir}
	installed, err := e.InstalledPackages(ctx, m)
	if uerr := e.Unmount(ctx, m, false); uerr != nil && err == nil {
		err = uerr
	}
	if err != nil {
		return nil, fmt.Errorf("read installed packages of %s index %d: %w", wim, index, err)
	}
	return installed, nil
}

// Mounts lists the images DISM has mounted at or below dir
// (/Get-MountedWimInfo), deepest first.
func (e *Engine) Mounts(ctx context.Context, dir string) ([]engine.MountPoint, error) {
	out, err := e.runOK(ctx, nil, "/Get-MountedWimInfo")
	if err != nil {
		return nil, fmt.Errorf("list the mounted images: %w", err)
	}
	var mps []engine.MountPoint
	for _, m := range parseMounted(out) {
		if under(m.Dir, dir) {
			mps = append(mps, engine.MountPoint{Dir: m.Dir, Detail: fmt.Sprintf("%s index %d, status %s", m.ImageFile, m.Index, m.Status)})
		}
	}
	// Deepest first, so nested mounts come off before the ones holding them.
	for i := 1; i < len(mps); i++ {
		for j := i; j > 0 && len(mps[j].Dir) > len(mps[j-1].Dir); j-- {
			mps[j], mps[j-1] = mps[j-1], mps[j]
		}
	}
	return mps, nil
}

// under tells whether path is dir or below it, comparing as Windows does:
// without regard to case, '\' and '/' alike.
func under(path, dir string) bool {
	norm := func(s string) string {
		return strings.TrimRight(strings.ToLower(strings.ReplaceAll(s, `\`, "/")), "/")
	}
	p, d := norm(path), norm(dir)
	return p == d || strings.HasPrefix(p, d+"/")
}

// Recover runs /Cleanup-Mountpoints: DISM forgets the mounts whose folders
// a crash left, and releases their resources.
func (e *Engine) Recover(ctx context.Context) error {
	if _, err := e.runOK(ctx, nil, "/Cleanup-Mountpoints"); err != nil {
		return fmt.Errorf("clean up DISM's mount points: %w", err)
	}
	return nil
}
