package integration

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/integration/sampledata"
)

// The dism engine through the real binaries: osvc-agent runs with --engine
// dism, and dism-replay answers for dism.exe with recorded real output
// (agent/engine/dism/testdata), so everything but dism.exe itself is the
// production path: the agent, its pipeline, the engine's exec and parsing.

// startDISMAgent starts an agent of site PS1 on the dism engine, dism.exe
// answered from the named scenario.
func (c *cluster) startDISMAgent(t *testing.T, name, scenario string) *proc {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	folder, err := filepath.Abs(filepath.Join("..", "agent", "engine", "dism", "testdata", "scenarios", scenario))
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"OSVC_DISM_REPLAY=" + folder, "OSVC_DISM_REPLAY_STATE=" + t.TempDir()}
	p := startEnv(t, "osvc-agent", env, append(c.agentArgs(t, name, dir), "--engine", "dism", "--dism", filepath.Join(binDir, "dism-replay"))...)
	p.dir = dir
	c.waitAgent(t, name, osvcv1.AgentState_AGENT_STATE_CONNECTED, time.Time{})
	return p
}

// dismSample is the sample at the build the recordings describe: Windows
// 10 build 18362, x64.
func dismSample(t *testing.T) *sampledata.Sample {
	t.Helper()
	s, err := sampledata.Create(context.Background(), sampledata.Options{Dir: t.TempDir(), Build: 18362})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// scheduleAll schedules every update of the image, removing superseded
// components, and waits for the run to end.
func (c *cluster) scheduleAll(t *testing.T, img *osvcv1.Image, updates []*osvcv1.Update, continueOnError bool) (*osvcv1.Run, []*osvcv1.LogLine) {
	t.Helper()
	var names []string
	for _, u := range updates {
		names = append(names, u.GetName())
	}
	created, err := c.svc.CreateSchedule(context.Background(), &osvcv1.CreateScheduleRequest{
		Parent:   img.GetName(),
		Schedule: &osvcv1.Schedule{Updates: names, ContinueOnError: continueOnError, RemoveSuperseded: true},
	})
	if err != nil {
		t.Fatalf("create schedule: %v", err)
	}
	return c.watch(t, created.GetRun().GetName())
}

func TestServicingOnTheDISMEngine(t *testing.T) {
	c := newCluster(t)
	c.agent = c.startDISMAgent(t, "agent-dism", "service-sample")
	sample := dismSample(t)
	img, updates := c.importSample(t, sample)
	if ix := img.GetIndexes(); len(ix) != 1 || ix[0].GetName() != "Windows 10 Home" || ix[0].GetVersion() != "10.0.18362.30" {
		t.Errorf("the inspection read %v, want what dism.exe said of index 1", ix)
	}

	run, lines := c.scheduleAll(t, img, updates, true)
	if run.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("run ended %v: %s", run.GetState(), run.GetError())
	}
	want := map[string]osvcv1.UpdateState{}
	for i, u := range updates {
		want[u.GetKb()] = sample.Updates[i].Want
	}
	for _, r := range run.GetUpdateResults() {
		if r.GetState() != want[r.GetKb()] {
			t.Errorf("%s: %v, want %v (%s)", r.GetKb(), r.GetState(), want[r.GetKb()], r.GetMessage())
		}
		if r.GetState() == osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE && !strings.Contains(r.GetMessage(), "0x800f081e") {
			t.Errorf("%s: not applicable without DISM's code: %q", r.GetKb(), r.GetMessage())
		}
	}
	// DISM's own words reach the run log.
	log := joinLog(lines)
	for _, w := range []string{"Processing 1 of 1 - Adding package", "/Cleanup-Image /StartComponentCleanup /ResetBase", "/Unmount-Image", "/Commit"} {
		if !strings.Contains(log, w) {
			t.Errorf("the run log has no %q", w)
		}
	}
}

// joinLog is a run's log as text.
func joinLog(lines []*osvcv1.LogLine) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l.GetMessage())
		b.WriteByte('\n')
	}
	return b.String()
}

// Each package DISM refuses fails with DISM's code, its words and what to
// do; the others go on (continue on error).
func TestPackageFailuresOnTheDISMEngine(t *testing.T) {
	c := newCluster(t)
	c.agent = c.startDISMAgent(t, "agent-dism", "add-package-failures")
	img, updates := c.importSample(t, dismSample(t))
	run, _ := c.scheduleAll(t, img, updates, true)
	if run.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("run ended %v: %s", run.GetState(), run.GetError())
	}
	want := map[string]struct {
		state osvcv1.UpdateState
		words []string
	}{
		"KB5045935": {osvcv1.UpdateState_UPDATE_STATE_APPLIED, nil},
		"KB890830":  {osvcv1.UpdateState_UPDATE_STATE_UNSUPPORTED, nil},
		"KB5065431": {osvcv1.UpdateState_UPDATE_STATE_FAILED, []string{"0x800f081f", "The source files could not be found", "import it again"}},
		"KB5066793": {osvcv1.UpdateState_UPDATE_STATE_FAILED, []string{"0x800f0823", "schedule the servicing stack update"}},
		"KB5066835": {osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE, []string{"0x800f081e"}},
		"KB5067112": {osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE, []string{"0x800f081e"}},
		"KB5066131": {osvcv1.UpdateState_UPDATE_STATE_FAILED, []string{"14107", "One or more required members of the transaction are not present."}},
	}
	if len(run.GetUpdateResults()) != len(want) {
		t.Fatalf("%d update results, want %d", len(run.GetUpdateResults()), len(want))
	}
	for _, r := range run.GetUpdateResults() {
		w := want[r.GetKb()]
		if r.GetState() != w.state {
			t.Errorf("%s: %v, want %v (%s)", r.GetKb(), r.GetState(), w.state, r.GetMessage())
		}
		for _, word := range w.words {
			if !strings.Contains(r.GetMessage(), word) {
				t.Errorf("%s: message %q lacks %q", r.GetKb(), r.GetMessage(), word)
			}
		}
	}
}

// A run that fails on the dism engine says DISM's code and what to do,
// discards the mount and leaves the image at its source version: a commit
// that runs out of disk, and a failed /Cleanup-Image, which fails the run
// even when it continues on error and commits nothing.
func TestFailedRunsOnTheDISMEngineLeaveTheImageAsItWas(t *testing.T) {
	for _, tt := range []struct {
		scenario        string
		continueOnError bool
		words           []string
		committed       bool
		// logFiles: what the failed run's log files hold, DISM's (/LogPath)
		// and the agent's.
		logFiles map[string][]string
	}{
		{"commit-disk-full", false, []string{"112: There is not enough space on the disk.", "free space on it or choose another drive"}, true, map[string][]string{
			"dism.log":                {"DISM.EXE: Executing command line: dism.exe /English /LogPath:", "/Unmount-Image", "/Commit", "/Discard", "Exiting with code 0x00000070"},
			"OfflineServicingMgr.log": {"run: step failed: step=COMMIT", "run: run failed: changes discarded", "run: log file uploaded: file=dism.log"},
		}},
		{"cleanup-pending", true, []string{"0x800f0806", "without remove superseded"}, false, map[string][]string{
			"dism.log":                {"/Cleanup-Image /StartComponentCleanup /ResetBase", "/Discard", "Exiting with code 0x800f0806"},
			"OfflineServicingMgr.log": {"run: step failed: step=CLEANUP", "run: run failed: changes discarded", "run: log file uploaded: file=dism.log"},
		}},
	} {
		t.Run(tt.scenario, func(t *testing.T) {
			c := newCluster(t)
			c.agent = c.startDISMAgent(t, "agent-dism", tt.scenario)
			img, updates := c.importSample(t, dismSample(t))
			run, lines := c.scheduleAll(t, img, updates, tt.continueOnError)
			if run.GetState() != osvcv1.RunState_RUN_STATE_FAILED {
				t.Fatalf("run ended %v: %q; want failed", run.GetState(), run.GetError())
			}
			for _, w := range tt.words {
				if !strings.Contains(run.GetError(), w) {
					t.Errorf("run error %q lacks %q", run.GetError(), w)
				}
			}
			log := joinLog(lines)
			if strings.Contains(log, "/Commit") != tt.committed || !strings.Contains(log, "/Discard") {
				t.Errorf("a commit tried: %t, want %t; and a discard after it:\n%s", strings.Contains(log, "/Commit"), tt.committed, log)
			}
			c.checkLogFiles(t, run, c.agent.dir, tt.logFiles)
			got, err := c.images.GetImage(context.Background(), &osvcv1.GetImageRequest{Name: img.GetName()})
			if err != nil {
				t.Fatal(err)
			}
			if got.GetImage().GetCurrentVersion() != 1 || len(got.GetImage().GetVersions()) != 1 {
				t.Errorf("image at version %d with %d versions after a failed run, want version 1 alone",
					got.GetImage().GetCurrentVersion(), len(got.GetImage().GetVersions()))
			}
		})
	}
}
