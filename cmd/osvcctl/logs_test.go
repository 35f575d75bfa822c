package main

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// putLogFile stores text as a blob of the fake and returns it as a run's log file.
func (f *fakeOsvc) putLogFile(name, text string) *osvcv1.RunArtifact {
	sum := sha256.Sum256([]byte(text))
	sha := hex.EncodeToString(sum[:])
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blobs[sha] = []byte(text)
	return &osvcv1.RunArtifact{Name: name, Sha256: sha, SizeBytes: int64(len(text)), MediaType: "text/plain"}
}

// setRun makes GetRun answer r.
func (f *fakeOsvc) setRun(r *osvcv1.Run) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.runs[r.GetName()] = r
}

const (
	servicingLogText = "2026-11-14 09:30:00.000Z [INFO]  run: step started: step=DRIVE\n2026-11-14 09:31:00.000Z [INFO]  run: run succeeded\n"
	dismLogText      = "2026-11-14 09:30:01.000Z [INFO]  wimlib: running: command=\"wimlib-imagex mountrw source.wim 1 mount\"\n"
)

func TestRunLogsPrintsTheLinesTheServerHoldsNowAndExits(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	script := watchScript("runs/r-live", osvcv1.RunState_RUN_STATE_SUCCEEDED)
	// The run is applying: the server holds lines 1 and 2; the rest comes later.
	f.script("runs/r-live", script[2:])

	out := mustRun(t, f.addr, "run", "logs", "r-live")
	if want := "09:30:01 INFO  mounting index 1\n09:30:02 INFO  applying KB5031455\n"; out != want {
		t.Errorf("run logs printed\n%q\nwant the lines held now, once each\n%q", out, want)
	}
	if reqs := requestsOf[*osvcv1.WatchRunRequest](f); len(reqs) != 1 || !reqs[0].GetSnapshotOnly() || reqs[0].GetName() != "runs/r-live" {
		t.Errorf("WatchRun requests %v, want one snapshot of runs/r-live", reqs)
	}

	out = mustRun(t, f.addr, "run", "logs", "r-live", "-o", "json")
	var resp osvcv1.WatchRunResponse
	if err := protojson.Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("-o json is not one WatchRunResponse: %v\n%s", err, out)
	}
	if resp.GetRun().GetState() != osvcv1.RunState_RUN_STATE_IN_PROCESS || len(resp.GetLogLines()) != 2 {
		t.Errorf("-o json: run %s with %d lines, want IN_PROCESS with 2", resp.GetRun().GetState(), len(resp.GetLogLines()))
	}
}

func TestRunLogsFollowPrintsEveryLineUntilTheRunEnds(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	f.script("runs/r-ok", watchScript("runs/r-ok", osvcv1.RunState_RUN_STATE_SUCCEEDED))
	f.script("runs/r-bad", watchScript("runs/r-bad", osvcv1.RunState_RUN_STATE_FAILED))

	out := mustRun(t, f.addr, "run", "logs", "r-ok", "-f")
	want := "09:30:01 INFO  mounting index 1\n09:30:02 INFO  applying KB5031455\n09:30:03 INFO  applying KB5031354\n09:30:04 INFO  done\n"
	if out != want {
		t.Errorf("run logs -f printed\n%q\nwant every line once, and nothing else\n%q", out, want)
	}
	if reqs := requestsOf[*osvcv1.WatchRunRequest](f); len(reqs) != 1 || reqs[0].GetSnapshotOnly() {
		t.Errorf("WatchRun requests %v, want one that follows", reqs)
	}

	stdout, stderr, err := osvcctl(t, f.addr, "run", "logs", "r-bad", "-f")
	if code := exitCode(err); code != exitRunEnded {
		t.Errorf("run logs -f of a run that fails: exit %d (%v), want %d", code, err, exitRunEnded)
	}
	if !strings.HasSuffix(stdout, "09:30:04 INFO  done\n") || !strings.Contains(stderr, "runs/r-bad ended FAILED") {
		t.Errorf("stdout %q, stderr %q: want the lines, then the run's end", stdout, stderr)
	}
}

func TestRunLogsSaysWhyThereAreNoLines(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	script := watchScript("runs/r-new", osvcv1.RunState_RUN_STATE_SUCCEEDED)
	f.script("runs/r-new", script[:1])
	pruned := proto.Clone(script[4].GetRun()).(*osvcv1.Run)
	pruned.Name, pruned.LogLineCount = "runs/r-old", 4
	f.script("runs/r-old", []*osvcv1.WatchRunResponse{{Run: pruned}})
	f.script("runs/r-canceled", []*osvcv1.WatchRunResponse{{Run: cannedCanceledRun}})
	for _, tt := range []struct{ run, want string }{
		{"r-new", "runs/r-new is PENDING and has no log lines yet"},
		{"r-canceled", "runs/r-canceled ended CANCELED without a log line: no agent worked on it"},
		{"r-old", "runs/r-old logged 4 lines, which the server no longer holds; its log files: 'osvcctl run logs runs/r-old --file OfflineServicingMgr.log'"},
	} {
		stdout, stderr, err := osvcctl(t, f.addr, "run", "logs", tt.run)
		if err != nil || stdout != "" || !strings.Contains(stderr, tt.want) {
			t.Errorf("run logs %s: err %v, stdout %q, stderr %q; want %q on stderr", tt.run, err, stdout, stderr, tt.want)
		}
	}
}

func TestRunLogsFilePrintsTheFileTheAgentUploaded(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	run := proto.Clone(cannedRun).(*osvcv1.Run)
	run.Name = "runs/r-logs"
	run.Artifacts = []*osvcv1.RunArtifact{f.putLogFile("dism.log", dismLogText), f.putLogFile("OfflineServicingMgr.log", servicingLogText)}
	f.setRun(run)
	for name, want := range map[string]string{"dism.log": dismLogText, "OfflineServicingMgr.log": servicingLogText} {
		if out := mustRun(t, f.addr, "run", "logs", "r-logs", "--file", name); out != want {
			t.Errorf("--file %s printed\n%q\nwant the uploaded file\n%q", name, out, want)
		}
	}
	out := mustRun(t, f.addr, "run", "get", "r-logs")
	assertContainsInOrder(t, out, "Log files", "dism.log", run.Artifacts[0].GetSha256(), "OfflineServicingMgr.log", run.Artifacts[1].GetSha256())
}

func TestRunLogsFileFollowWaitsForTheRunToEnd(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	script := watchScript("runs/r-wait", osvcv1.RunState_RUN_STATE_SUCCEEDED)
	f.setRun(script[2].GetRun())
	final := script[len(script)-1].GetRun()
	final.Artifacts = []*osvcv1.RunArtifact{f.putLogFile("dism.log", dismLogText)}
	f.script("runs/r-wait", script)

	stdout, stderr, err := osvcctl(t, f.addr, "run", "logs", "r-wait", "--file", "dism.log", "-f")
	if err != nil || stdout != dismLogText {
		t.Fatalf("--file -f: err %v, stdout %q; want the file once the run ended", err, stdout)
	}
	if want := "runs/r-wait is IN_PROCESS: waiting for it to end, when its agent uploads dism.log\n"; stderr != want {
		t.Errorf("stderr %q, want %q", stderr, want)
	}

	// A run that ends FAILED still has its file; following it exits 5, as run watch does.
	failing := watchScript("runs/r-wait-bad", osvcv1.RunState_RUN_STATE_FAILED)
	f.setRun(failing[2].GetRun())
	failing[len(failing)-1].GetRun().Artifacts = []*osvcv1.RunArtifact{f.putLogFile("dism.log", dismLogText)}
	f.script("runs/r-wait-bad", failing)
	stdout, _, err = osvcctl(t, f.addr, "run", "logs", "r-wait-bad", "--file", "dism.log", "-f")
	if code := exitCode(err); code != exitRunEnded || stdout != dismLogText {
		t.Errorf("--file -f of a run that fails: exit %d (%v), stdout %q; want the file and exit %d", code, err, stdout, exitRunEnded)
	}
}

func TestRunLogsRefusalsSayWhatToDo(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	damaged := proto.Clone(cannedRun).(*osvcv1.Run)
	damaged.Name = "runs/r-damaged"
	damaged.Artifacts = []*osvcv1.RunArtifact{f.putLogFile("dism.log", dismLogText)}
	f.setRun(damaged)
	partial := proto.Clone(cannedRun).(*osvcv1.Run)
	partial.Name, partial.LogLineCount = "runs/r-partial", 12
	partial.Artifacts = []*osvcv1.RunArtifact{f.putLogFile("OfflineServicingMgr.log", servicingLogText)}
	f.setRun(partial)
	f.mu.Lock()
	f.damaged[damaged.Artifacts[0].GetSha256()] = true
	f.mu.Unlock()
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"a file that is not a run's log file", []string{"--file", "../../etc/passwd"}, exitUsage, "want dism.log or OfflineServicingMgr.log"},
		{"a file with json output", []string{"--file", "dism.log", "-o", "json"}, exitUsage, "leave out -o json"},
		{"the file of a run in progress", []string{"r-held", "--file", "dism.log"}, exitNotFound, "runs/r-held is PENDING: its agent uploads dism.log when the run ends"},
		{"the file of a run no agent worked on", []string{"r-canceled", "--file", "OfflineServicingMgr.log"}, exitNotFound, "runs/r-canceled ended CANCELED before an agent worked on it: it has no log files"},
		{"a file a run ended without", []string{"r-partial", "--file", "dism.log"}, exitNotFound, "runs/r-partial ended SUCCEEDED with only OfflineServicingMgr.log: its agent uploads dism.log with the run's result when it has written it, and the upload may have failed; the agent keeps its files in <drive>/OfflineImageServicing/r-partial"},
		{"the file of an unknown run", []string{"r-nope", "--file", "dism.log"}, exitNotFound, "'osvcctl run list' lists the runs"},
		{"the lines of an unknown run", []string{"r-nope"}, exitNotFound, "'osvcctl run list' lists the runs"},
		{"a file that arrives damaged", []string{"r-damaged", "--file", "dism.log"}, exitError, "run the command again"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := tt.args
			if strings.HasPrefix(args[0], "--") {
				args = append([]string{"r-1"}, args...)
			}
			_, stderr, err := osvcctl(t, f.addr, append([]string{"run", "logs"}, args...)...)
			if code := exitCode(err); code != tt.code {
				t.Errorf("exit %d (%v), want %d", code, err, tt.code)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr %q, want it to say %q", stderr, tt.want)
			}
			// The run list helps when the run is not there, not when a file is not.
			if strings.Contains(stderr, "lists the runs") != strings.Contains(tt.name, "unknown run") {
				t.Errorf("stderr %q: the hint to list the runs belongs to an unknown run only", stderr)
			}
		})
	}
}
