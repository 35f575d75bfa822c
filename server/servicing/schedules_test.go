package servicing_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/servicing/servicingtest"
)

// patchTuesday4 is "4 days after the second Tuesday of the month at 22:00".
var patchTuesday4 = &osvcv1.Recurrence{Rule: &osvcv1.Recurrence_PatchTuesday{PatchTuesday: &osvcv1.PatchTuesday{DaysAfter: 4, TimeOfDay: "22:00"}}}

func TestAFutureScheduleDoesNotHoldTheImage(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	ctx := context.Background()
	img := env.Image(t, "win11", "PS1", 1)
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(10))
	start := time.Now().Add(30 * 24 * time.Hour).Truncate(time.Second)
	later, run, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}, StartTime: timestamppb.New(start)}, false)
	if err != nil || run != nil {
		t.Fatalf("a schedule in 30 days = run %v, %v; want no run yet", run, err)
	}
	if !later.GetNextRunTime().AsTime().Equal(start) || later.GetLastRun() != "" {
		t.Errorf("schedule = %v, want its next run at %s", later, start)
	}
	// The image is free meanwhile: a schedule for now runs at once.
	_, now, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false)
	if err != nil || now == nil {
		t.Fatalf("a schedule for now beside one in 30 days: run %v, %v", now, err)
	}
	// And the next one for now waits for that run: refused, naming it.
	_, _, err = env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), now.GetName()) {
		t.Errorf("a second schedule for now = %v, want FailedPrecondition naming %s", err, now.GetName())
	}
	next, err := env.Service.NextOccurrences(ctx, "win11")
	if err != nil || !next[img.Name].Equal(start) {
		t.Errorf("the image's next scheduled updates = %v, %v; want %s", next, err, start)
	}
}

func TestADueOccurrenceWaitsForTheRunInProcess(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	ctx := context.Background()
	img := env.Image(t, "win11", "PS1", 1)
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(10))
	start := time.Now().Add(time.Hour).Truncate(time.Second)
	sched, _, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}, StartTime: timestamppb.New(start)}, false)
	if err != nil {
		t.Fatal(err)
	}
	_, busy, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if next, err := env.Service.StartDueSchedules(ctx, start.Add(-time.Minute)); err != nil || !next.Equal(start) {
		t.Fatalf("before the occurrence: next %s, %v; want %s", next, err, start)
	}
	if _, err := env.Service.StartDueSchedules(ctx, start.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	got, err := env.Service.GetSchedule(ctx, sched.GetName())
	if err != nil {
		t.Fatal(err)
	}
	if got.GetLastRun() != "" || !strings.Contains(got.GetWaiting(), busy.GetName()) {
		t.Fatalf("due while %s is in process: %v; want it waiting, saying for what", busy.GetName(), got)
	}
	if _, err := env.Service.CancelRun(ctx, busy.GetName(), "make room"); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Service.StartDueSchedules(ctx, start.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	got, err = env.Service.GetSchedule(ctx, sched.GetName())
	if err != nil {
		t.Fatal(err)
	}
	if got.GetLastRun() == "" || got.GetWaiting() != "" || got.GetNextRunTime() != nil {
		t.Fatalf("once the image is free: %v; want its run started and nothing left", got)
	}
	if r := env.Run(t, got.GetLastRun()); r.GetState() != osvcv1.RunState_RUN_STATE_PENDING || r.GetSchedule() != sched.GetName() {
		t.Errorf("the occurrence's run = %v", r)
	}
}

func TestARecurringScheduleTakesWhatIsApplicableAtEachOccurrence(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	ctx := context.Background()
	img := env.Image(t, "win11", "PS1", 1)
	env.Update(t, "cu-oct", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(10))
	env.Update(t, "dotnet", osvcv1.Classification_CLASSIFICATION_DOTNET, month(10))
	sched, run, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{
		Recurrence: patchTuesday4,
		Selection:  &osvcv1.UpdateSelection{Classifications: []osvcv1.Classification{osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE}},
	}, false)
	if err != nil || run != nil {
		t.Fatalf("CreateSchedule = run %v, %v; want a recurring schedule, no run yet", run, err)
	}
	first := sched.GetNextRunTime().AsTime()
	if first.Weekday() != time.Saturday || first.Hour() != 22 || first.Day() < 12 || first.Day() > 18 || !first.After(time.Now()) {
		t.Fatalf("first occurrence %s, want a Saturday 4 days after a second Tuesday, at 22:00, to come", first)
	}
	if _, err := env.Service.StartDueSchedules(ctx, first.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	got, err := env.Service.GetSchedule(ctx, sched.GetName())
	if err != nil {
		t.Fatal(err)
	}
	if r := env.Run(t, got.GetLastRun()); strings.Join(r.GetUpdates(), ",") != "updates/cu-oct" {
		t.Errorf("the first occurrence applies %v, want the cumulative update only", r.GetUpdates())
	}
	second := got.GetNextRunTime().AsTime()
	if !second.After(first.Add(27*24*time.Hour)) || second.Weekday() != time.Saturday {
		t.Errorf("next occurrence %s, want next month's", second)
	}
	// Next month brings a new cumulative update: the next occurrence takes it.
	if _, err := env.Service.CancelRun(ctx, got.GetLastRun(), "test"); err != nil {
		t.Fatal(err)
	}
	env.Update(t, "cu-nov", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(11))
	if _, err := env.Service.StartDueSchedules(ctx, second.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	got, err = env.Service.GetSchedule(ctx, sched.GetName())
	if err != nil {
		t.Fatal(err)
	}
	if r := env.Run(t, got.GetLastRun()); strings.Join(r.GetUpdates(), ",") != "updates/cu-oct,updates/cu-nov" {
		t.Errorf("the second occurrence applies %v, want both cumulative updates, applicable then", r.GetUpdates())
	}
}

func TestAnOccurrenceWithNothingApplicableStartsNoRunAndSaysSo(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	ctx := context.Background()
	img := env.Image(t, "win11", "PS1", 1)
	sched, _, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Recurrence: patchTuesday4}, true)
	if err != nil {
		t.Fatal(err)
	}
	first := sched.GetNextRunTime().AsTime()
	if _, err := env.Service.StartDueSchedules(ctx, first.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	got, err := env.Service.GetSchedule(ctx, sched.GetName())
	if err != nil {
		t.Fatal(err)
	}
	if got.GetLastRun() != "" || !strings.Contains(got.GetWaiting(), "no applicable update") || !got.GetNextRunTime().AsTime().After(first) {
		t.Errorf("an occurrence with nothing to apply: %v; want no run, why, and the next occurrence", got)
	}
}

func TestSchedulesCanBeListedChangedAndDeleted(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	ctx := context.Background()
	img := env.Image(t, "win11", "PS1", 1)
	other := env.Image(t, "win10", "PS1", 1)
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(10))
	sched, _, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Recurrence: patchTuesday4}, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := env.Service.CreateSchedule(ctx, other.Name, &osvcv1.Schedule{Recurrence: patchTuesday4}, true); err != nil {
		t.Fatal(err)
	}
	if list, _, err := env.Service.ListSchedules(ctx, img.Name, 0, ""); err != nil || len(list) != 1 || list[0].GetName() != sched.GetName() {
		t.Errorf("the image's schedules = %v, %v", list, err)
	}
	if list, _, err := env.Service.ListSchedules(ctx, "", 0, ""); err != nil || len(list) != 2 {
		t.Errorf("every schedule = %v, %v; want 2", list, err)
	}

	cron := &osvcv1.Recurrence{Rule: &osvcv1.Recurrence_Cron{Cron: "30 3 * * 0"}, TimeZone: "Europe/Paris"}
	changed, err := env.Service.UpdateSchedule(ctx, &osvcv1.Schedule{Name: sched.GetName(), Recurrence: cron, ContinueOnError: true},
		&fieldmaskpb.FieldMask{Paths: []string{"recurrence", "continue_on_error"}})
	if err != nil {
		t.Fatal(err)
	}
	paris, _ := time.LoadLocation("Europe/Paris")
	at := changed.GetNextRunTime().AsTime().In(paris)
	if at.Weekday() != time.Sunday || at.Hour() != 3 || at.Minute() != 30 || !changed.GetContinueOnError() || changed.GetSelection() == nil {
		t.Errorf("after the update: next %s, %v", at, changed)
	}
	for _, bad := range []struct {
		sched *osvcv1.Schedule
		mask  []string
		field string
	}{
		{&osvcv1.Schedule{Name: sched.GetName()}, nil, "update_mask"},
		{&osvcv1.Schedule{Name: sched.GetName()}, []string{"last_run"}, "update_mask"},
		{&osvcv1.Schedule{Name: sched.GetName(), Recurrence: &osvcv1.Recurrence{Rule: &osvcv1.Recurrence_Cron{Cron: "soon"}}}, []string{"recurrence"}, "schedule.recurrence.cron"},
		{&osvcv1.Schedule{Name: sched.GetName(), Updates: []string{"updates/none"}}, []string{"updates"}, "schedule.updates[0]"},
		{&osvcv1.Schedule{Name: "images/win11/runs/x"}, []string{"recurrence"}, "schedule.name"},
	} {
		_, err := env.Service.UpdateSchedule(ctx, bad.sched, &fieldmaskpb.FieldMask{Paths: bad.mask})
		var fv *errdefs.FieldViolation
		if !errors.As(err, &fv) || fv.Field != bad.field {
			t.Errorf("UpdateSchedule(%v, %v) = %v, want InvalidArgument on %s", bad.sched, bad.mask, err, bad.field)
		}
	}
	if stored, _ := env.Service.GetSchedule(ctx, sched.GetName()); stored.GetRecurrence().GetCron() != "30 3 * * 0" {
		t.Errorf("a refused update changed the schedule: %v", stored)
	}

	if err := env.Service.DeleteSchedule(ctx, sched.GetName()); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Service.GetSchedule(ctx, sched.GetName()); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("GetSchedule after delete = %v, want NotFound", err)
	}
	if err := env.Service.DeleteSchedule(ctx, sched.GetName()); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("a second delete = %v, want NotFound", err)
	}
	if _, _, err := servicing.ScheduleID("images/win11/schedules/"); err == nil {
		t.Error("an empty schedule id was accepted")
	}
}
