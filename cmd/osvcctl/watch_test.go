package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// passesScript is a run that copies its source with byte progress, applies
// an update before cleanup and a .NET update after it, and exports: two
// APPLY records, the engine's command line at debug.
func passesScript(name string) []*osvcv1.WatchRunResponse {
	at := func(sec int) *timestamppb.Timestamp {
		return timestamppb.New(created.AsTime().Add(time.Duration(sec) * time.Second))
	}
	step := func(st osvcv1.Step, state osvcv1.StepState, start, end int, detail string) *osvcv1.StepRecord {
		r := &osvcv1.StepRecord{Step: st, State: state, StartTime: at(start), Detail: detail}
		if end > 0 {
			r.EndTime = at(end)
		}
		return r
	}
	running, done := osvcv1.StepState_STEP_STATE_RUNNING, osvcv1.StepState_STEP_STATE_DONE
	copying := &osvcv1.Run{Name: name, Image: "images/win11-23h2", State: osvcv1.RunState_RUN_STATE_IN_PROCESS, Agent: "agents/ps1-a", Attempt: 1,
		Step: osvcv1.Step_STEP_COPY, SourceSizeBytes: 4 << 30, StartTime: at(0),
		Steps: []*osvcv1.StepRecord{step(osvcv1.Step_STEP_COPY, running, 1, 0, "")},
		UpdateResults: []*osvcv1.UpdateResult{
			{Update: "updates/kb5031354", Kb: "KB5031354", Index: 1, State: osvcv1.UpdateState_UPDATE_STATE_PENDING},
			{Update: "updates/kb5031999", Kb: "KB5031999", Index: 1, State: osvcv1.UpdateState_UPDATE_STATE_PENDING},
		}}
	copying.Steps[0].BytesDone, copying.Steps[0].BytesTotal = 1<<30, 4<<30
	halfway := proto.CloneOf(copying)
	halfway.Steps[0].BytesDone = 3 << 30
	applying := proto.CloneOf(halfway)
	applying.Step = osvcv1.Step_STEP_APPLY
	applying.Steps[0] = step(osvcv1.Step_STEP_COPY, done, 1, 9, "")
	applying.Steps[0].BytesDone, applying.Steps[0].BytesTotal = 4<<30, 4<<30
	applying.Steps = append(applying.Steps, step(osvcv1.Step_STEP_APPLY, running, 10, 0, "index 1"))
	applying.UpdateResults[0].State, applying.UpdateResults[0].Percent, applying.UpdateResults[0].StartTime = osvcv1.UpdateState_UPDATE_STATE_IN_PROGRESS, 37, at(10)
	final := proto.CloneOf(applying)
	final.State, final.Step, final.Percent, final.EndTime, final.ResultSizeBytes = osvcv1.RunState_RUN_STATE_SUCCEEDED, osvcv1.Step_STEP_REPORT, 100, at(200), 3<<30
	final.Steps[1] = step(osvcv1.Step_STEP_APPLY, done, 10, 52, "1 applied")
	final.Steps = append(final.Steps,
		step(osvcv1.Step_STEP_CLEANUP, done, 52, 100, "superseded components removed"),
		step(osvcv1.Step_STEP_APPLY, done, 100, 130, "1 applied"),
		step(osvcv1.Step_STEP_EXPORT, done, 140, 190, ""))
	final.Steps[4].BytesDone, final.Steps[4].BytesTotal = 3<<30, 3<<30
	final.UpdateResults[0] = &osvcv1.UpdateResult{Update: "updates/kb5031354", Kb: "KB5031354", Index: 1, State: osvcv1.UpdateState_UPDATE_STATE_APPLIED, Percent: 100, StartTime: at(10), EndTime: at(51)}
	final.UpdateResults[1] = &osvcv1.UpdateResult{Update: "updates/kb5031999", Kb: "KB5031999", Index: 1, State: osvcv1.UpdateState_UPDATE_STATE_APPLIED, Percent: 100, StartTime: at(100), EndTime: at(130)}
	line := func(seq int64, level, msg string) *osvcv1.LogLine {
		return &osvcv1.LogLine{Sequence: seq, Time: at(int(seq)), Level: level, Message: msg}
	}
	return []*osvcv1.WatchRunResponse{
		{Run: copying, LogLines: []*osvcv1.LogLine{line(1, "INFO", "run: step started: step=COPY")}},
		{Run: halfway},
		{Run: applying, LogLines: []*osvcv1.LogLine{line(2, "DEBUG", `run.wimlib: running command="wimlib-imagex mountrw source.wim 1 mount"`)}},
		{Run: final, LogLines: []*osvcv1.LogLine{line(3, "WARN", "run: a warning")}},
	}
}

func TestRunWatchShowsBytesDurationsAndBothApplyPasses(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	f.script("runs/r-passes", passesScript("runs/r-passes"))
	out := mustRun(t, f.addr, "run", "watch", "r-passes")
	assertContainsInOrder(t, out,
		"step COPY: RUNNING\n",
		"step COPY: 3.0 GiB of 4.0 GiB\n",
		"step COPY: DONE in 8.0s, 4.0 GiB of 4.0 GiB\n",
		"step APPLY: RUNNING (index 1)\n",
		"KB5031354 (index 1): IN_PROGRESS 37%\n",
		"runs/r-passes: SUCCEEDED\n",
		"step APPLY: DONE in 42s (1 applied)\n",
		"step CLEANUP: DONE in 48s (superseded components removed)\n",
		"step APPLY: DONE in 30s (1 applied)\n",
		"step EXPORT: DONE in 50s, 3.0 GiB of 3.0 GiB\n",
		"KB5031354 (index 1): APPLIED in 41s\n",
		"KB5031999 (index 1): APPLIED in 30s\n",
		"WARN  run: a warning\n",
		"runs/r-passes SUCCEEDED in 3m20s\n",
		"TOOK", "KB5031354", "APPLIED", "41s", "KB5031999", "APPLIED", "30s")
	if strings.Contains(out, "running command=") {
		t.Errorf("the engine's command line (debug) shows at the default level info:\n%s", out)
	}

	t.Run("--log-level debug shows the engine's command lines", func(t *testing.T) {
		t.Parallel()
		out := mustRun(t, f.addr, "run", "watch", "r-passes", "--log-level", "debug")
		assertContainsInOrder(t, out, "INFO  run: step started", `DEBUG run.wimlib: running command="wimlib-imagex mountrw`, "WARN  run: a warning")
	})
	t.Run("--log-level warn leaves info out", func(t *testing.T) {
		t.Parallel()
		out := mustRun(t, f.addr, "run", "watch", "r-passes", "--log-level", "WARN")
		if strings.Contains(out, "step started") || !strings.Contains(out, "a warning") {
			t.Errorf("at warn:\n%s", out)
		}
	})
	t.Run("an unknown level is a usage error", func(t *testing.T) {
		t.Parallel()
		_, stderr, err := osvcctl(t, f.addr, "run", "watch", "r-passes", "--log-level", "verbose")
		if exitCode(err) != exitUsage || !strings.Contains(stderr, "use trace, debug, info, warn or error") {
			t.Errorf("exit %d, stderr %q", exitCode(err), stderr)
		}
	})
	t.Run("run get shows both APPLY passes with what each took", func(t *testing.T) {
		t.Parallel()
		f.mu.Lock()
		f.runs["runs/r-passes"] = passesScript("runs/r-passes")[3].GetRun()
		f.mu.Unlock()
		out := mustRun(t, f.addr, "run", "get", "r-passes")
		assertContainsInOrder(t, out, "STEP", "TOOK", "BYTES", "DETAIL",
			"COPY", "DONE", "8.0s", "4.0 GiB of 4.0 GiB",
			"APPLY", "DONE", "42s", "1 applied",
			"CLEANUP", "DONE", "48s",
			"APPLY", "DONE", "30s", "1 applied",
			"EXPORT", "DONE", "50s", "3.0 GiB of 3.0 GiB")
	})
}

func TestBarDisplayDrawsByteBarsForCopyAndExport(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	d := newBarDisplay(&out)
	for _, resp := range passesScript("runs/r-bytes") {
		d.show(resp.GetRun(), resp.GetLogLines())
	}
	d.close(false)
	got := out.String()
	for _, want := range []string{"COPY DONE in 8.0s, 4.0 GiB of 4.0 GiB", "EXPORT DONE in 50s, 3.0 GiB of 3.0 GiB", "KB5031354 (index 1) APPLIED in 41s"} {
		if !strings.Contains(got, want) {
			t.Errorf("bar display lacks %q:\n%s", want, got)
		}
	}
}

func TestInterruptingAWatchSaysTheRunGoesOnAndExits130(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	script := watchScript("runs/r-held", osvcv1.RunState_RUN_STATE_SUCCEEDED)
	f.script("runs/r-held", script[:3]) // the run is still applying
	for _, args := range [][]string{
		{"run", "watch", "r-held"},
		{"run", "logs", "-f", "r-held"},
	} {
		t.Run(strings.Join(args[:2], " "), func(t *testing.T) {
			held := make(chan struct{})
			f.mu.Lock()
			f.holds["runs/r-held"] = held
			f.mu.Unlock()
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var stdout, stderr bytes.Buffer
			errc := make(chan error, 1)
			go func() {
				full := append([]string{"--server", f.addr, "--timeout", "30s", "--ca-file", testCAFile(t)}, args...)
				errc <- run(ctx, full, &stdout, &stderr)
			}()
			<-held
			cancel() // as Ctrl-C does, through signal.NotifyContext
			err := <-errc
			if code := exitCode(err); code != exitStopped {
				t.Errorf("exit code %d (%v), want %d", code, err, exitStopped)
			}
			again := "osvcctl " + strings.Join(args[:len(args)-1], " ") + " runs/r-held"
			if want := fmt.Sprintf("stopped watching runs/r-held; the run goes on on the server: follow it again with '%s', stop it with 'osvcctl run cancel runs/r-held'\n", again); stderr.String() != want {
				t.Errorf("stderr = %q, want %q", stderr.String(), want)
			}
			if strings.Contains(stdout.String()+stderr.String(), "FAILED") || strings.Contains(stderr.String(), "error:") {
				t.Errorf("an interrupted watch reads like a failure:\n%s\n%s", stdout.String(), stderr.String())
			}
		})
	}
}

func TestBarDisplayStoppedLeavesTheRunUnfailed(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	d := newBarDisplay(&out)
	script := watchScript("runs/r-stop", osvcv1.RunState_RUN_STATE_SUCCEEDED)
	d.show(script[2].GetRun(), script[2].GetLogLines())
	d.close(true)
	got := out.String()
	if !strings.Contains(got, "runs/r-stop goes on on the server") || strings.Contains(got, "fail!") || strings.Contains(got, "done!") {
		t.Errorf("a stopped watch's bars:\n%s", got)
	}
}

func TestTablesFitTheTerminalWidth(t *testing.T) {
	t.Parallel()
	long := "2024-10 Cumulative Update for Windows 11 Version 23H2 for x64-based Systems (KB5044285)"
	render := func(width int) string {
		var out bytes.Buffer
		tb := newTableWidth(&out, width, "UPDATE", "KB", "TITLE")
		tb.AppendRow([]any{"updates/kb5044285", "KB5044285", long})
		tb.AppendRow([]any{"updates/kb5043080", "KB5043080", "short"})
		tb.Render()
		return out.String()
	}
	for _, width := range []int{60, 80, 100} {
		t.Run(fmt.Sprintf("%d columns", width), func(t *testing.T) {
			t.Parallel()
			got := render(width)
			for line := range strings.Lines(got) {
				if n := len([]rune(strings.TrimRight(line, "\n"))); n > width {
					t.Errorf("a line of %d columns:\n%s", n, got)
				}
			}
			// Wrapped, not cut: every word of the title is there.
			for _, word := range strings.Fields(long) {
				if !strings.Contains(got, word) {
					t.Errorf("the title lost %q:\n%s", word, got)
				}
			}
		})
	}
	t.Run("without a terminal a row stays on one line", func(t *testing.T) {
		t.Parallel()
		if got := render(0); !strings.Contains(got, long) {
			t.Errorf("the title was wrapped for a pipe:\n%s", got)
		}
	})
}
