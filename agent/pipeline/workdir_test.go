package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/osvc/osvc/agent/engine/wimlib"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/integration/sampledata"
)

// isMounted tells whether dir is a mount point, read straight from the kernel.
func isMounted(t *testing.T, dir string) bool {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// mountRW mounts index 1 of wim read-write in dir with wimlib-imagex, as a
// run does, and makes sure the test never leaves it mounted.
func mountRW(wim, dir string) error {
	if out, err := exec.Command("wimlib-imagex", "mountrw", wim, "1", dir).CombinedOutput(); err != nil {
		return fmt.Errorf("wimlib-imagex mountrw: %w: %s", err, out)
	}
	return nil
}

// unmountAtCleanup detaches dir, should the test fail with it mounted.
func unmountAtCleanup(t *testing.T, dir string) {
	t.Cleanup(func() {
		if isMounted(t, dir) {
			_ = exec.Command("wimlib-imagex", "unmount", dir).Run()
			_ = exec.Command("fusermount3", "-u", "-z", dir).Run()
		}
	})
}

// killFUSEDaemon kills the wimlib-imagex daemon serving the mount in dir with
// SIGKILL, as when the agent's whole service is killed, and waits until the
// mount is dead (ENOTCONN).
func killFUSEDaemon(t *testing.T, dir string) {
	t.Helper()
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err != nil {
			continue // the process ended
		}
		args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		if slices.Contains(args, "mountrw") && args[len(args)-1] == dir {
			pid, _ = strconv.Atoi(filepath.Base(filepath.Dir(p)))
		}
	}
	if pid == 0 {
		t.Fatalf("no wimlib-imagex daemon serves %s", dir)
	}
	// os.Process.Kill is SIGKILL, and unlike syscall.Kill it builds for
	// Windows too, where go vet checks these tests.
	daemon, err := os.FindProcess(pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := daemon.Kill(); err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(20 * time.Second)
	for {
		if _, err := os.Stat(dir); errors.Is(err, syscall.ENOTCONN) {
			return
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("the mount in %s still answers after its daemon was killed", dir)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o640); err != nil {
		t.Fatal(err)
	}
}

// entryNames lists a folder's entries.
func entryNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func TestRecoverDiscardsTheMountAndCopiesACrashedRunLeftAndKeepsItsLogs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		killDaemon bool
	}{
		{"when the FUSE daemon outlived the agent", false},
		{"when the FUSE daemon died with the agent", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sample, err := sampledata.Create(context.Background(), sampledata.Options{Dir: t.TempDir(), PayloadBytes: 64 << 10})
			if err != nil {
				t.Fatal(err)
			}
			before := fileSHA(t, sample.WIM)
			drive := t.TempDir()
			work := filepath.Join(drive, WorkFolder, "r-x")
			mount := filepath.Join(work, "mount")
			if err := os.MkdirAll(mount, 0o750); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(work, LogFile), "the run's story\n")
			writeFile(t, filepath.Join(work, EngineLogFile), "the engine's story\n")
			for _, leftover := range []string{"source.wim", "export.wim", "source.wim.part", "stage-123/update.mum", "updates/0-0/kb1.cab"} {
				writeFile(t, filepath.Join(work, leftover), "copy")
			}
			ended := filepath.Join(drive, WorkFolder, "r-y")
			writeFile(t, filepath.Join(ended, LogFile), "an ended run\n")

			unmountAtCleanup(t, mount)
			if err := mountRW(sample.WIM, mount); err != nil {
				t.Fatal(err)
			}
			// A change a commit would write into the WIM.
			writeFile(t, filepath.Join(mount, "Windows", "half-applied.txt"), "must not reach the image")
			if tt.killDaemon {
				killFUSEDaemon(t, mount)
			}

			eng, err := wimlib.New(wimlib.Config{})
			if err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			logger := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})
			if err := Recover(context.Background(), eng, drive, logger); err != nil {
				t.Fatalf("Recover: %v\n%s", err, logs.String())
			}
			if isMounted(t, mount) {
				t.Fatalf("%s is still a mount point", mount)
			}
			if got := fileSHA(t, sample.WIM); got != before {
				t.Errorf("the mounted WIM changed (sha256 %s, was %s): the mount was committed", got, before)
			}
			if got := entryNames(t, work); !slices.Equal(got, []string{LogFile, EngineLogFile}) && !slices.Equal(got, []string{EngineLogFile, LogFile}) {
				t.Errorf("the work folder holds %v, want the two logs only", got)
			}
			if data, err := os.ReadFile(filepath.Join(work, LogFile)); err != nil || string(data) != "the run's story\n" {
				t.Errorf("the run log = %q, %v: want it kept as it was", data, err)
			}
			if got := entryNames(t, ended); !slices.Equal(got, []string{LogFile}) {
				t.Errorf("the ended run's folder holds %v, want its log untouched", got)
			}
			if !strings.Contains(logs.String(), "unmounting it without commit") || !strings.Contains(logs.String(), "dir="+mount) {
				t.Errorf("the agent log does not tell which mount was discarded:\n%s", logs.String())
			}
		})
	}
}

func TestRecoverLeavesAMountThatIsNotAnEnginesAlone(t *testing.T) {
	t.Parallel()
	drive := t.TempDir()
	work := filepath.Join(drive, WorkFolder, "r-x")
	other := filepath.Join(work, "mount")
	if err := os.MkdirAll(other, 0o750); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(work, "source.wim"), "copy")
	// Someone else's mount (a tmpfs) where a run would mount its image.
	if out, err := exec.Command("mount", "-t", "tmpfs", "osvc-test", other).CombinedOutput(); err != nil {
		t.Fatalf("mount -t tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if isMounted(t, other) {
			_ = exec.Command("umount", other).Run()
		}
	})
	writeFile(t, filepath.Join(other, "theirs.txt"), "not ours to delete")
	eng, err := wimlib.New(wimlib.Config{})
	if err != nil {
		t.Fatal(err)
	}
	err = Recover(context.Background(), eng, drive, nil)
	if err == nil || !strings.Contains(err.Error(), "tmpfs mount") {
		t.Fatalf("Recover = %v, want an error naming the tmpfs mount", err)
	}
	if !isMounted(t, other) {
		t.Error("the tmpfs mount was unmounted")
	}
	if _, err := os.Stat(filepath.Join(other, "theirs.txt")); err != nil {
		t.Errorf("a file in the other mount is gone: %v", err)
	}
	if _, err := os.Stat(filepath.Join(work, "source.wim")); err != nil {
		t.Errorf("a work folder holding a mount was tidied: %v", err)
	}
}

func TestRecoverOnADriveWithoutWorkFoldersDoesNothing(t *testing.T) {
	t.Parallel()
	eng, err := wimlib.New(wimlib.Config{})
	if err != nil {
		t.Fatal(err)
	}
	drive := t.TempDir()
	if err := Recover(context.Background(), eng, drive, nil); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	if got := entryNames(t, drive); len(got) != 0 {
		t.Errorf("Recover created %v on an unused drive", got)
	}
}

func TestRemoveExpiredRemovesTheLogsOfRunsEndedLongerAgoThanTheRetention(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	const retention = 7 * 24 * time.Hour
	tests := []struct {
		name     string
		id       string
		files    []string
		age      time.Duration
		wantGone bool
	}{
		{"an ended run older than the retention is removed", "old", []string{LogFile, EngineLogFile}, 8 * 24 * time.Hour, true},
		{"an ended run just past the retention is removed", "just", []string{LogFile}, retention, true},
		{"an empty work folder older than the retention is removed", "empty", nil, 30 * 24 * time.Hour, true},
		{"an ended run within the retention is kept", "recent", []string{LogFile}, 6 * 24 * time.Hour, false},
		{"a folder with leftovers is kept however old", "crashed", []string{LogFile, "source.wim"}, 30 * 24 * time.Hour, false},
		{"a run the agent holds is kept however old", "held", []string{LogFile}, 30 * 24 * time.Hour, false},
	}
	drive := t.TempDir()
	root := filepath.Join(drive, WorkFolder)
	for _, tt := range tests {
		dir := filepath.Join(root, tt.id)
		if err := os.MkdirAll(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		for _, f := range tt.files {
			writeFile(t, filepath.Join(dir, f), "x")
		}
		// Last: creating the files moved the folder's time.
		if err := os.Chtimes(dir, now.Add(-tt.age), now.Add(-tt.age)); err != nil {
			t.Fatal(err)
		}
	}
	// Not a work folder: the agent's lock file.
	writeFile(t, filepath.Join(root, ".osvc-agent.lock"), "")
	old := now.Add(-90 * 24 * time.Hour)
	if err := os.Chtimes(filepath.Join(root, ".osvc-agent.lock"), old, old); err != nil {
		t.Fatal(err)
	}

	var logs bytes.Buffer
	logger := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})
	removed, err := RemoveExpired(context.Background(), fileEngine{}, drive, retention, now, func(id string) bool { return id == "held" }, logger)
	if err != nil {
		t.Fatalf("RemoveExpired: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(root, tt.id)
			_, err := os.Stat(dir)
			if gone := errors.Is(err, os.ErrNotExist); gone != tt.wantGone {
				t.Errorf("%s gone = %t (%v), want %t", tt.id, gone, err, tt.wantGone)
			}
			if listed := slices.Contains(removed, dir); listed != tt.wantGone {
				t.Errorf("%s in the removed list = %t, want %t", tt.id, listed, tt.wantGone)
			}
			if logged := strings.Contains(logs.String(), "dir="+dir+" "); logged != tt.wantGone {
				t.Errorf("%s logged as removed = %t, want %t:\n%s", tt.id, logged, tt.wantGone, logs.String())
			}
		})
	}
	if _, err := os.Stat(filepath.Join(root, ".osvc-agent.lock")); err != nil {
		t.Errorf("the lock file was touched: %v", err)
	}
}

func TestRemoveExpiredRefusesANonPositiveRetention(t *testing.T) {
	t.Parallel()
	drive := t.TempDir()
	writeFile(t, filepath.Join(drive, WorkFolder, "r1", LogFile), "x")
	if _, err := RemoveExpired(context.Background(), fileEngine{}, drive, 0, time.Now().Add(time.Hour), nil, nil); err == nil {
		t.Fatal("RemoveExpired with retention 0 succeeded, want an error")
	}
	if _, err := os.Stat(filepath.Join(drive, WorkFolder, "r1", LogFile)); err != nil {
		t.Errorf("a refused call removed the log: %v", err)
	}
}

func TestARunSucceedsOverAMountAnEarlierAttemptLeft(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// atMountStep mounts while the run reports MOUNT running instead of
		// before the run starts.
		atMountStep bool
		killDaemon  bool
	}{
		{name: "when the FUSE daemon of the earlier attempt still runs"},
		{name: "when the FUSE daemon died with the earlier attempt", killDaemon: true},
		{name: "when the mount folder is found mounted at the MOUNT step", atMountStep: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			cfg := newConfig(t, f)
			work := filepath.Join(cfg.Drive, WorkFolder, "r1")
			mount := filepath.Join(work, "mount")
			if err := os.MkdirAll(mount, 0o750); err != nil {
				t.Fatal(err)
			}
			// A WIM of the earlier attempt, outside the work folder so that
			// the test can tell it was not committed.
			stale := filepath.Join(t.TempDir(), "earlier.wim")
			data, err := os.ReadFile(f.sample.WIM)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(stale, data, 0o640); err != nil {
				t.Fatal(err)
			}
			before := fileSHA(t, stale)
			unmountAtCleanup(t, mount)
			rec := &recorder{}
			var mountErr error
			if tt.atMountStep {
				rec.fail = func(event string) error {
					if event == "step MOUNT RUNNING" && mountErr == nil {
						// DRIVE removed the earlier mount folder.
						mountErr = os.MkdirAll(mount, 0o750)
						if mountErr == nil {
							mountErr = mountRW(stale, mount)
						}
						if mountErr == nil {
							mountErr = os.WriteFile(filepath.Join(mount, "stale.txt"), []byte("x"), 0o640)
						}
					}
					return nil
				}
			} else {
				if err := mountRW(stale, mount); err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(mount, "stale.txt"), "x")
				if tt.killDaemon {
					killFUSEDaemon(t, mount)
				}
			}

			if err := Run(context.Background(), cfg, f.assign(&osvcv1.Run{}), rec); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if mountErr != nil {
				t.Fatal(mountErr)
			}
			if rec.result.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
				t.Fatalf("result = %v, want SUCCEEDED; steps %v", rec.result, rec.stepStates())
			}
			if got := fileSHA(t, stale); got != before {
				t.Error("the stale mount was committed into its WIM")
			}
			if listing := wimDir(t, f.lib.Path(rec.result.GetResultSha256())); strings.Contains(listing, "stale.txt") {
				t.Error("the stale mount's file reached the serviced image")
			}
			if !strings.Contains(fmt.Sprint(rec.logs), "a mount left by an earlier run") {
				t.Error("the run log does not tell that a stale mount was discarded")
			}
			checkWorkFolder(t, cfg.Drive)
		})
	}
}
