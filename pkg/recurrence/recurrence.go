// Package recurrence computes when a recurring schedule's runs start: a
// cron expression (robfig/cron's standard five fields, the parser
// Kubernetes CronJobs use), or "N days after the second Tuesday of the
// month at HH:MM", the rhythm of Windows' monthly updates; both in an IANA
// time zone.
package recurrence

import (
	"fmt"
	"strings"
	"time"
	_ "time/tzdata" // time zones on machines without a zone database (Windows)

	"github.com/robfig/cron/v3"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
)

// MaxDaysAfter bounds PatchTuesday.days_after: the second Tuesday is the
// 8th to the 14th, so 20 days after stays within the month, as a
// Configuration Manager offset does.
const MaxDaysAfter = 20

// Rule is a parsed recurrence.
type Rule struct {
	cron  cron.Schedule
	patch *patch
	loc   *time.Location
	text  string
}

type patch struct {
	daysAfter    int
	hour, minute int
}

// Parse checks r; an error names the field (under field, e.g.
// "schedule.recurrence") and says what to fix.
func Parse(r *osvcv1.Recurrence, field string) (Rule, error) {
	loc := time.UTC
	if tz := r.GetTimeZone(); tz != "" {
		l, err := time.LoadLocation(tz)
		if err != nil || strings.HasPrefix(tz, "Local") {
			return Rule{}, errdefs.InvalidArgument(field+".time_zone", fmt.Sprintf("%q is not an IANA time zone; give one such as Europe/Paris or America/New_York", tz))
		}
		loc = l
	}
	switch rule := r.GetRule().(type) {
	case *osvcv1.Recurrence_Cron:
		expr := strings.TrimSpace(rule.Cron)
		if strings.Contains(expr, "TZ=") {
			return Rule{}, errdefs.InvalidArgument(field+".cron", "give the time zone in time_zone, not in the expression")
		}
		s, err := cron.ParseStandard(expr)
		if err != nil {
			return Rule{}, errdefs.InvalidArgument(field+".cron", fmt.Sprintf("%q: %v; want five fields, minute hour day-of-month month day-of-week, e.g. \"0 22 * * 6\"", expr, err))
		}
		return Rule{cron: s, loc: loc, text: fmt.Sprintf("cron %q in %s", expr, loc)}, nil
	case *osvcv1.Recurrence_PatchTuesday:
		p := rule.PatchTuesday
		if d := p.GetDaysAfter(); d < 0 || d > MaxDaysAfter {
			return Rule{}, errdefs.InvalidArgument(field+".patch_tuesday.days_after", fmt.Sprintf("%d: want 0 (the second Tuesday itself) to %d", d, MaxDaysAfter))
		}
		at, err := time.Parse("15:04", p.GetTimeOfDay())
		if err != nil {
			return Rule{}, errdefs.InvalidArgument(field+".patch_tuesday.time_of_day", fmt.Sprintf("%q: want HH:MM on a 24-hour clock, e.g. 22:00", p.GetTimeOfDay()))
		}
		return Rule{patch: &patch{daysAfter: int(p.GetDaysAfter()), hour: at.Hour(), minute: at.Minute()}, loc: loc,
			text: fmt.Sprintf("%d days after the second Tuesday of the month at %s in %s", p.GetDaysAfter(), at.Format("15:04"), loc)}, nil
	default:
		return Rule{}, errdefs.InvalidArgument(field, "give cron or patch_tuesday")
	}
}

// String says the rule in words, for logs and lists.
func (r Rule) String() string { return r.text }

// Next is the first occurrence strictly after t.
func (r Rule) Next(t time.Time) time.Time {
	if r.cron != nil {
		return r.cron.Next(t.In(r.loc))
	}
	local := t.In(r.loc)
	for m := 0; ; m++ {
		first := time.Date(local.Year(), local.Month()+time.Month(m), 1, 0, 0, 0, 0, r.loc)
		if at := r.patch.in(first, r.loc); at.After(t) {
			return at
		}
	}
}

// in is the occurrence of the month that first is the first day of.
func (p *patch) in(first time.Time, loc *time.Location) time.Time {
	// The first Tuesday is 0 to 6 days after the 1st; the second, 7 more.
	day := 1 + (int(time.Tuesday)-int(first.Weekday())+7)%7 + 7
	return time.Date(first.Year(), first.Month(), day+p.daysAfter, p.hour, p.minute, 0, 0, loc)
}

// SecondTuesday is the second Tuesday of the month of t, in t's location:
// Patch Tuesday.
func SecondTuesday(t time.Time) time.Time {
	first := time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, t.Location())
	return (&patch{}).in(first, t.Location())
}
