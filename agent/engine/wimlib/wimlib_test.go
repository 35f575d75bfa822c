package wimlib

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/osvc/osvc/agent/engine"
	"github.com/osvc/osvc/agent/mountinfo"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/integration/sampledata"
	"github.com/osvc/osvc/pkg/cab"
	"github.com/osvc/osvc/pkg/updatepkg"
)

// The sample is built once per test binary, on first use; each test copies
// what it changes.
var (
	sampleOnce sync.Once
	sampleDir  string
	sampleVal  *sampledata.Sample
	sampleErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if sampleDir != "" {
		os.RemoveAll(sampleDir)
	}
	os.Exit(code)
}

func theSample(t *testing.T) *sampledata.Sample {
	t.Helper()
	sampleOnce.Do(func() {
		sampleDir, sampleErr = os.MkdirTemp("", "osvc-wimlib-test-")
		if sampleErr != nil {
			return
		}
		sampleVal, sampleErr = sampledata.Create(context.Background(), sampledata.Options{Dir: sampleDir, PayloadBytes: 1 << 20})
	})
	if sampleErr != nil {
		t.Fatalf("create the sample: %v", sampleErr)
	}
	return sampleVal
}

// syncBuffer is a log sink tests read while the engine writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newEngine(t *testing.T) (*Engine, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	e, err := New(Config{Logger: hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Debug})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("engine log:\n%s", logs.String())
		}
	})
	return e, logs
}

// copyWIM gives a test its own copy of the sample image.
func copyWIM(t *testing.T) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "install.wim")
	data, err := os.ReadFile(theSample(t).WIM)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

// mount mounts index 1 of wim in a fresh folder and makes sure the test
// never leaves the mount behind.
func mount(t *testing.T, e *Engine, wim string) *engine.Mount {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mount")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := e.Mount(context.Background(), wim, 1, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if mountinfo.IsMountPoint(m.Dir) {
			_ = e.Unmount(context.Background(), m, false)
		}
	})
	return m
}

func update(t *testing.T, want osvcv1.UpdateState, class osvcv1.Classification) sampledata.Update {
	t.Helper()
	for _, u := range theSample(t).Updates {
		if u.Want == want && u.Classification == class {
			return u
		}
	}
	t.Fatalf("the sample has no %s update expected %s", class, want)
	return sampledata.Update{}
}

func identityOf(t *testing.T, path string) string {
	t.Helper()
	p, err := updatepkg.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return p.Manifest.Identity.String()
}

func fileSHA256(t *testing.T, path string) [32]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(data)
}

func wimDir(t *testing.T, wim string) []string {
	t.Helper()
	out, err := exec.Command("wimlib-imagex", "dir", wim, "1").CombinedOutput()
	if err != nil {
		t.Fatalf("wimlib-imagex dir: %v: %s", err, out)
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

func TestNewTellsHowToInstallAMissingBinary(t *testing.T) {
	t.Parallel()
	_, err := New(Config{Binary: "wimlib-imagex-not-installed"})
	if err == nil || !strings.Contains(err.Error(), "apt-get install wimtools") {
		t.Fatalf("New with a missing binary = %v, want an error saying to install wimtools", err)
	}
}

func TestInspectReadsTheSampleImage(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t)
	idx, err := e.Inspect(context.Background(), theSample(t).WIM)
	if err != nil {
		t.Fatal(err)
	}
	if len(idx) != 1 {
		t.Fatalf("indexes = %d, want 1", len(idx))
	}
	if got := idx[0]; got.Arch != osvcv1.Architecture_ARCHITECTURE_X64 ||
		got.Build != sampledata.DefaultBuild || got.Edition != sampledata.DefaultEdition {
		t.Errorf("index = arch %s build %d edition %q, want x64 %d %q", got.Arch, got.Build,
			got.Edition, sampledata.DefaultBuild, sampledata.DefaultEdition)
	}
}

func TestInspectOfAMissingFileSaysWhichFile(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t)
	missing := filepath.Join(t.TempDir(), "missing.wim")
	_, err := e.Inspect(context.Background(), missing)
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("Inspect(missing) = %v, want an error naming the file", err)
	}
}

func TestMountRefusesAFolderInUse(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "left-over"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := e.Mount(context.Background(), theSample(t).WIM, 1, dir)
	if !errors.Is(err, engine.ErrMountBusy) {
		t.Fatalf("Mount on a non-empty folder = %v, want ErrMountBusy", err)
	}
}

func TestAppliedPackageIsCommittedAndReadBack(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t)
	wim := copyWIM(t)
	m := mount(t, e, wim)
	if m.Info.Build != sampledata.DefaultBuild {
		t.Errorf("Mount.Info build = %d, want %d", m.Info.Build, sampledata.DefaultBuild)
	}
	u := update(t, osvcv1.UpdateState_UPDATE_STATE_APPLIED, osvcv1.Classification_CLASSIFICATION_SERVICING_STACK)
	var progress []int
	got, err := e.AddPackage(context.Background(), m, u.File, func(p int) { progress = append(progress, p) })
	if err != nil {
		t.Fatal(err)
	}
	if got.Outcome != engine.Applied {
		t.Fatalf("AddPackage = %s, want Applied", got.Outcome)
	}
	if len(progress) < 2 || progress[0] != 0 || progress[len(progress)-1] != 100 || !slices.IsSorted(progress) ||
		len(slices.Compact(slices.Clone(progress))) != len(progress) {
		t.Errorf("progress = %v, want 0 rising to 100, each percent once", progress)
	}
	id := identityOf(t, u.File)
	live, err := e.InstalledPackages(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	if len(live) != 1 || live[0].Identity != id || live[0].State != "Installed" || live[0].KB != u.KB {
		t.Fatalf("InstalledPackages = %+v, want %s installed", live, id)
	}
	if err := e.Unmount(context.Background(), m, true); err != nil {
		t.Fatal(err)
	}
	if mountinfo.IsMountPoint(m.Dir) {
		t.Fatal("the folder is still mounted after Unmount")
	}
	installed, err := e.ReadInstalled(context.Background(), wim, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(installed) != 1 || installed[0].Identity != id || installed[0].KB != u.KB || installed[0].InstallTime.IsZero() {
		t.Fatalf("ReadInstalled = %+v, want %s with its KB and install time", installed, id)
	}
	p, err := updatepkg.Open(u.File)
	if err != nil {
		t.Fatal(err)
	}
	listing := wimDir(t, wim)
	for _, c := range p.Manifest.Components {
		want := "/Windows/WinSxS/" + c.SxSName()
		if !slices.Contains(listing, want) {
			t.Errorf("wimlib-imagex dir does not list %s", want)
		}
		if !slices.Contains(listing, "/Windows/WinSxS/Manifests/"+c.SxSName()+".manifest") {
			t.Errorf("wimlib-imagex dir does not list the manifest of %s", c.SxSName())
		}
	}
	if !slices.Contains(listing, "/Windows/servicing/Packages/"+id+".mum") {
		t.Errorf("wimlib-imagex dir does not list the package's .mum")
	}

	// The folder is free again at once: the next index (here the same)
	// mounts there and shows the committed package.
	again, err := e.Mount(context.Background(), wim, 1, m.Dir)
	if err != nil {
		t.Fatalf("mount again in the same folder: %v", err)
	}
	live, err = e.InstalledPackages(context.Background(), again)
	if err != nil || len(live) != 1 || live[0].Identity != id {
		t.Errorf("InstalledPackages after remount = %+v, %v; want %s", live, err, id)
	}
	if err := e.Unmount(context.Background(), again, false); err != nil {
		t.Fatal(err)
	}
}

func TestReadInstalledOfAnImageNeverServicedIsEmpty(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t)
	installed, err := e.ReadInstalled(context.Background(), theSample(t).WIM, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(installed) != 0 {
		t.Fatalf("ReadInstalled = %+v, want nothing", installed)
	}
}

func TestAddPackageOutcomes(t *testing.T) {
	t.Parallel()
	e, logs := newEngine(t)
	m := mount(t, e, copyWIM(t))
	t.Cleanup(func() { _ = e.Unmount(context.Background(), m, false) })

	notCab := filepath.Join(t.TempDir(), "windows11.0-kb5099999-x64.cab")
	if err := os.WriteFile(notCab, []byte("this is no cabinet"), 0o644); err != nil {
		t.Fatal(err)
	}
	exe := update(t, osvcv1.UpdateState_UPDATE_STATE_UNSUPPORTED, osvcv1.Classification_CLASSIFICATION_UPDATE)
	arm := update(t, osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE, osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE)
	dotnet := update(t, osvcv1.UpdateState_UPDATE_STATE_APPLIED, osvcv1.Classification_CLASSIFICATION_DOTNET)

	// In order: the second .NET application finds it installed.
	steps := []struct {
		name string
		file string
		want engine.Outcome
	}{
		{"an .exe is unsupported", exe.File, engine.Unsupported},
		{"a .cab that is no cabinet is unsupported", notCab, engine.Unsupported},
		{"an update for another architecture is not applicable", arm.File, engine.NotApplicable},
		{"a package applies once", dotnet.File, engine.Applied},
		{"the same package applied again is already installed", dotnet.File, engine.AlreadyInstalled},
	}
	for _, s := range steps {
		got, err := e.AddPackage(context.Background(), m, s.file, nil)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got.Outcome != s.want {
			t.Errorf("%s: got %s, want %s", s.name, got.Outcome, s.want)
		}
	}
	// The sample's arm64 update is for this image's build: only its
	// architecture keeps it out.
	if arm.Architecture != osvcv1.Architecture_ARCHITECTURE_ARM64 || !strings.Contains(logs.String(), "is for arm64; index 1 is x64") {
		t.Errorf("%s: the log does not say it is not applicable for its architecture", filepath.Base(arm.File))
	}
	var unsupported []string
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, engine.UnsupportedMessage) {
			unsupported = append(unsupported, line)
		}
	}
	if len(unsupported) != 2 || !strings.Contains(unsupported[0], ": "+engine.UnsupportedMessage+":") ||
		!strings.Contains(unsupported[0], filepath.Base(exe.File)) {
		t.Errorf("log lines with %q = %q, want one per unsupported file naming it", engine.UnsupportedMessage, unsupported)
	}
	installed, err := e.InstalledPackages(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	if len(installed) != 1 || installed[0].KB != dotnet.KB {
		t.Errorf("InstalledPackages = %+v, want only %s", installed, dotnet.KB)
	}
}

func TestDiscardLeavesTheWIMByteIdentical(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t)
	wim := copyWIM(t)
	before := fileSHA256(t, wim)
	m := mount(t, e, wim)
	u := update(t, osvcv1.UpdateState_UPDATE_STATE_APPLIED, osvcv1.Classification_CLASSIFICATION_DOTNET)
	if got, err := e.AddPackage(context.Background(), m, u.File, nil); err != nil || got.Outcome != engine.Applied {
		t.Fatalf("AddPackage = %s, %v; want Applied", got.Outcome, err)
	}
	if err := e.Cleanup(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if err := e.Unmount(context.Background(), m, false); err != nil {
		t.Fatal(err)
	}
	if after := fileSHA256(t, wim); after != before {
		t.Fatal("the WIM changed although the changes were discarded")
	}
	installed, err := e.ReadInstalled(context.Background(), wim, 1)
	if err != nil || len(installed) != 0 {
		t.Fatalf("ReadInstalled after discard = %+v, %v; want nothing", installed, err)
	}
}

func TestCanceledServicingStillUnmountsAndKeepsTheWIM(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t)
	wim := copyWIM(t)
	before := fileSHA256(t, wim)
	m := mount(t, e, wim)
	ctx, cancel := context.WithCancel(context.Background())
	u := update(t, osvcv1.UpdateState_UPDATE_STATE_APPLIED, osvcv1.Classification_CLASSIFICATION_SERVICING_STACK)
	// Cancel once the first file is copied: the next one is not.
	var progress []int
	_, err := e.AddPackage(ctx, m, u.File, func(p int) {
		progress = append(progress, p)
		if p > 0 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("AddPackage under a canceled ctx = %v, want context.Canceled", err)
	}
	if len(progress) != 2 || progress[1] == 100 {
		t.Errorf("progress = %v, want 0 then one step short of 100", progress)
	}
	if err := e.Unmount(ctx, m, true); !errors.Is(err, context.Canceled) {
		t.Fatalf("Unmount(commit) under a canceled ctx = %v, want context.Canceled", err)
	}
	if mountinfo.IsMountPoint(m.Dir) {
		t.Fatal("the folder is still mounted")
	}
	if after := fileSHA256(t, wim); after != before {
		t.Fatal("the WIM changed although servicing was canceled")
	}
	stages, _ := filepath.Glob(filepath.Join(filepath.Dir(m.Dir), "stage-*"))
	if len(stages) != 0 {
		t.Errorf("staging folders left behind: %v", stages)
	}
}

func TestCleanupAndExportDropSupersededComponents(t *testing.T) {
	t.Parallel()
	e, logs := newEngine(t)
	wim := copyWIM(t)
	m := mount(t, e, wim)
	var older, newer sampledata.Update
	for _, u := range theSample(t).Updates {
		got, err := e.AddPackage(context.Background(), m, u.File, nil)
		if err != nil {
			t.Fatalf("%s: %v", filepath.Base(u.File), err)
		}
		if want := outcomeFor(u.Want); got.Outcome != want {
			t.Errorf("%s: got %s, want %s", filepath.Base(u.File), got.Outcome, want)
		}
		if got.Outcome == engine.NotApplicable && got.Detail == "" {
			t.Errorf("%s: not applicable without saying why", filepath.Base(u.File))
		}
		if u.Classification == osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE && u.Want == osvcv1.UpdateState_UPDATE_STATE_APPLIED {
			older, newer = newer, u
		}
	}
	if older.File == "" {
		t.Fatal("the sample has no two cumulative updates")
	}
	if err := e.Cleanup(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "components_removed") {
		t.Error("cleanup did not log what it removed")
	}
	if err := e.Unmount(context.Background(), m, true); err != nil {
		t.Fatal(err)
	}
	exported := filepath.Join(t.TempDir(), "exported.wim")
	var written [][2]int64
	if err := e.Export(context.Background(), wim, 1, exported, func(done, total int64) { written = append(written, [2]int64{done, total}) }); err != nil {
		t.Fatal(err)
	}
	if n := len(written); n == 0 || written[n-1][0] != written[n-1][1] || written[n-1][1] <= 0 {
		t.Errorf("export progress %v, want it to end with all of its bytes written", written)
	}
	src, _ := os.Stat(wim)
	dst, _ := os.Stat(exported)
	t.Logf("source %d bytes after commit, exported %d bytes", src.Size(), dst.Size())
	if dst.Size() >= src.Size() {
		t.Errorf("exported %d bytes, source %d: want the export smaller", dst.Size(), src.Size())
	}

	olderPkg, err := updatepkg.Open(older.File)
	if err != nil {
		t.Fatal(err)
	}
	listing := wimDir(t, exported)
	for _, c := range olderPkg.Manifest.Components {
		if slices.Contains(listing, "/Windows/WinSxS/"+c.SxSName()) {
			t.Errorf("superseded component %s is still in the exported image", c.SxSName())
		}
	}
	installed, err := e.ReadInstalled(context.Background(), exported, 1)
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, in := range installed {
		states[in.KB] = in.State
	}
	if states[older.KB] != "Superseded" || states[newer.KB] != "Installed" {
		t.Errorf("states = %v, want %s Superseded and %s Installed", states, older.KB, newer.KB)
	}

	newerPkg, err := updatepkg.Open(newer.File)
	if err != nil {
		t.Fatal(err)
	}
	indexes, err := e.Inspect(context.Background(), exported)
	if err != nil {
		t.Fatal(err)
	}
	revision := strings.Split(newerPkg.Manifest.Identity.Version, ".")[1]
	if got := indexes[0].Version; !strings.HasSuffix(got, "."+revision) {
		t.Errorf("serviced image version %s, want the revision %s of %s", got, revision, newer.KB)
	}
}

func TestTheImageVersionFollowsTheNewestInstalledCumulativeUpdate(t *testing.T) {
	t.Parallel()
	installed := []engine.Installed{
		{Identity: "Package_for_RollupFix~31bf3856ad364e35~amd64~~22631.4169.1.1", State: "Superseded"},
		{Identity: "Package_for_RollupFix~31bf3856ad364e35~amd64~~22631.4317.1.1", State: "Installed"},
		{Identity: "Package_for_RollupFix~31bf3856ad364e35~amd64~~26100.5000.1.1", State: "Installed"},
		{Identity: "Package_for_ServicingStack_4311~31bf3856ad364e35~amd64~~22631.9999.1.1", State: "Installed"},
	}
	tests := []struct {
		name    string
		version string
		want    uint32
	}{
		{"an older image takes the installed cumulative update's revision", "10.0.22631.2428", 4317},
		{"an image already at that revision is left alone", "10.0.22631.4317", 0},
		{"an image past it is never moved back", "10.0.22631.5000", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := cumulativeRevision(installed, 22631, tt.version); got != tt.want {
				t.Errorf("cumulativeRevision(%s) = %d, want %d", tt.version, got, tt.want)
			}
		})
	}
}

func outcomeFor(s osvcv1.UpdateState) engine.Outcome {
	switch s {
	case osvcv1.UpdateState_UPDATE_STATE_APPLIED:
		return engine.Applied
	case osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE:
		return engine.NotApplicable
	case osvcv1.UpdateState_UPDATE_STATE_UNSUPPORTED:
		return engine.Unsupported
	case osvcv1.UpdateState_UPDATE_STATE_ALREADY_INSTALLED:
		return engine.AlreadyInstalled
	}
	return 0
}

func TestAPackageWithAnEscapingMemberNeverWritesOutsideStaging(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t)
	wim := copyWIM(t)
	m := mount(t, e, wim)
	work := filepath.Dir(m.Dir)

	man := &updatepkg.Manifest{
		Identity:         updatepkg.Identity{Name: "Package_for_KB5099998", PublicKeyToken: "31bf3856ad364e35", Arch: "amd64", Language: "neutral", Version: "22631.9999.1.1"},
		KB:               "KB5099998",
		Title:            "Evil update",
		ReleaseType:      "Update",
		Classification:   osvcv1.Classification_CLASSIFICATION_UPDATE,
		Released:         time.Date(2026, 10, 13, 0, 0, 0, 0, time.UTC),
		ApplicableBuilds: []uint32{m.Info.Build},
	}
	mum, err := man.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w := cab.NewWriter(&buf)
	for _, member := range []struct {
		name string
		data []byte
	}{
		{"update.mum", mum},
		{"../escaped.txt", []byte("outside")},
		{"../../escaped-too.txt", []byte("outside")},
	} {
		fw, err := w.Create(member.name, man.Released)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(fw, bytes.NewReader(member.data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	pkg := filepath.Join(t.TempDir(), "windows11.0-kb5099998-x64.cab")
	if err := os.WriteFile(pkg, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	if _, err := e.AddPackage(context.Background(), m, pkg, nil); err == nil {
		t.Fatal("AddPackage of a package with ../ members succeeded, want an error")
	}
	for _, p := range []string{
		filepath.Join(work, "escaped.txt"),
		filepath.Join(filepath.Dir(work), "escaped-too.txt"),
		filepath.Join(work, "escaped-too.txt"),
		filepath.Join(m.Dir, "escaped.txt"),
	} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s was written outside the staging folder", p)
		}
	}
	stages, _ := filepath.Glob(filepath.Join(work, "stage-*"))
	if len(stages) != 0 {
		t.Errorf("staging folders left behind: %v", stages)
	}
	if err := e.Unmount(context.Background(), m, false); err != nil {
		t.Fatalf("discard after a failed package: %v", err)
	}
}

func TestASymlinkInTheImageNeverLetsServicingTouchFilesOutsideIt(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		link string // replaced in the image by a symlink to a folder outside it
	}{
		{"WinSxS links outside the image", filepath.Join("Windows", "WinSxS")},
		{"servicing links outside the image", filepath.Join("Windows", "servicing")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, _ := newEngine(t)
			m := mount(t, e, copyWIM(t))
			// The server's own folder, holding what looks like two versions
			// of a component, which a cleanup would thin out.
			outside := t.TempDir()
			var versions []string
			for _, v := range []string{"10.0.1.1", "10.0.1.2"} {
				c := updatepkg.Component{Name: "Microsoft-Windows-Probe", Arch: "amd64", PublicKeyToken: "31bf3856ad364e35", Version: v}
				versions = append(versions, c.SxSName())
				if err := os.Mkdir(filepath.Join(outside, c.SxSName()), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			inImage := filepath.Join(m.Dir, tt.link)
			if err := os.RemoveAll(inImage); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, inImage); err != nil {
				t.Fatal(err)
			}

			u := update(t, osvcv1.UpdateState_UPDATE_STATE_APPLIED, osvcv1.Classification_CLASSIFICATION_SERVICING_STACK)
			if _, err := e.AddPackage(context.Background(), m, u.File, nil); err == nil {
				t.Error("AddPackage through a symlink leaving the image succeeded, want an error")
			}
			_ = e.Cleanup(context.Background(), m)

			entries, err := os.ReadDir(outside)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, ent := range entries {
				got = append(got, ent.Name())
			}
			if !slices.Equal(got, versions) {
				t.Errorf("the folder outside the image holds %v, want %v untouched", got, versions)
			}
		})
	}
}

func TestAnMSUAppliesItsInnerPackagesInOrder(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t)
	m := mount(t, e, copyWIM(t))
	t.Cleanup(func() { _ = e.Unmount(context.Background(), m, false) })
	ssu := update(t, osvcv1.UpdateState_UPDATE_STATE_APPLIED, osvcv1.Classification_CLASSIFICATION_SERVICING_STACK)
	dotnet := update(t, osvcv1.UpdateState_UPDATE_STATE_APPLIED, osvcv1.Classification_CLASSIFICATION_DOTNET)
	cabs := map[string][]byte{}
	for name, u := range map[string]sampledata.Update{"1-ssu.cab": ssu, "2-ndp481.cab": dotnet} {
		data, err := os.ReadFile(u.File)
		if err != nil {
			t.Fatal(err)
		}
		cabs[name] = data
	}
	var msu bytes.Buffer
	if err := updatepkg.BuildMSU(&msu, cabs); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "windows11.0-kb5099997-x64.MSU")
	if err := os.WriteFile(path, msu.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := e.AddPackage(context.Background(), m, path, nil)
	if err != nil || got.Outcome != engine.Applied {
		t.Fatalf("AddPackage(MSU) = %s, %v; want Applied", got.Outcome, err)
	}
	installed, err := e.InstalledPackages(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	var kbs []string
	for _, in := range installed {
		kbs = append(kbs, in.KB)
	}
	if want := []string{ssu.KB, dotnet.KB}; !slices.Equal(kbs, want) {
		t.Errorf("installed %v, want %v in that order", kbs, want)
	}
	if got, err := e.AddPackage(context.Background(), m, path, nil); err != nil || got.Outcome != engine.AlreadyInstalled {
		t.Errorf("AddPackage(MSU) again = %s, %v; want AlreadyInstalled", got.Outcome, err)
	}
}

func TestAnOlderPackageSupersededByAnInstalledOneIsNotApplicable(t *testing.T) {
	t.Parallel()
	e, logs := newEngine(t)
	m := mount(t, e, copyWIM(t))
	t.Cleanup(func() { _ = e.Unmount(context.Background(), m, false) })
	var cus []sampledata.Update
	for _, u := range theSample(t).Updates {
		if u.Classification == osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE && u.Want == osvcv1.UpdateState_UPDATE_STATE_APPLIED {
			cus = append(cus, u)
		}
	}
	if len(cus) != 2 {
		t.Fatalf("the sample has %d applicable cumulative updates, want 2", len(cus))
	}
	older, newer := cus[0], cus[1]
	if got, err := e.AddPackage(context.Background(), m, newer.File, nil); err != nil || got.Outcome != engine.Applied {
		t.Fatalf("AddPackage(newer) = %s, %v; want Applied", got.Outcome, err)
	}
	if got, err := e.AddPackage(context.Background(), m, older.File, nil); err != nil || got.Outcome != engine.NotApplicable {
		t.Fatalf("AddPackage(older after newer) = %s, %v; want NotApplicable", got.Outcome, err)
	}
	if !strings.Contains(logs.String(), "superseded by installed package") {
		t.Error("the log does not say why the older package is not applicable")
	}
}

func TestUnmountWithAFileOpenNeverLeavesTheMount(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		commit  bool
		wantErr bool
	}{
		{"a discard succeeds", false, false},
		{"a commit is refused and the changes discarded", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, _ := newEngine(t)
			wim := copyWIM(t)
			before := fileSHA256(t, wim)
			m := mount(t, e, wim)
			if err := os.WriteFile(filepath.Join(m.Dir, "Windows", "changed.txt"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(filepath.Join(m.Dir, "Windows", "win.ini"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			err = e.Unmount(context.Background(), m, tt.commit)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Unmount(commit %t) = %v, want error %t", tt.commit, err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "open") {
				t.Errorf("Unmount error %q does not say files are open", err)
			}
			if mountinfo.IsMountPoint(m.Dir) {
				t.Fatal("the folder is still mounted")
			}
			f.Close()
			if after := fileSHA256(t, wim); after != before {
				t.Fatal("the WIM changed although nothing was committed")
			}
		})
	}
}

func TestAFailedCommitThroughASymlinkedDriveNeverLeavesTheMount(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t)
	wim := copyWIM(t)
	before := fileSHA256(t, wim)
	// The drive is reached through a symlink, as /srv -> /data on a site server;
	// the kernel lists the mount under the real path.
	real, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	realMount := filepath.Join(real, "mount")
	if err := os.Mkdir(realMount, 0o755); err != nil {
		t.Fatal(err)
	}
	drive := filepath.Join(t.TempDir(), "drive")
	if err := os.Symlink(real, drive); err != nil {
		t.Fatal(err)
	}
	m, err := e.Mount(context.Background(), wim, 1, filepath.Join(drive, "mount"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if mountinfo.IsMountPoint(realMount) {
			_ = e.Unmount(context.Background(), &engine.Mount{Dir: realMount}, false)
		}
	})
	if err := os.WriteFile(filepath.Join(m.Dir, "Windows", "changed.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A file held open makes wimlib-imagex refuse the commit.
	f, err := os.Open(filepath.Join(m.Dir, "Windows", "win.ini"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := e.Unmount(context.Background(), m, true); err == nil {
		t.Fatal("Unmount(commit) with a file open succeeded, want an error")
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), " "+realMount+" ") {
		t.Fatalf("%s is still mounted after the failed commit", realMount)
	}
	f.Close()
	if after := fileSHA256(t, wim); after != before {
		t.Fatal("the WIM changed although nothing was committed")
	}
}

func TestExportAppendsToAnExistingFile(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t)
	renamed := copyWIM(t)
	if out, err := exec.Command("wimlib-imagex", "info", renamed, "1", "Windows 11 Enterprise N").CombinedOutput(); err != nil {
		t.Fatalf("rename the image: %v: %s", err, out)
	}
	dst := filepath.Join(t.TempDir(), "two.wim")
	for _, src := range []string{theSample(t).WIM, renamed} {
		if err := e.Export(context.Background(), src, 1, dst, nil); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := e.Inspect(context.Background(), dst)
	if err != nil {
		t.Fatal(err)
	}
	if len(idx) != 2 || idx[1].Name != "Windows 11 Enterprise N" {
		t.Fatalf("exported file has %d indexes, want the sample's and the renamed copy", len(idx))
	}
	err = e.Export(context.Background(), renamed, 1, dst, nil)
	if err == nil || !strings.Contains(err.Error(), "already") {
		t.Fatalf("exporting an image whose name the file already has = %v, want wimlib's own message", err)
	}
}

func TestMountOfAMissingIndexNamesTheIndexes(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t)
	dir := t.TempDir()
	_, err := e.Mount(context.Background(), theSample(t).WIM, 7, dir)
	if err == nil || !strings.Contains(err.Error(), "has 1 indexes, none numbered 7") {
		t.Fatalf("Mount(index 7) = %v, want an error saying the WIM has 1 index", err)
	}
	if mountinfo.IsMountPoint(dir) {
		t.Fatal("a failed mount left the folder mounted")
	}
}

func TestVerifyFindsADamagedBodyThatInspectMisses(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t)
	ctx := context.Background()
	if err := e.Verify(ctx, theSample(t).WIM); err != nil {
		t.Fatalf("Verify of the sample = %v, want nil", err)
	}
	damaged := copyWIM(t)
	if err := sampledata.DamageBody(damaged); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Inspect(ctx, damaged); err != nil {
		t.Fatalf("Inspect of the damaged copy = %v: the header and XML should still read", err)
	}
	err := e.Verify(ctx, damaged)
	if !errors.Is(err, engine.ErrDamaged) {
		t.Fatalf("Verify of the damaged copy = %v, want ErrDamaged", err)
	}
	if !strings.Contains(err.Error(), damaged) {
		t.Errorf("the error %q does not name the file", err)
	}
	missing := filepath.Join(t.TempDir(), "missing.wim")
	if err := e.Verify(ctx, missing); err == nil || errors.Is(err, engine.ErrDamaged) {
		t.Errorf("Verify of a missing file = %v, want an error that is not ErrDamaged", err)
	}
}

// TestACommitWaitsForAFileOpenForAMoment holds a file open in the mount as
// a process forked by the agent does until it execs: the first unmount
// finds it open, and the commit goes through once it is closed.
func TestACommitWaitsForAFileOpenForAMoment(t *testing.T) {
	t.Parallel()
	e, logs := newEngine(t)
	wim := copyWIM(t)
	before := fileSHA256(t, wim)
	m := mount(t, e, wim)
	if err := os.WriteFile(filepath.Join(m.Dir, "Windows", "changed.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(m.Dir, "Windows", "win.ini"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Unmount(context.Background(), m, true) }()
	deadline := time.After(20 * time.Second)
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for !strings.Contains(logs.String(), "files are still open in the mounted image") {
		select {
		case <-deadline:
			t.Fatal("the engine never found the open file")
		case <-poll.C:
		}
	}
	f.Close()
	if err := <-done; err != nil {
		t.Fatalf("Unmount(commit) after the file was closed = %v", err)
	}
	if after := fileSHA256(t, wim); after == before {
		t.Error("the WIM did not change: the commit did not go through")
	}
}

func TestAnEngineWithAWorkFolderKeepsDismLogThere(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	work := t.TempDir()
	runLog := &syncBuffer{}
	e, err := New(Config{Work: work, Logger: hclog.New(&hclog.LoggerOptions{Name: "run", Output: runLog, Level: hclog.Info})})
	if err != nil {
		t.Fatal(err)
	}
	wim := copyWIM(t)
	if err := e.Verify(ctx, wim); err != nil {
		t.Fatal(err)
	}
	m := mount(t, e, wim)
	if _, err := e.AddPackage(ctx, m, update(t, osvcv1.UpdateState_UPDATE_STATE_APPLIED, osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE).File, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.Unmount(ctx, m, false); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Mount(ctx, wim, 7, filepath.Join(work, "no-such-folder")); err == nil {
		t.Fatal("mounting index 7 of a one-index WIM succeeded")
	}

	data, err := os.ReadFile(filepath.Join(work, "dism.log"))
	if err != nil {
		t.Fatalf("the engine's log: %v", err)
	}
	log := string(data)
	for _, want := range []string{
		"wimlib: running: command=\"" + e.binary + " verify " + wim,
		"wimlib: running: command=\"" + e.binary + " mountrw " + wim + " 1 ",
		"wimlib: command ended: command=verify exit_code=0",
		"wimlib: command ended: command=unmount exit_code=0",
		"wimlib: package installed",
		"[INFO]  wimlib: wimlib-imagex: output=",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("dism.log lacks %q:\n%s", want, log)
		}
	}
	// The run's own log gets the engine's lines at its own level: the
	// command lines are debug, for 'run watch --log-level debug'.
	if got := runLog.String(); strings.Contains(got, "running: command=") || strings.Contains(got, "command ended") ||
		!strings.Contains(got, "run.wimlib: package installed") {
		t.Errorf("the run log at info should have what the engine did and no command lines:\n%s", got)
	}

	// The agent's own engine (no work folder) keeps no such log.
	plain, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := plain.Verify(ctx, wim); err != nil {
		t.Fatal(err)
	}
	// (wimlib-imagex's own staging folder beside the WIM may still be going
	// away after the unmount above: only the log is the engine's.)
	if _, err := os.Stat(filepath.Join(filepath.Dir(wim), "dism.log")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an engine without a work folder wrote dism.log beside the WIM: %v", err)
	}
}
