//go:build unix

package integration

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/integration/sampledata"
)

// TestAFrozenAgentLosesItsRunToAnother freezes an agent (SIGSTOP) right after
// it was leased a run: the server stops hearing from it, its etcd lease
// expires, the run goes back to PENDING and a second agent services it. When
// the first agent thaws, nothing it does reaches the image: its reports carry
// a stale fencing token, and it discards its work. SIGSTOP is Unix's alone,
// hence the build constraint.
func TestAFrozenAgentLosesItsRunToAnother(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, "--heartbeat-interval", "500ms", "--lease-ttl", "2s", "--retry-backoff", "100ms")
	frozen := c.startAgent(t, "agent-a")
	sample, err := sampledata.Create(ctx, sampledata.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	img, _ := c.importSample(t, sample)

	if err := frozen.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-in first-out: thaw before the stop sends SIGTERM.
	t.Cleanup(func() { _ = frozen.cmd.Process.Signal(syscall.SIGCONT) })

	created, err := c.svc.CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{
		Parent:        img.GetName(),
		AllApplicable: true,
		Schedule:      &osvcv1.Schedule{ContinueOnError: true},
	})
	if err != nil {
		t.Fatalf("create schedule: %v", err)
	}
	runName := created.GetRun().GetName()
	var firstToken int64
	eventually(t, 30*time.Second, runName+" to be leased to agent-a", func() bool {
		got, err := c.svc.GetRun(ctx, &osvcv1.GetRunRequest{Name: runName})
		if err != nil || got.GetRun().GetAgent() != "agents/agent-a" || got.GetRun().GetFencingToken() == 0 {
			return false
		}
		firstToken = got.GetRun().GetFencingToken()
		return true
	})
	c.waitAgent(t, "agent-a", osvcv1.AgentState_AGENT_STATE_LOST, time.Time{})

	c.agent = c.startAgent(t, "agent-b")
	run, _ := c.watch(t, runName)
	if run.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("run ended %v: %s", run.GetState(), run.GetError())
	}
	if run.GetAgent() != "agents/agent-b" || run.GetAttempt() != 2 {
		t.Errorf("run finished by %s on attempt %d, want agents/agent-b on attempt 2", run.GetAgent(), run.GetAttempt())
	}
	if run.GetFencingToken() <= firstToken {
		t.Errorf("second lease has fencing token %d, not above the first lease's %d", run.GetFencingToken(), firstToken)
	}

	thawed := time.Now()
	if err := frozen.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	c.waitAgent(t, "agent-a", osvcv1.AgentState_AGENT_STATE_CONNECTED, thawed)
	eventually(t, 60*time.Second, "agent-a to leave no mount behind", func() bool {
		return !mountedUnder(t, frozen.dir)
	})
	eventually(t, 30*time.Second, "agent-a to discard "+runName, func() bool {
		for _, line := range strings.Split(frozen.log.String(), "\n") {
			if strings.Contains(line, "discarded") && strings.Contains(line, runName) {
				return true
			}
		}
		return false
	})

	got, err := c.images.GetImage(ctx, &osvcv1.GetImageRequest{Name: img.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	image := got.GetImage()
	if image.GetCurrentVersion() != 2 || len(image.GetVersions()) != 2 {
		t.Fatalf("image at version %d with %d versions, want only agent-b's version 2 beside version 1", image.GetCurrentVersion(), len(image.GetVersions()))
	}
	for _, v := range image.GetVersions() {
		if v.GetVersion() == 2 && v.GetCreatedByRun() != runName {
			t.Errorf("version 2 was created by %q, want %s", v.GetCreatedByRun(), runName)
		}
	}
	if st := image.GetServicingStatus(); st != osvcv1.ServicingStatus_SERVICING_STATUS_SUCCEEDED {
		t.Errorf("servicing status %v after the run, want SUCCEEDED", st)
	}
}

// mountedUnder reports whether any mount point lies under dir.
func mountedUnder(t *testing.T, dir string) bool {
	t.Helper()
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 1 && strings.HasPrefix(fields[1], dir+string(filepath.Separator)) {
			return true
		}
	}
	return false
}
