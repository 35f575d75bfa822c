package dism

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/osvc/osvc/agent/engine"
)

// The engine through whole runs: the scenarios of testdata/scenarios, each
// the recordings of one servicing run, replayed in the order the pipeline
// asks.

// scenarioEngine is an engine answering from the named scenario, its log
// kept.
func scenarioEngine(t *testing.T, scenario string) (*Engine, *bytes.Buffer) {
	t.Helper()
	e := replayEngine(t, filepath.Join(scenariosDir, scenario), 0)
	var log bytes.Buffer
	e.logger = hclog.New(&hclog.LoggerOptions{Output: &log, Level: hclog.Debug})
	return e, &log
}

// ranCommands is the command lines the engine ran, from its log.
func ranCommands(log string) string {
	var ran []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "running: command=") {
			ran = append(ran, l)
		}
	}
	return strings.Join(ran, "\n")
}

// mountSample mounts index 1 of a WIM file in a fresh folder.
func mountSample(t *testing.T, e *Engine) (*engine.Mount, error) {
	t.Helper()
	dir := t.TempDir()
	wim := filepath.Join(dir, "install.wim")
	if err := os.WriteFile(wim, []byte("MSWIM\x00\x00\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	return e.Mount(context.Background(), wim, 1, filepath.Join(dir, "mount"))
}

func apply(t *testing.T, e *Engine, m *engine.Mount, file string) (engine.PackageResult, error) {
	t.Helper()
	return e.AddPackage(context.Background(), m, filepath.Join(t.TempDir(), file), nil)
}

func TestServicingTheSampleRunsEveryStep(t *testing.T) {
	e, _ := scenarioEngine(t, "service-sample")
	ctx := context.Background()
	m, err := mountSample(t, e)
	if err != nil {
		t.Fatal(err)
	}
	if m.Info.Name != "Windows 10 Home" {
		t.Errorf("mounted %+v", m.Info)
	}
	if res, err := apply(t, e, m, "windows11.0-kb5066793-arm64.msu"); err != nil || res.Outcome != engine.NotApplicable {
		t.Errorf("the arm64 update: %+v, %v", res, err)
	}
	if res, err := apply(t, e, m, "windows11.0-kb5066793-x64.msu"); err != nil || res.Outcome != engine.Applied {
		t.Errorf("the x64 update: %+v, %v", res, err)
	}
	if res, err := apply(t, e, m, "kb5066793.exe"); err != nil || res.Outcome != engine.Unsupported {
		t.Errorf("an .exe is not DISM's to apply: %+v, %v", res, err)
	}
	if err := e.Cleanup(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := e.Unmount(ctx, m, true); err != nil {
		t.Fatal(err)
	}
	if err := e.Export(ctx, m.WIM, 1, filepath.Join(filepath.Dir(m.WIM), "export.wim"), nil); err != nil {
		t.Fatal(err)
	}
}

// An inspection: the WIM verified, its indexes read, the packages of
// index 1 listed from a read-only mount that comes off again.
func TestInspectingTheSampleVerifiesAndReadsIt(t *testing.T) {
	e, log := scenarioEngine(t, "service-sample")
	ctx := context.Background()
	wim := filepath.Join(t.TempDir(), "install.wim")
	if err := os.WriteFile(wim, []byte("MSWIM\x00\x00\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.Verify(ctx, wim); err != nil {
		t.Fatal(err)
	}
	installed, err := e.ReadInstalled(ctx, wim, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(installed) != 2 {
		t.Errorf("installed %+v", installed)
	}
	ran := ranCommands(log.String())
	for _, want := range []string{"/Apply-Image /ImageFile:" + wim + " /Index:1 /ApplyDir:", "/CheckIntegrity /Verify", "/ReadOnly", "/Discard"} {
		if !strings.Contains(ran, want) {
			t.Errorf("no %q among the commands run:\n%s", want, ran)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(wim), "read-*")); len(left) != 0 {
		t.Errorf("read-only mount folders left behind: %v", left)
	}
}

func TestEachPackageFailsWithItsOwnCode(t *testing.T) {
	e, _ := scenarioEngine(t, "add-package-failures")
	m, err := mountSample(t, e)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		file, code string
	}{
		{"windows11.0-kb5066793-x64.msu", codeNeedsNewerStack},
		{"windows11.0-kb5065431-x64.msu", codeSourceMissing},
		{"windows11.0-kb5066131-x64-ndp481.msu", "14107"},
	} {
		res, err := apply(t, e, m, tt.file)
		if res.Outcome != 0 {
			t.Errorf("%s: outcome %v for a failure", tt.file, res.Outcome)
		}
		wantFailure(t, err, tt.code, "")
	}
	if res, err := apply(t, e, m, "windows11.0-kb5045935-x64.cab"); err != nil || res.Outcome != engine.Applied {
		t.Errorf("the servicing stack: %+v, %v", res, err)
	}
}

func TestABusyMountIsTriedAgainThenGivenUp(t *testing.T) {
	e, log := scenarioEngine(t, "mount-busy")
	_, err := mountSample(t, e)
	wantFailure(t, err, codeMountBusy, "The user attempted to mount to a directory that is not empty.")
	if n := strings.Count(log.String(), "the mount is in use; trying again"); n != busyRetries-1 {
		t.Errorf("tried again %d times, want %d:\n%s", n, busyRetries-1, log)
	}
}

func TestAMountThatFreesUpIsServiced(t *testing.T) {
	e, log := scenarioEngine(t, "mount-busy-then-free")
	m, err := mountSample(t, e)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Unmount(context.Background(), m, true); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(log.String(), "the mount is in use; trying again"); n != 4 {
		t.Errorf("tried again %d times, want 2 for the mount and 2 for the commit:\n%s", n, log)
	}
}

func TestPendingOperationsFailTheCleanup(t *testing.T) {
	e, _ := scenarioEngine(t, "cleanup-pending")
	m, err := mountSample(t, e)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := apply(t, e, m, "windows11.0-kb5066793-x64.msu"); err != nil || res.Outcome != engine.Applied {
		t.Fatalf("the update: %+v, %v", res, err)
	}
	wantFailure(t, e.Cleanup(context.Background(), m), codePending, "")
}

func TestAFullDiskFailsTheCommit(t *testing.T) {
	e, log := scenarioEngine(t, "commit-disk-full")
	m, err := mountSample(t, e)
	if err != nil {
		t.Fatal(err)
	}
	wantFailure(t, e.Unmount(context.Background(), m, true), "112", "There is not enough space on the disk.")
	// The failed commit is followed by a discard, so no mount stays behind
	// (no recording answers it here).
	if !strings.Contains(ranCommands(log.String()), "/Unmount-Image /MountDir:"+m.Dir+" /Discard") {
		t.Errorf("no discard after the failed commit:\n%s", log)
	}
}

func TestACanceledCommitDiscards(t *testing.T) {
	e, log := scenarioEngine(t, "service-sample")
	m, err := mountSample(t, e)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.Unmount(ctx, m, true); err == nil || !strings.Contains(err.Error(), "not committed") {
		t.Errorf("Unmount after cancel = %v, want not committed", err)
	}
	ran := ranCommands(log.String())
	if strings.Contains(ran, "/Commit") || !strings.Contains(ran, "/Unmount-Image /MountDir:"+m.Dir+" /Discard") {
		t.Errorf("a canceled run committed, or did not discard:\n%s", ran)
	}
}

// dism.exe writes in the console's OEM code page; the engine reads it in
// that code page, and whatever it cannot read still comes out as UTF-8.
func TestOutputIsReadInTheConsolesCodePage(t *testing.T) {
	dir := t.TempDir()
	scenario := "use: " + filepath.ToSlash(filepath.Join(corpusDir, "unmount-image-in-use-0xc1420117-zh-CN.txt")) + "\nencoding: gbk\n"
	if err := os.WriteFile(filepath.Join(dir, "10-unmount.txt"), []byte(scenario), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		codePage int
		message  string
	}{
		{936, "不能完全卸载目录。"},
		{codePageUTF8, "\uFFFD"},
	} {
		e := replayEngine(t, dir, tt.codePage)
		de := wantFailure(t, e.Unmount(context.Background(), fakeMount(t), false), codeMountInUse, tt.message)
		if !strings.Contains(de.Message, tt.message) {
			t.Errorf("code page %d: message %q", tt.codePage, de.Message)
		}
	}
}
