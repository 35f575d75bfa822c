package recurrence

import (
	"errors"
	"strings"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
)

func patchTuesday(days int32, at, tz string) *osvcv1.Recurrence {
	return &osvcv1.Recurrence{Rule: &osvcv1.Recurrence_PatchTuesday{PatchTuesday: &osvcv1.PatchTuesday{DaysAfter: days, TimeOfDay: at}}, TimeZone: tz}
}

func TestPatchTuesdayIsTheSecondTuesdayOfTheMonth(t *testing.T) {
	for month, want := range map[string]string{
		"2026-11-20": "2026-11-10", // the 1st a Sunday
		"2026-12-03": "2026-12-08", // the 1st a Tuesday: the 8th
		"2027-02-01": "2027-02-09",
		"2027-06-15": "2027-06-08", // the 1st a Tuesday
		"2027-09-30": "2027-09-14", // the 1st a Wednesday: the 14th
	} {
		at, _ := time.Parse(time.DateOnly, month)
		if got := SecondTuesday(at).Format(time.DateOnly); got != want {
			t.Errorf("the second Tuesday of %s = %s, want %s", month, got, want)
		}
	}
}

func TestTheNextOccurrence(t *testing.T) {
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Fatal(err)
	}
	at := func(s string, loc *time.Location) time.Time {
		t.Helper()
		v, err := time.ParseInLocation("2006-01-02 15:04", s, loc)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, c := range []struct {
		name  string
		rule  *osvcv1.Recurrence
		after time.Time
		want  time.Time
	}{
		{"4 days after Patch Tuesday, this month", patchTuesday(4, "22:00", "Europe/Paris"), at("2026-11-03 12:00", time.UTC), at("2026-11-14 22:00", paris)},
		{"the occurrence itself is not after itself", patchTuesday(4, "22:00", "Europe/Paris"), at("2026-11-14 22:00", paris), at("2026-12-12 22:00", paris)},
		{"past this month's, next month's", patchTuesday(0, "03:30", ""), at("2026-12-09 00:00", time.UTC), at("2027-01-12 03:30", time.UTC)},
		{"across the change to summer time", patchTuesday(20, "02:30", "Europe/Paris"), at("2027-03-10 00:00", time.UTC), at("2027-03-29 02:30", paris)},
		{"cron on Saturdays at 22:00", &osvcv1.Recurrence{Rule: &osvcv1.Recurrence_Cron{Cron: "0 22 * * 6"}}, at("2026-12-03 10:00", time.UTC), at("2026-12-05 22:00", time.UTC)},
		{"cron in a time zone", &osvcv1.Recurrence{Rule: &osvcv1.Recurrence_Cron{Cron: "0 22 * * 6"}, TimeZone: "Europe/Paris"}, at("2026-12-05 21:30", time.UTC), at("2026-12-12 22:00", paris)},
		{"a descriptor", &osvcv1.Recurrence{Rule: &osvcv1.Recurrence_Cron{Cron: "@monthly"}}, at("2026-12-03 10:00", time.UTC), at("2027-01-01 00:00", time.UTC)},
	} {
		r, err := Parse(c.rule, "schedule.recurrence")
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := r.Next(c.after); !got.Equal(c.want) {
			t.Errorf("%s: next after %s = %s, want %s", c.name, c.after, got, c.want)
		}
	}
}

func TestABadRuleSaysWhichFieldAndWhatToFix(t *testing.T) {
	for _, c := range []struct {
		rule        *osvcv1.Recurrence
		field, text string
	}{
		{&osvcv1.Recurrence{Rule: &osvcv1.Recurrence_Cron{Cron: "every sunday"}}, "schedule.recurrence.cron", "five fields"},
		{&osvcv1.Recurrence{Rule: &osvcv1.Recurrence_Cron{Cron: "CRON_TZ=Europe/Paris 0 3 * * *"}}, "schedule.recurrence.cron", "time_zone"},
		{&osvcv1.Recurrence{Rule: &osvcv1.Recurrence_Cron{Cron: "0 3 * * *"}, TimeZone: "Mars/Olympus"}, "schedule.recurrence.time_zone", "IANA"},
		{&osvcv1.Recurrence{Rule: &osvcv1.Recurrence_Cron{Cron: "0 3 * * *"}, TimeZone: "Local"}, "schedule.recurrence.time_zone", "IANA"},
		{patchTuesday(21, "22:00", ""), "schedule.recurrence.patch_tuesday.days_after", "0 (the second Tuesday itself) to 20"},
		{patchTuesday(-1, "22:00", ""), "schedule.recurrence.patch_tuesday.days_after", "to 20"},
		{patchTuesday(4, "10pm", ""), "schedule.recurrence.patch_tuesday.time_of_day", "HH:MM"},
		{&osvcv1.Recurrence{}, "schedule.recurrence", "cron or patch_tuesday"},
	} {
		_, err := Parse(c.rule, "schedule.recurrence")
		var fv *errdefs.FieldViolation
		if !errors.As(err, &fv) || fv.Field != c.field || !strings.Contains(fv.Description, c.text) {
			t.Errorf("%v: %v, want %s saying %q", c.rule, err, c.field, c.text)
		}
	}
}
