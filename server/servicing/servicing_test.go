package servicing_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/servicing/servicingtest"
	"github.com/osvc/osvc/server/store/storetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	storetest.Close()
	os.Exit(code)
}

var month = func(m time.Month) time.Time { return time.Date(2024, m, 8, 0, 0, 0, 0, time.UTC) }

func TestCreateScheduleQueuesAPendingRunWithUpdatesInServicingOrder(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	ctx := context.Background()
	img := env.Image(t, "win11", "PS1", 2)
	env.Update(t, "cu-oct", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(10))
	env.Update(t, "dotnet", osvcv1.Classification_CLASSIFICATION_DOTNET, month(7))
	env.Update(t, "cu-sep", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(9))
	env.Update(t, "sec-aug", osvcv1.Classification_CLASSIFICATION_SECURITY_UPDATE, month(8))
	env.Update(t, "ssu", osvcv1.Classification_CLASSIFICATION_SERVICING_STACK, month(11))
	env.Update(t, "upd-sep", osvcv1.Classification_CLASSIFICATION_UPDATE, month(9))
	sched, run, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{
		Updates: []string{"updates/cu-oct", "updates/dotnet", "updates/cu-sep", "updates/sec-aug", "updates/ssu", "updates/upd-sep"},
	}, false)
	if err != nil {
		t.Fatalf("CreateSchedule: %v", err)
	}
	want := []string{"updates/ssu", "updates/sec-aug", "updates/upd-sep", "updates/cu-sep", "updates/cu-oct", "updates/dotnet"}
	if strings.Join(run.GetUpdates(), ",") != strings.Join(want, ",") {
		t.Errorf("run updates = %v, want %v", run.GetUpdates(), want)
	}
	if strings.Join(sched.GetUpdates(), ",") != strings.Join(want, ",") {
		t.Errorf("schedule updates = %v, want %v", sched.GetUpdates(), want)
	}
	if !strings.HasPrefix(sched.GetName(), img.Name+"/schedules/") || run.GetSchedule() != sched.GetName() {
		t.Errorf("schedule name %q, run.schedule %q", sched.GetName(), run.GetSchedule())
	}
	if run.GetState() != osvcv1.RunState_RUN_STATE_PENDING || run.GetSourceVersion() != 1 ||
		run.GetSourceSizeBytes() != img.GetVersions()[0].GetSizeBytes() || run.GetRemoveSuperseded() ||
		run.GetNotBefore() != nil || sched.GetLastRun() != run.GetName() || sched.GetNextRunTime() != nil {
		t.Errorf("run = %v", run)
	}
	if got := len(run.GetUpdateResults()); got != 12 {
		t.Fatalf("%d update results, want 6 updates × 2 indexes", got)
	}
	for i, r := range run.GetUpdateResults() {
		if r.GetState() != osvcv1.UpdateState_UPDATE_STATE_PENDING || r.GetIndex() != int32(i/6+1) || r.GetUpdate() != want[i%6] {
			t.Errorf("result %d = %v", i, r)
		}
	}
	stored := env.Run(t, run.GetName())
	if stored.GetState() != osvcv1.RunState_RUN_STATE_PENDING || len(stored.GetUpdateResults()) != 12 {
		t.Errorf("stored run = %v", stored)
	}
	if got := env.GetImage(t, img.Name).GetServicingStatus(); got != osvcv1.ServicingStatus_SERVICING_STATUS_SCHEDULED {
		t.Errorf("image servicing status = %s, want SCHEDULED", got)
	}
}

func TestRemoveSupersededIsRefusedForAnImageOfSeveralIndexes(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	ctx := context.Background()
	two := env.Image(t, "win11", "PS1", 2)
	one := env.Image(t, "win11-ent", "PS1", 1)
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(10))
	_, _, err := env.Service.CreateSchedule(ctx, two.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}, RemoveSuperseded: true}, false)
	var fv *errdefs.FieldViolation
	if !errors.As(err, &fv) || fv.Field != "schedule.remove_superseded" || !strings.Contains(err.Error(), "2 indexes") {
		t.Fatalf("remove superseded on 2 indexes: err = %v, want InvalidArgument on schedule.remove_superseded", err)
	}
	if got := env.GetImage(t, two.Name).GetServicingStatus(); got == osvcv1.ServicingStatus_SERVICING_STATUS_SCHEDULED {
		t.Errorf("a refused schedule left the image %s", got)
	}
	if _, _, err := env.Service.CreateSchedule(ctx, two.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false); err != nil {
		t.Errorf("the same schedule without remove superseded: %v", err)
	}
	if _, run, err := env.Service.CreateSchedule(ctx, one.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}, RemoveSuperseded: true}, false); err != nil || !run.GetRemoveSuperseded() {
		t.Errorf("remove superseded on one index: %v, %v", run, err)
	}
}

func TestCreateScheduleRefusesASecondRunForTheSameImage(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	ctx := context.Background()
	img := env.Image(t, "win11", "PS1", 1)
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(10))
	_, first, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false)
	if err != nil {
		t.Fatalf("first schedule: %v", err)
	}
	_, _, err = env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), first.GetName()) {
		t.Fatalf("second schedule: err = %v, want FailedPrecondition naming %s", err, first.GetName())
	}
	// Canceling the pending run frees the image at once.
	canceled, err := env.Service.CancelRun(ctx, first.GetName(), "wrong updates")
	if err != nil {
		t.Fatalf("CancelRun: %v", err)
	}
	if canceled.GetState() != osvcv1.RunState_RUN_STATE_CANCELED || canceled.GetEndTime() == nil {
		t.Errorf("canceled run = %v", canceled)
	}
	if _, err := env.Service.CancelRun(ctx, first.GetName(), ""); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("cancel of an ended run: err = %v, want FailedPrecondition", err)
	}
	if _, _, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false); err != nil {
		t.Errorf("schedule after cancel: %v", err)
	}
	if got := env.GetImage(t, img.Name).GetCurrentVersion(); got != 1 {
		t.Errorf("image current version = %d after a cancel, want 1", got)
	}
}

func TestCreateScheduleRefusesBadSelections(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	img := env.Image(t, "win11", "PS1", 1)
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(10))
	tests := []struct {
		name          string
		parent        string
		updates       []string
		allApplicable bool
		want          error
	}{
		{"no update selected", img.Name, nil, false, errdefs.ErrInvalidArgument},
		{"an update selected twice", img.Name, []string{"updates/cu", "updates/cu"}, false, errdefs.ErrInvalidArgument},
		{"an unknown update", img.Name, []string{"updates/nope"}, false, errdefs.ErrInvalidArgument},
		{"a malformed update name", img.Name, []string{"cu"}, false, errdefs.ErrInvalidArgument},
		{"an unknown image", "images/nope", []string{"updates/cu"}, false, errdefs.ErrNotFound},
		{"a malformed image name", "win11", []string{"updates/cu"}, false, errdefs.ErrInvalidArgument},
		{"updates and all_applicable together", img.Name, []string{"updates/cu"}, true, errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := env.Service.CreateSchedule(context.Background(), tt.parent, &osvcv1.Schedule{Updates: tt.updates}, tt.allApplicable)
			if !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestCreateScheduleWithAllApplicableAndNoneApplicableIsFailedPrecondition(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	img := env.Image(t, "win11", "PS1", 1)
	_, _, err := env.Service.CreateSchedule(context.Background(), img.Name, &osvcv1.Schedule{}, true)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "no applicable update for images/win11") {
		t.Fatalf("err = %v, want FailedPrecondition: no applicable update for images/win11", err)
	}
}

func TestCreateScheduleWithAllApplicableTakesTheApplicableUpdates(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	img := env.Image(t, "win11", "PS1", 1)
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(10))
	env.Update(t, "ssu", osvcv1.Classification_CLASSIFICATION_SERVICING_STACK, month(10))
	_, run, err := env.Service.CreateSchedule(context.Background(), img.Name, &osvcv1.Schedule{}, true)
	if err != nil {
		t.Fatalf("CreateSchedule: %v", err)
	}
	if got := strings.Join(run.GetUpdates(), ","); got != "updates/ssu,updates/cu" {
		t.Errorf("updates = %s, want updates/ssu,updates/cu", got)
	}
}

func TestListRunsFiltersByImageAndPages(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	ctx := context.Background()
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(10))
	var runs []string
	for _, id := range []string{"a", "b", "c"} {
		img := env.Image(t, id, "PS1", 1)
		_, run, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false)
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, run.GetName())
	}
	var got []string
	token := ""
	for {
		page, next, err := env.Service.ListRuns(ctx, "", 2, token)
		if err != nil {
			t.Fatalf("ListRuns: %v", err)
		}
		for _, r := range page {
			got = append(got, r.GetName())
		}
		if next == "" {
			break
		}
		token = next
	}
	if strings.Join(got, ",") != strings.Join(runs, ",") {
		t.Errorf("runs = %v, want %v in creation order", got, runs)
	}
	page, _, err := env.Service.ListRuns(ctx, "images/b", 0, "")
	if err != nil || len(page) != 1 || page[0].GetName() != runs[1] {
		t.Errorf("runs of images/b = %v, %v; want [%s]", page, err, runs[1])
	}
	if _, _, err := env.Service.ListRuns(ctx, "images/nope", 0, ""); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("runs of an image that does not exist: %v, want ErrNotFound", err)
	}
}

func TestListRunsOfAnImagePagesThroughItsOwnRunsOnly(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	ctx := context.Background()
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(10))
	mine := env.Image(t, "mine", "PS1", 1)
	other := env.Image(t, "other", "PS1", 1)
	var want []string
	for range 5 {
		for _, img := range []*osvcv1.Image{mine, other} {
			_, run, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := env.Service.CancelRun(ctx, run.GetName(), "next"); err != nil {
				t.Fatal(err)
			}
			if img == mine {
				want = append(want, run.GetName())
			}
		}
	}
	var got []string
	token, firstToken := "", ""
	for pages := 0; ; pages++ {
		page, next, err := env.Service.ListRuns(ctx, mine.Name, 2, token)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 2 || pages > 3 {
			t.Fatalf("page %d holds %d runs, want at most 2 and 3 pages", pages, len(page))
		}
		for _, r := range page {
			got = append(got, r.GetName())
		}
		if next == "" {
			break
		}
		if firstToken == "" {
			firstToken = next
		}
		token = next
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("runs of %s = %v, want %v in creation order", mine.Name, got, want)
	}
	if _, _, err := env.Service.ListRuns(ctx, other.Name, 2, firstToken); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("a token of another image's list: %v, want InvalidArgument", err)
	}
}

func TestSortForServicingPutsTheServicingStackFirstAndDotNetLast(t *testing.T) {
	t.Parallel()
	u := func(name string, c osvcv1.Classification, m time.Month) *osvcv1.Update {
		return &osvcv1.Update{Name: name, Classification: c, ReleaseTime: timestamppb.New(month(m))}
	}
	updates := []*osvcv1.Update{
		u("dotnet", osvcv1.Classification_CLASSIFICATION_DOTNET, 1),
		u("cu-late", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, 12),
		u("cu-early", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, 2),
		u("other", osvcv1.Classification_CLASSIFICATION_UNSPECIFIED, 5),
		u("ssu", osvcv1.Classification_CLASSIFICATION_SERVICING_STACK, 12),
		u("sec", osvcv1.Classification_CLASSIFICATION_SECURITY_UPDATE, 3),
	}
	servicing.SortForServicing(updates)
	var got []string
	for _, x := range updates {
		got = append(got, x.GetName())
	}
	if want := "ssu,sec,other,cu-early,cu-late,dotnet"; strings.Join(got, ",") != want {
		t.Errorf("order = %v, want %s", got, want)
	}
}

func TestAStartTimeBeforeTheImageOrOverAYearAheadIsRefused(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	ctx := context.Background()
	img := env.Image(t, "win11", "PS1", 1)
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(10))
	for _, tt := range []struct {
		name  string
		start time.Time
	}{
		{"before the image was imported", img.GetCreateTime().AsTime().Add(-time.Hour)},
		{"more than a year ahead", time.Now().Add(400 * 24 * time.Hour)},
	} {
		_, _, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}, StartTime: timestamppb.New(tt.start)}, false)
		var fv *errdefs.FieldViolation
		if !errors.As(err, &fv) || fv.Field != "schedule.start_time" {
			t.Errorf("%s: CreateSchedule = %v, want a field violation on schedule.start_time", tt.name, err)
		}
	}
	if _, _, err := env.Service.ListRuns(ctx, img.Name, 0, ""); err != nil {
		t.Fatal(err)
	}
	if runs, _, _ := env.Service.ListRuns(ctx, img.Name, 0, ""); len(runs) != 0 {
		t.Errorf("refused schedules left %d runs", len(runs))
	}
}
