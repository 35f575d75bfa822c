package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/integration/sampledata"
)

// TestSchedulesAreResourcesThatStartTheirRunsWhenDue has an administrator
// schedule a monthly servicing by rule and a run a few seconds ahead,
// through osvcctl against real processes: the later run does not hold the
// image, the scheduler starts it when due, and the schedules can be
// listed, changed and deleted.
func TestSchedulesAreResourcesThatStartTheirRunsWhenDue(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t)
	sample, err := sampledata.Create(ctx, sampledata.Options{Dir: t.TempDir(), PayloadBytes: 512 << 10})
	if err != nil {
		t.Fatal(err)
	}
	img, _ := c.importSample(t, sample)
	id := strings.TrimPrefix(img.GetName(), "images/")

	// The plan first: what each update would do, nothing scheduled.
	plan := c.osvcctl(t, "schedule", "create", id, "--all-applicable", "--dry-run")
	for _, want := range [][]string{{"KB5045935", "APPLIED"}, {"KB890830", "UNSUPPORTED", "no engine applies"}, {"Disk needed:"}} {
		if !lineWith(plan, want...) {
			t.Errorf("the plan lacks a line with %q:\n%s", want, plan)
		}
	}
	if list := c.osvcctl(t, "schedule", "list", id); !strings.Contains(list, "no schedules") {
		t.Errorf("a dry run scheduled something:\n%s", list)
	}

	// -q prints the name on stdout, the warnings go to stderr: the last line.
	monthly := lastLine(c.osvcctl(t, "schedule", "create", id, "--classification", "cumulative-update",
		"--days-after-patch-tuesday", "4", "--at", "22:00", "--time-zone", "Europe/Paris", "-q"))
	if !strings.HasPrefix(monthly, img.GetName()+"/schedules/") {
		t.Fatalf("schedule create -q of a monthly schedule printed %q, want the schedule's name", monthly)
	}
	got := c.osvcctl(t, "schedule", "get", monthly)
	if !strings.Contains(got, "4 days after Patch Tuesday at 22:00 (Europe/Paris)") || !strings.Contains(got, "Next run:") {
		t.Errorf("schedule get:\n%s", got)
	}
	if out := c.osvcctl(t, "image", "get", id); !strings.Contains(out, "Scheduled updates: 20") {
		t.Errorf("image get shows no Scheduled Updates Date:\n%s", out)
	}

	// A run in a few seconds: until then the image is free.
	start := time.Now().Add(3 * time.Second).UTC().Format(time.RFC3339)
	soon := lastLine(c.osvcctl(t, "schedule", "create", id, "--update", "kb5045935-x64", "--start-time", start, "-q"))
	servicingRuns := func() int {
		t.Helper()
		runs, err := c.svc.ListRuns(ctx, &osvcv1.ListRunsRequest{Image: img.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, r := range runs.GetRuns() {
			if r.GetKind() != osvcv1.RunKind_RUN_KIND_INSPECTION {
				n++
			}
		}
		return n
	}
	if n := servicingRuns(); n != 0 {
		t.Fatalf("%d servicing runs before the schedule's time, want none: a later run does not hold the image", n)
	}
	var last string
	eventually(t, time.Minute, "the scheduler to start the run when due", func() bool {
		s, err := c.svc.GetSchedule(ctx, &osvcv1.GetScheduleRequest{Name: soon})
		last = s.GetSchedule().GetLastRun()
		return err == nil && last != ""
	})
	run, _ := c.watch(t, last)
	if run.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || run.GetSchedule() != soon {
		t.Fatalf("the scheduled run ended %s (%s), of %s", run.GetState(), run.GetError(), run.GetSchedule())
	}
	if n := servicingRuns(); n != 1 {
		t.Errorf("%d servicing runs after the schedule's time, want 1: one run per occurrence", n)
	}

	list := c.osvcctl(t, "schedule", "list", id)
	if !lineWith(list, monthly, "applicable", "Cumulative Update", "Patch Tuesday") || !lineWith(list, soon, "1 listed", last) {
		t.Errorf("schedule list:\n%s", list)
	}
	changed := c.osvcctl(t, "schedule", "update", monthly, "--cron", "0 3 * * 0")
	if !strings.Contains(changed, `cron "0 3 * * 0" (UTC)`) {
		t.Errorf("schedule update:\n%s", changed)
	}
	c.osvcctl(t, "schedule", "delete", monthly)
	if out := c.osvcctl(t, "schedule", "list", id); strings.Contains(out, monthly) {
		t.Errorf("the deleted schedule is still listed:\n%s", out)
	}
}

// lastLine is the last line of out.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
