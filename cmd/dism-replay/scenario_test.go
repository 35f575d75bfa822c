package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEveryScenarioLoads(t *testing.T) {
	t.Parallel()
	scenariosDir := filepath.Join(filepath.Dir(corpusDir), "scenarios")
	dirs, err := os.ReadDir(scenariosDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"service-sample", "add-package-failures", "mount-busy", "cleanup-pending"} {
		if _, err := os.Stat(filepath.Join(scenariosDir, want)); err != nil {
			t.Errorf("scenario %s: %v", want, err)
		}
	}
	for _, d := range dirs {
		t.Run(d.Name(), func(t *testing.T) {
			t.Parallel()
			ts, err := loadScenario(filepath.Join(scenariosDir, d.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if len(ts) == 0 {
				t.Fatal("no transcript")
			}
		})
	}
}

// engineArgs are the switches the dism engine puts before every command in a
// run: /English, its log and its scratch folder on the run's drive.
func engineArgs(work string, args ...string) []string {
	return append([]string{"/English", "/LogPath:" + filepath.Join(work, "dism.log"), "/ScratchDir:" + filepath.Join(work, "scratch")}, args...)
}

func TestScenariosAnswerTheEnginesCommands(t *testing.T) {
	t.Parallel()
	type step struct {
		args       []string
		wantStatus uint32
		wantOut    string // a line the output must hold
	}
	work := "/srv/OfflineImageServicing/run-1"
	wim, mount, export := work+"/install.wim", work+"/mount", work+"/export.wim"
	cache := "/var/lib/osvc/cache/ab/"
	inspect := []step{
		{engineArgs(work, "/Get-WimInfo", "/WimFile:"+wim), 0, "Index : 1"},
		{engineArgs(work, "/Get-WimInfo", "/WimFile:"+wim, "/Index:1"), 0, "Architecture : x64"},
	}
	mountStep := step{engineArgs(work, "/Mount-Image", "/ImageFile:"+wim, "/Index:1", "/MountDir:"+mount), 0, "Mounting image"}
	packages := step{engineArgs(work, "/Image:"+mount, "/Get-Packages"), 0, "Package Identity : "}
	add := func(file string, status uint32, out string) step {
		return step{engineArgs(work, "/Image:"+mount, "/Add-Package", "/PackagePath:"+cache+file), status, out}
	}
	cleanup := func(status uint32, out string) step {
		return step{engineArgs(work, "/Image:"+mount, "/Cleanup-Image", "/StartComponentCleanup", "/ResetBase"), status, out}
	}
	commit := func(status uint32, out string) step {
		return step{engineArgs(work, "/Unmount-Image", "/MountDir:"+mount, "/Commit"), status, out}
	}
	tests := []struct {
		scenario string
		steps    []step
	}{
		{"service-sample", append(append([]step{}, inspect...),
			mountStep, packages,
			add("windows11.0-kb5067112-arm64.msu", 0x800f081e, "Error: 0x800f081e"),
			add("windows11.0-kb5066793-x64.msu", 0, "The operation completed successfully."),
			cleanup(0, "The operation completed successfully."),
			commit(0, "Unmounting image"),
			step{engineArgs(work, "/Export-Image", "/SourceImageFile:"+wim, "/SourceIndex:1", "/DestinationImageFile:"+export), 0, "Exporting image"},
			step{engineArgs("", "/Get-MountedWimInfo"), 0, "Mount Dir : "},
		)},
		{"add-package-failures", append(append([]step{}, inspect...),
			mountStep, packages,
			add("windows11.0-kb5045935-x64.cab", 0, "The operation completed successfully."),
			add("windows11.0-kb5066793-x64.msu", 0x800f0823, "Error: 0x800f0823"),
			add("windows11.0-kb5065431-x64.cab", 0x800f081f, "Error: 0x800f081f"),
			add("windows11.0-kb5066131-x64-ndp481.cab", 14107, "Error: 14107"),
			add("windows11.0-kb5066835-arm64.cab", 0x800f081e, "Error: 0x800f081e"),
			add("windows11.0-kb9999999-x64.cab", 0x800f081e, "Error: 0x800f081e"),
			commit(0, "Saving image"),
		)},
		{"mount-busy", append(append([]step{}, inspect...),
			step{mountStep.args, 0xc1420114, "Error: 0xc1420114"},
			step{mountStep.args, 0xc1420114, "Error: 0xc1420114"},
			step{engineArgs(work, "/Unmount-Image", "/MountDir:"+mount, "/Discard"), 0xc1420117, "0xc1420117"},
		)},
		{"mount-busy-then-free", append(append([]step{}, inspect...),
			step{mountStep.args, 0xc1420114, "Error: 0xc1420114"},
			step{mountStep.args, 0xc1420114, "Error: 0xc1420114"},
			mountStep, packages,
			add("windows11.0-kb5066793-x64.msu", 0, "The operation completed successfully."),
			commit(0xc1420117, "0xc1420117"),
			commit(0xc1420117, "0xc1420117"),
			commit(0, "Unmounting image"),
		)},
		{"cleanup-pending", append(append([]step{}, inspect...),
			mountStep, packages,
			add("windows11.0-kb5066793-x64.msu", 0, "The operation completed successfully."),
			cleanup(0x800f0806, "Error: 0x800f0806"),
			commit(0, "Unmounting image"),
		)},
		{"commit-disk-full", append(append([]step{}, inspect...),
			mountStep, packages,
			add("windows11.0-kb5066793-x64.msu", 0, "The operation completed successfully."),
			commit(112, "Error: 112"),
		)},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			t.Parallel()
			// The run's paths are the engine's; the effects need real ones.
			root := t.TempDir()
			state := t.TempDir()
			if err := os.WriteFile(filepath.Join(root, "install.wim"), []byte("MSWIM"), 0o644); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(filepath.Dir(corpusDir), "scenarios", tt.scenario)
			for i, s := range tt.steps {
				args := make([]string, len(s.args))
				for j, a := range s.args {
					args[j] = strings.ReplaceAll(a, work, root)
				}
				r := replay(t, dir, state, args...)
				if r.status != statusOf(s.wantStatus) || !strings.Contains(r.stdout, s.wantOut) {
					t.Fatalf("step %d (%s): status %d, want %d; output lacks %q?\nstdout %q\nstderr %s",
						i+1, strings.Join(s.args[3:], " "), r.status, statusOf(s.wantStatus), s.wantOut, r.stdout, r.stderr)
				}
			}
			if tt.scenario == "service-sample" {
				if _, err := os.Stat(filepath.Join(root, "mount", "Windows")); err != nil {
					t.Errorf("the mount left no Windows folder: %v", err)
				}
				if got, err := os.ReadFile(filepath.Join(root, "export.wim")); err != nil || string(got) != "MSWIM" {
					t.Errorf("export.wim = %q, %v; want a copy of install.wim", got, err)
				}
			}
		})
	}
}
