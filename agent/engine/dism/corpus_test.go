package dism

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/osvc/osvc/agent/engine"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// The engine on real dism.exe output: every recording of the corpus is
// answered by cmd/dism-replay, standing in for dism.exe, through the
// engine's real exec path, and what the engine read from it is checked.

// replayBin is cmd/dism-replay, built once by TestMain.
var replayBin string

// corpusDir and scenariosDir are absolute, for scenario files' "use:".
var corpusDir, scenariosDir string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "dism-engine-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	for _, d := range []struct {
		dst  *string
		path string
	}{{&corpusDir, "testdata/transcripts"}, {&scenariosDir, "testdata/scenarios"}} {
		if *d.dst, err = filepath.Abs(d.path); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	replayBin = filepath.Join(dir, "dism-replay")
	if runtime.GOOS == "windows" {
		replayBin += ".exe"
	}
	if out, err := exec.Command("go", "build", "-o", replayBin, "github.com/osvc/osvc/cmd/dism-replay").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building dism-replay: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// replayEngine is an engine whose dism.exe answers from the scenario folder
// dir. The replay reads its folder from the environment, so tests that use
// it do not run in parallel.
func replayEngine(t *testing.T, dir string, codePage int) *Engine {
	t.Helper()
	t.Setenv("OSVC_DISM_REPLAY", dir)
	t.Setenv("OSVC_DISM_REPLAY_STATE", t.TempDir())
	e, err := New(Config{Binary: replayBin, Work: t.TempDir(), CodePage: codePage})
	if err != nil {
		t.Fatal(err)
	}
	e.pause = func(ctx context.Context, _ time.Duration) error { return ctx.Err() }
	return e
}

// recordings makes a scenario of corpus recordings, tried in the order
// given, and an engine answering from it.
func recordings(t *testing.T, names ...string) *Engine {
	t.Helper()
	dir := t.TempDir()
	for i, name := range names {
		file := filepath.Join(dir, fmt.Sprintf("%02d-%s", i, name))
		use := "use: " + filepath.ToSlash(filepath.Join(corpusDir, name)) + "\n"
		if err := os.WriteFile(file, []byte(use), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return replayEngine(t, dir, 0)
}

// wantFailure checks that err is DISM's failure with code, and a message
// that starts with message.
func wantFailure(t *testing.T, err error, code, message string) *Error {
	t.Helper()
	var de *Error
	if !errors.As(err, &de) {
		t.Fatalf("error %v, want DISM's failure %s", err, code)
	}
	if de.Code != code || !strings.HasPrefix(de.Message, message) {
		t.Errorf("DISM failure %s %q, want %s %q…", de.Code, de.Message, code, message)
	}
	return de
}

// fakeMount is a mount of the engine's tests: nothing is mounted, the replay
// only needs a folder.
func fakeMount(t *testing.T) *engine.Mount {
	return &engine.Mount{WIM: filepath.Join(t.TempDir(), "install.wim"), Index: 1, Dir: t.TempDir()}
}

// addPackage applies a package the engine cannot read ahead (there is no
// file), so DISM decides; it returns the result and the percents reported.
func addPackage(t *testing.T, e *Engine) (engine.PackageResult, []int, error) {
	t.Helper()
	var progress []int
	res, err := e.AddPackage(context.Background(), fakeMount(t), filepath.Join(t.TempDir(), "windows11.0-kb5054156-x64.msu"), func(p int) { progress = append(progress, p) })
	return res, progress, err
}

// listIndexes runs the listing of a WIM's indexes.
func listIndexes(t *testing.T, e *Engine) []engine.Index {
	t.Helper()
	out, err := e.runOK(context.Background(), nil, "/Get-WimInfo", "/WimFile:"+filepath.Join(t.TempDir(), "install.wim"))
	if err != nil {
		t.Fatal(err)
	}
	return parseWimInfo(out)
}

// corpusCases holds, for every recording of the corpus, a check of what
// the engine reads from it. A recording without one fails the test.
var corpusCases = map[string]func(t *testing.T, name string){
	"add-package-success-10.0.26100.txt":        addPackageApplied,
	"add-package-success-de-DE.txt":             addPackageApplied,
	"add-package-success-wrapped-6.3.9600.txt":  addPackageApplied,
	"add-package-not-applicable-0x800f081e.txt": addPackageNotApplicable("The specified package is not applicable to this image.", 100),
	"add-package-folder-not-applicable-0x800f081e-partial.txt": addPackageNotApplicable(
		// Said once, not once per package; the bar stopped at 33.2%.
		"The specified package is not applicable to this image. Package ", 33),
	"add-package-newer-servicing-stack-0x800f0823-partial.txt": addPackageFails(codeNeedsNewerStack,
		`Package <Cumulative_Update_Path>\<Cumulative_Update>.msu may have failed due to pending updates`, "servicing stack"),
	// The message is the package's, before the code; not "DISM failed".
	"add-package-source-missing-0x800f081f.txt": addPackageFails(codeSourceMissing,
		"Package_for_RollupFix: The source files could not be found. Use the \"Source\" option", "missing"),
	// The closing "Error: 14107" wins over the inline 0x8007371b; the log
	// hint without its path is not part of the message.
	"add-package-error-14107-inline-0x8007371b.txt": func(t *testing.T, name string) {
		_, _, err := addPackage(t, recordings(t, name))
		if de := wantFailure(t, err, "14107", "One or more required members of the transaction are not present."); de.Message != "One or more required members of the transaction are not present." {
			t.Errorf("message %q: only DISM's message", de.Message)
		}
	},
	"cleanup-image-startcomponentcleanup-online-success.txt": func(t *testing.T, name string) {
		if err := recordings(t, name).Cleanup(context.Background(), fakeMount(t)); err != nil {
			t.Fatal(err)
		}
	},
	"cleanup-image-resetbase-offline-success-10.0.22621.2792.txt": func(t *testing.T, name string) {
		if err := recordings(t, name).Cleanup(context.Background(), fakeMount(t)); err != nil {
			t.Fatal(err)
		}
	},
	"apply-image-verify-10.0.22621.2792.txt":  verifies,
	"apply-image-success-10.0.26100.1150.txt": verifies,
	"unmount-image-discard-10.0.19041.844.txt": func(t *testing.T, name string) {
		if err := recordings(t, name).Unmount(context.Background(), fakeMount(t), false); err != nil {
			t.Fatal(err)
		}
	},
	"cleanup-image-resetbase-pending-0x800f0806-6.3.9600.txt": cleanupPending,
	"cleanup-image-resetbase-pending-0x800f0806-partial.txt":  cleanupPending,
	"export-image-success-10.0.19041.3636.txt": func(t *testing.T, name string) {
		dir := t.TempDir()
		src, dst := filepath.Join(dir, "source.wim"), filepath.Join(dir, "export.wim")
		if err := os.WriteFile(src, []byte("MSWIM\x00\x00\x00 an index"), 0o644); err != nil {
			t.Fatal(err)
		}
		var written [][2]int64
		if err := recordings(t, name).Export(context.Background(), src, 1, dst, func(done, total int64) { written = append(written, [2]int64{done, total}) }); err != nil {
			t.Fatal(err)
		}
		// DISM's bar says 100%: all of the source's bytes, the most an
		// export writes.
		if size := int64(len("MSWIM\x00\x00\x00 an index")); len(written) != 1 || written[0] != [2]int64{size, size} {
			t.Errorf("export progress %v, want [[%d %d]]", written, size, size)
		}
		if b, err := os.ReadFile(dst); err != nil || string(b) != "MSWIM\x00\x00\x00 an index" {
			t.Errorf("export wrote %q, %v", b, err)
		}
	},
	"get-mountedwiminfo-one-mount-10.0.22621.txt": func(t *testing.T, name string) {
		e := recordings(t, name)
		mps, err := e.Mounts(context.Background(), `c:\users\w10\DOWNLOADS`)
		if err != nil {
			t.Fatal(err)
		}
		if len(mps) != 1 || mps[0].Dir != `C:\Users\W10\Downloads\montar` || mps[0].Detail != `C:\Users\W10\Downloads\prueba_disn.wim index 1, status Ok` {
			t.Errorf("mounts %+v", mps)
		}
		if mps, err := e.Mounts(context.Background(), `C:\Users\W10\Down`); err != nil || len(mps) != 0 {
			t.Errorf("a mount beside the folder is not under it: %+v, %v", mps, err)
		}
	},
	"get-mountedwiminfo-invalid-partial.txt": func(t *testing.T, name string) {
		mps, err := recordings(t, name).Mounts(context.Background(), `C:\Temp`)
		if err != nil || len(mps) != 1 || !strings.HasSuffix(mps[0].Detail, "status Invalid") {
			t.Errorf("mounts %+v, %v", mps, err)
		}
	},
	"get-packages-listing-partial-10.0.26100.txt": func(t *testing.T, name string) {
		pkgs, err := recordings(t, name).InstalledPackages(context.Background(), fakeMount(t))
		if err != nil {
			t.Fatal(err)
		}
		if len(pkgs) != 2 || pkgs[0].Identity != "Microsoft-OneCore-ApplicationModel-Sync-Desktop-FOD-Package~31bf3856ad364e35~amd64~~10.0.26100.1742" ||
			pkgs[1].State != "Installed" || pkgs[1].KB != "" || pkgs[1].InstallTime.Year() != 2024 {
			t.Errorf("packages %+v", pkgs)
		}
	},
	"get-wiminfo-index-details-10.0.17763.txt": func(t *testing.T, name string) {
		ix := indexDetails(t, name, 1)
		if ix.Name != "Windows 10 Home" || ix.Arch != osvcv1.Architecture_ARCHITECTURE_X64 || ix.Version != "10.0.18362.30" ||
			ix.Build != 18362 || ix.Edition != "Core" || ix.TotalBytes != 13998570900 || !slices.Equal(ix.Languages, []string{"en-US"}) {
			t.Errorf("index %+v", ix)
		}
	},
	"get-wiminfo-index-details-en-GB-partial.txt": func(t *testing.T, name string) {
		ix := indexDetails(t, name, 6)
		if ix.Name != "Windows 11 Pro" || ix.Version != "10.0.22621.2428" || ix.Edition != "Professional" || !slices.Equal(ix.Languages, []string{"en-GB"}) {
			t.Errorf("index %+v", ix)
		}
	},
	// "<undefined>" is no value, not an edition or a language.
	"get-wiminfo-index-details-undefined-10.0.26100.txt": func(t *testing.T, name string) {
		ix := indexDetails(t, name, 1)
		if ix.Version != "10.0.26100.7920" || ix.Edition != "" || len(ix.Languages) != 0 || ix.TotalBytes != 24354379074 {
			t.Errorf("index %+v", ix)
		}
	},
	// The listing and the details of its one index: Inspect as it runs.
	"get-wiminfo-list-1-index-10.0.19041.329.txt": func(t *testing.T, name string) {
		e := recordings(t, name, "get-wiminfo-index-details-10.0.17763.txt")
		ixs, err := e.Inspect(context.Background(), filepath.Join(t.TempDir(), "install.wim"))
		if err != nil {
			t.Fatal(err)
		}
		if len(ixs) != 1 || ixs[0].Index != 1 || ixs[0].Edition != "Core" {
			t.Errorf("indexes %+v", ixs)
		}
	},
	"get-wiminfo-list-11-indexes-10.0.22621.txt": func(t *testing.T, name string) {
		ixs := listIndexes(t, recordings(t, name))
		if len(ixs) != 11 || ixs[0].Name != "Windows 11 Home" || ixs[10].Index != 11 {
			t.Errorf("indexes %+v", ixs)
		}
	},
	"get-wiminfo-list-2-indexes-6.3.9600.txt": func(t *testing.T, name string) {
		ixs := listIndexes(t, recordings(t, name))
		if len(ixs) != 2 || ixs[1].Index != 2 || ixs[1].Name == "" {
			t.Errorf("indexes %+v", ixs)
		}
	},
	"mount-image-success-6.3.9600.txt": func(t *testing.T, name string) {
		m, err := mount(t, name)
		if err != nil {
			t.Fatal(err)
		}
		if m.Info == nil || m.Info.Name != "Windows 10 Home" {
			t.Errorf("mount %+v", m)
		}
		if _, err := os.Stat(filepath.Join(m.Dir, "Windows")); err != nil {
			t.Errorf("the mounted image's Windows folder: %v", err)
		}
	},
	// Tried again while busy, then given up on with the code.
	"mount-image-dir-not-empty-0xc1420114.txt": func(t *testing.T, name string) {
		_, err := mount(t, name)
		wantFailure(t, err, codeMountBusy, "The user attempted to mount to a directory that is not empty.")
	},
	"mount-image-error-5-access-denied-partial.txt": func(t *testing.T, name string) {
		_, err := mount(t, name)
		if de := wantFailure(t, err, "5", "Access is denied."); !strings.Contains(de.Error(), "administrator") {
			t.Errorf("%v: say what to do", de)
		}
	},
	"mount-image-error-50-request-not-supported.txt": func(t *testing.T, name string) {
		_, err := mount(t, name)
		wantFailure(t, err, "50", "The request is not supported.")
	},
	"unmount-image-commit-6.3.9600.txt": func(t *testing.T, name string) {
		if err := recordings(t, name).Unmount(context.Background(), fakeMount(t), true); err != nil {
			t.Fatal(err)
		}
	},
	// The commit fails; the discard after it has no recording and fails
	// too, which the error does not hide behind: the commit's code comes out.
	"unmount-image-commit-disk-full-error-112.txt": func(t *testing.T, name string) {
		err := recordings(t, name).Unmount(context.Background(), fakeMount(t), true)
		if de := wantFailure(t, err, "112", "There is not enough space on the disk."); !strings.Contains(de.Error(), "drive is full") {
			t.Errorf("%v: say what to do", de)
		}
	},
	// Not /English: the message is in Chinese, read in any case.
	"unmount-image-in-use-0xc1420117-zh-CN.txt": func(t *testing.T, name string) {
		err := recordings(t, name).Unmount(context.Background(), fakeMount(t), true)
		wantFailure(t, err, codeMountInUse, "不能完全卸载目录。")
	},
	// Verbs osvc does not run: their result is read all the same.
	"remove-package-error-87-padded-partial.txt":         otherVerb("/Remove-Package", "87", "The /PackageName: option is missing a required argument."),
	"enable-feature-source-missing-0x800f081f-ru-RU.txt": otherVerb("/Enable-Feature", codeSourceMissing, "Не удалось найти исходные файлы."),
}

func addPackageApplied(t *testing.T, name string) {
	res, progress, err := addPackage(t, recordings(t, name))
	if err != nil || res.Outcome != engine.Applied {
		t.Fatalf("AddPackage = %+v, %v; want applied", res, err)
	}
	if !slices.Equal(progress, []int{100}) {
		t.Errorf("progress %v, want [100]", progress)
	}
}

func addPackageNotApplicable(message string, lastPercent int) func(t *testing.T, name string) {
	return func(t *testing.T, name string) {
		res, progress, err := addPackage(t, recordings(t, name))
		if err != nil || res.Outcome != engine.NotApplicable || !strings.HasPrefix(res.Detail, codeNotApplicable+": "+message) {
			t.Errorf("AddPackage = %+v, %v; want not applicable, %q", res, err, message)
		}
		if strings.Count(res.Detail, "not applicable") != 1 {
			t.Errorf("detail %q says it more than once", res.Detail)
		}
		if len(progress) == 0 || progress[len(progress)-1] != lastPercent {
			t.Errorf("progress %v, want it to end at %d", progress, lastPercent)
		}
	}
}

func addPackageFails(code, message, hint string) func(t *testing.T, name string) {
	return func(t *testing.T, name string) {
		res, _, err := addPackage(t, recordings(t, name))
		if res.Outcome != 0 {
			t.Errorf("outcome %v for a failure", res.Outcome)
		}
		if de := wantFailure(t, err, code, message); !strings.Contains(de.Error(), hint) {
			t.Errorf("%v: want a hint about %q", de, hint)
		}
	}
}

// verifies runs Verify on a WIM of one index, which the recording applies.
func verifies(t *testing.T, name string) {
	e := recordings(t, "get-wiminfo-list-1-index-10.0.19041.329.txt", "get-wiminfo-index-details-10.0.17763.txt", name)
	wim := filepath.Join(t.TempDir(), "install.wim")
	if err := os.WriteFile(wim, []byte("MSWIM\x00\x00\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.Verify(context.Background(), wim); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(e.scratch, "verify-*")); len(left) != 0 {
		t.Errorf("verification folders left behind: %v", left)
	}
}

func cleanupPending(t *testing.T, name string) {
	err := recordings(t, name).Cleanup(context.Background(), fakeMount(t))
	if de := wantFailure(t, err, codePending, "The operation could not be completed due to pending operations."); !strings.Contains(de.Error(), "without remove superseded") {
		t.Errorf("%v: say what to do", de)
	}
}

func indexDetails(t *testing.T, name string, index int) *engine.Index {
	t.Helper()
	ix, err := recordings(t, name).indexInfo(context.Background(), filepath.Join(t.TempDir(), "install.wim"), index)
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

// mount mounts index 1 with the recording name answering /Mount-Image.
func mount(t *testing.T, name string) (*engine.Mount, error) {
	t.Helper()
	e := recordings(t, "get-wiminfo-index-details-10.0.17763.txt", name)
	return e.Mount(context.Background(), filepath.Join(t.TempDir(), "install.wim"), 1, t.TempDir())
}

func otherVerb(verb, code, message string) func(t *testing.T, name string) {
	return func(t *testing.T, name string) {
		_, res, err := recordings(t, name).run(context.Background(), nil, "/Image:C:\\mount", verb)
		if err != nil {
			t.Fatal(err)
		}
		if res.OK() || res.Code != code || !strings.HasPrefix(res.Message, message) {
			t.Errorf("result %+v, want %s %q…", res, code, message)
		}
	}
}

func TestEveryRecordingIsReadByTheEngine(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(corpusDir, "*.txt"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, file := range files {
		name := filepath.Base(file)
		seen[name] = true
		check := corpusCases[name]
		if check == nil {
			t.Errorf("%s: no check of what the engine reads from it: add one to corpusCases", name)
			continue
		}
		t.Run(name, func(t *testing.T) { check(t, name) })
	}
	for name := range corpusCases {
		if !seen[name] {
			t.Errorf("corpusCases checks %s, which the corpus does not have", name)
		}
	}
}
