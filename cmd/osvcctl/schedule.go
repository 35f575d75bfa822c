package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

func (c *cli) scheduleCommand() *cobra.Command {
	cmd := groupCommand("schedule", "Schedule updates for an image: at once, at a time, or each month")
	cmd.AddCommand(c.scheduleCreateCommand(), c.scheduleListCommand(), c.scheduleGetCommand(), c.scheduleUpdateCommand(), c.scheduleDeleteCommand())
	return cmd
}

// scheduleFlags are the settings of a schedule on the command line, shared
// by create and update.
type scheduleFlags struct {
	updateIDs                            []string
	allApplicable, continueOnError       bool
	removeSuperseded, updateDistribution bool
	startTime                            string
	cron, timeZone, at                   string
	daysAfterPatchTuesday                int
	classifications                      []string
	title                                string
}

func (f *scheduleFlags) register(fs *pflag.FlagSet) {
	fs.StringArrayVar(&f.updateIDs, "update", nil, "an update to apply, `ID` or updates/ID (repeatable)")
	fs.BoolVar(&f.allApplicable, "all-applicable", false, "apply every update applicable to the image and not installed: now, or at each occurrence of a later or recurring schedule")
	fs.StringArrayVar(&f.classifications, "classification", nil, "of the applicable updates, take those of this `CLASS` (repeatable): servicing-stack, security-update, update, cumulative-update, dotnet, feature-pack, ...")
	fs.StringVar(&f.title, "title", "", "of the applicable updates, take those whose title contains `TEXT` (any case)")
	fs.BoolVar(&f.continueOnError, "continue-on-error", false, "Continue on error: keep applying the other updates when one fails")
	fs.BoolVar(&f.removeSuperseded, "remove-superseded", false, "Remove superseded updates: clean up components and export the image to a smaller file (an image of one index only)")
	fs.BoolVar(&f.updateDistribution, "update-distribution-points", false, "Update distribution points with the serviced image")
	fs.StringVar(&f.startTime, "start-time", "", "start at this RFC 3339 `TIME`, e.g. 2026-11-24T22:00:00Z; with a recurrence, its first occurrence from then on (default: now)")
	fs.StringVar(&f.cron, "cron", "", "recur on this cron `EXPRESSION` (minute hour day-of-month month day-of-week), e.g. \"0 22 * * 6\"")
	fs.IntVar(&f.daysAfterPatchTuesday, "days-after-patch-tuesday", -1, "recur each month `N` days after the second Tuesday (0: the Tuesday itself), at --at")
	fs.StringVar(&f.at, "at", "", "with --days-after-patch-tuesday, the time of day, `HH:MM` (24-hour)")
	fs.StringVar(&f.timeZone, "time-zone", "", "the IANA time `ZONE` of --cron or --at, e.g. Europe/Paris (default UTC)")
}

// schedule builds the schedule the flags ask for; only the fields the
// command line set, for update (changed lists the flags given).
func (f *scheduleFlags) schedule(changed func(string) bool) (*osvcv1.Schedule, error) {
	s := &osvcv1.Schedule{
		ContinueOnError:          f.continueOnError,
		RemoveSuperseded:         f.removeSuperseded,
		UpdateDistributionPoints: f.updateDistribution,
	}
	for _, id := range f.updateIDs {
		name, err := updateName(id)
		if err != nil {
			return nil, usageErrorf("--update: %w", err)
		}
		s.Updates = append(s.Updates, name)
	}
	byRule := f.allApplicable || len(f.classifications) > 0 || f.title != ""
	if byRule && len(s.Updates) > 0 {
		return nil, usageErrorf("give --update ID, or choose by rule (--all-applicable, --classification, --title), not both")
	}
	if len(f.classifications) > 0 || f.title != "" {
		s.Selection = &osvcv1.UpdateSelection{TitleContains: f.title}
		for _, c := range f.classifications {
			cl, err := parseClassification(c)
			if err != nil {
				return nil, err
			}
			s.Selection.Classifications = append(s.Selection.Classifications, cl)
		}
	} else if f.allApplicable {
		s.Selection = &osvcv1.UpdateSelection{}
	}
	if f.startTime != "" {
		t, err := time.Parse(time.RFC3339, f.startTime)
		if err != nil {
			return nil, usageErrorf("--start-time %q: give an RFC 3339 time such as 2026-11-24T22:00:00Z", f.startTime)
		}
		s.StartTime = timestamppb.New(t)
	}
	patch := changed("days-after-patch-tuesday") || changed("at")
	switch {
	case f.cron != "" && patch:
		return nil, usageErrorf("give --cron, or --days-after-patch-tuesday with --at, not both")
	case f.cron != "":
		s.Recurrence = &osvcv1.Recurrence{Rule: &osvcv1.Recurrence_Cron{Cron: f.cron}, TimeZone: f.timeZone}
	case patch:
		if f.daysAfterPatchTuesday < 0 || f.at == "" {
			return nil, usageErrorf("a monthly schedule needs both --days-after-patch-tuesday N and --at HH:MM, e.g. --days-after-patch-tuesday 4 --at 22:00")
		}
		s.Recurrence = &osvcv1.Recurrence{TimeZone: f.timeZone, Rule: &osvcv1.Recurrence_PatchTuesday{PatchTuesday: &osvcv1.PatchTuesday{
			DaysAfter: int32(f.daysAfterPatchTuesday), TimeOfDay: f.at}}}
	case f.timeZone != "":
		return nil, usageErrorf("--time-zone goes with --cron or --at")
	}
	return s, nil
}

// parseClassification reads a classification as the command line gives
// it: cumulative-update, CUMULATIVE_UPDATE, "Cumulative Update".
func parseClassification(text string) (osvcv1.Classification, error) {
	key := "CLASSIFICATION_" + strings.ToUpper(strings.NewReplacer("-", "_", " ", "_", ".", "").Replace(text))
	if v, ok := osvcv1.Classification_value[key]; ok && v != 0 {
		return osvcv1.Classification(v), nil
	}
	var known []string
	for v := int32(1); ; v++ {
		name, ok := osvcv1.Classification_name[v]
		if !ok {
			break
		}
		known = append(known, strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, "CLASSIFICATION_"), "_", "-")))
	}
	return 0, usageErrorf("--classification %q: give one of %s", text, strings.Join(known, ", "))
}

func (c *cli) scheduleCreateCommand() *cobra.Command {
	var (
		f                    scheduleFlags
		watch, quiet, dryRun bool
		watchOpts            watchOptions
	)
	cmd := &cobra.Command{
		Use:   "create IMAGE (--update ID... | --all-applicable | --classification CLASS | --title TEXT) [--start-time TIME | --cron EXPR | --days-after-patch-tuesday N --at HH:MM]",
		Short: "Schedule updates for an image: a run now, at a time, or at each occurrence of a recurrence",
		Example: `  osvcctl schedule create win11-23h2 --all-applicable --remove-superseded --watch
  osvcctl schedule create win11-23h2 --update kb5031354 --update kb5031455 --continue-on-error
  osvcctl schedule create win11-23h2 --all-applicable --days-after-patch-tuesday 4 --at 22:00 --time-zone Europe/Paris
  osvcctl schedule create win11-23h2 --classification cumulative-update --cron "0 3 * * 0"
  RUN=$(osvcctl schedule create win11-23h2 --all-applicable -q) && osvcctl run watch "$RUN"`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			image, err := resourceName(collImages, args[0])
			if err != nil {
				return err
			}
			schedule, err := f.schedule(cmd.Flags().Changed)
			if err != nil {
				return err
			}
			if len(schedule.GetUpdates()) == 0 && schedule.GetSelection() == nil {
				return usageErrorf("choose the updates: give --update ID (repeatable), --all-applicable, --classification or --title; 'osvcctl update list --applicable-to %s' lists them", args[0])
			}
			// Checked before the run is queued: failing after it would leave
			// a run the user believes was refused.
			if quiet && watch {
				return usageErrorf("--quiet prints only the run name: use it without --watch, then 'osvcctl run watch RUN'")
			}
			later := schedule.GetRecurrence() != nil || schedule.GetStartTime().AsTime().After(time.Now())
			if watch && later {
				return usageErrorf("--watch follows a run, and this schedule starts its runs later: 'osvcctl schedule get' shows its next run")
			}
			servicing, err := c.servicing()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			req := &osvcv1.CreateScheduleRequest{Parent: image, Schedule: schedule}
			if sel := schedule.GetSelection(); sel != nil && len(sel.GetClassifications()) == 0 && sel.GetTitleContains() == "" {
				req.Schedule.Selection, req.AllApplicable = nil, true
			}
			if dryRun {
				plan, err := servicing.PlanSchedule(ctx, &osvcv1.PlanScheduleRequest{Parent: image, Schedule: req.GetSchedule(), AllApplicable: req.GetAllApplicable()})
				if err != nil {
					return err
				}
				if c.output == outputJSON {
					return printJSON(c.stdout, plan)
				}
				c.printPlan(plan.GetPlan())
				return nil
			}
			resp, err := servicing.CreateSchedule(ctx, req)
			if err != nil {
				return err
			}
			for _, w := range resp.GetWarnings() {
				fmt.Fprintln(c.stderr, "warning:", w)
			}
			if quiet {
				// The run to watch, or the schedule for a later one.
				name := resp.GetRun().GetName()
				if name == "" {
					name = resp.GetSchedule().GetName()
				}
				_, err := fmt.Fprintln(c.stdout, name)
				return err
			}
			if c.output == outputJSON && !watch {
				return printJSON(c.stdout, resp)
			}
			if c.output == outputTable {
				c.printSchedule(resp.GetSchedule(), resp.GetRun())
				c.noteMissingAgent(cmd.Context(), image)
			}
			if !watch || resp.GetRun() == nil {
				return nil
			}
			return c.watchRun(cmd.Context(), resp.GetRun().GetName(), watchOpts)
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().BoolVar(&watch, "watch", false, "then follow the run like 'run watch' (a schedule that runs now)")
	addLogLevelFlag(cmd, &watchOpts)
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the run's name (the schedule's when its run starts later), for scripts")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "schedule nothing: show the updates in apply order with the result expected of each, the disk space the agent needs, and warnings")
	return cmd
}

// scheduleName turns "IMAGE/ID", "images/IMAGE/schedules/ID" or
// "IMAGE/schedules/ID" into images/IMAGE/schedules/ID.
func scheduleName(arg string) (string, error) {
	rest := strings.TrimPrefix(arg, collImages+"/")
	image, id, ok := strings.Cut(rest, "/")
	id = strings.TrimPrefix(id, "schedules/")
	if !ok || image == "" || id == "" || strings.Contains(id, "/") {
		return "", usageErrorf("schedule name %q: give images/IMAGE/schedules/ID, or IMAGE/ID ('osvcctl schedule list' shows them)", arg)
	}
	return collImages + "/" + image + "/schedules/" + id, nil
}

func (c *cli) scheduleListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list [IMAGE]",
		Short: "List the schedules, of one image or of all, with their next run",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			parent := ""
			if len(args) == 1 {
				name, err := resourceName(collImages, args[0])
				if err != nil {
					return err
				}
				parent = name
			}
			servicing, err := c.servicing()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			var all []*osvcv1.Schedule
			for token := ""; ; {
				resp, err := servicing.ListSchedules(ctx, &osvcv1.ListSchedulesRequest{Parent: parent, PageSize: listPageSize, PageToken: token})
				if err != nil {
					return err
				}
				all = append(all, resp.GetSchedules()...)
				if token = resp.GetNextPageToken(); token == "" {
					break
				}
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, &osvcv1.ListSchedulesResponse{Schedules: all})
			}
			t := newTable(c.stdout, "SCHEDULE", "UPDATES", "WHEN", "NEXT RUN", "LAST RUN", "WAITING")
			for _, s := range all {
				t.AppendRow([]any{s.GetName(), selectionText(s), whenText(s), timeText(s.GetNextRunTime()), orDash(s.GetLastRun()), orDash(s.GetWaiting())})
			}
			renderList(c.stdout, t, "no schedules: 'osvcctl schedule create IMAGE ...' makes one")
			return nil
		},
	}
}

func (c *cli) scheduleGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "get SCHEDULE",
		Short: "Show a schedule: what it applies, when, its next and last run",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := scheduleName(args[0])
			if err != nil {
				return err
			}
			servicing, err := c.servicing()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := servicing.GetSchedule(ctx, &osvcv1.GetScheduleRequest{Name: name})
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, resp)
			}
			c.printSchedule(resp.GetSchedule(), nil)
			return nil
		},
	}
}

func (c *cli) scheduleUpdateCommand() *cobra.Command {
	var f scheduleFlags
	cmd := &cobra.Command{
		Use:   "update SCHEDULE [flags of create]",
		Short: "Change a schedule: only what the flags given say; its next run is computed again",
		Example: `  osvcctl schedule update win11-23h2/s-33ms… --days-after-patch-tuesday 2 --at 21:00
  osvcctl schedule update win11-23h2/s-33ms… --classification cumulative-update --continue-on-error`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := scheduleName(args[0])
			if err != nil {
				return err
			}
			schedule, err := f.schedule(cmd.Flags().Changed)
			if err != nil {
				return err
			}
			schedule.Name = name
			var mask []string
			fs := cmd.Flags()
			for flag, field := range map[string]string{
				"update": "updates", "start-time": "start_time", "continue-on-error": "continue_on_error",
				"remove-superseded": "remove_superseded", "update-distribution-points": "update_distribution_points",
			} {
				if fs.Changed(flag) {
					mask = append(mask, field)
				}
			}
			if fs.Changed("all-applicable") || fs.Changed("classification") || fs.Changed("title") {
				mask = append(mask, "selection")
			}
			if fs.Changed("cron") || fs.Changed("days-after-patch-tuesday") || fs.Changed("at") || fs.Changed("time-zone") {
				mask = append(mask, "recurrence")
			}
			if len(mask) == 0 {
				return usageErrorf("say what to change: the flags are those of 'osvcctl schedule create'")
			}
			slices.Sort(mask)
			servicing, err := c.servicing()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := servicing.UpdateSchedule(ctx, &osvcv1.UpdateScheduleRequest{Schedule: schedule, UpdateMask: &fieldmaskpb.FieldMask{Paths: mask}})
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, resp)
			}
			c.printSchedule(resp.GetSchedule(), nil)
			return nil
		},
	}
	f.register(cmd.Flags())
	return cmd
}

func (c *cli) scheduleDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "delete SCHEDULE",
		Short: "Delete a schedule: no run of it starts any more (its runs stay; 'osvcctl run cancel' stops a queued one)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := scheduleName(args[0])
			if err != nil {
				return err
			}
			servicing, err := c.servicing()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			if _, err := servicing.DeleteSchedule(ctx, &osvcv1.DeleteScheduleRequest{Name: name}); err != nil {
				return err
			}
			_, err = fmt.Fprintf(c.stdout, "deleted %s\n", name)
			return err
		},
	}
}

// selectionText says what a schedule applies.
func selectionText(s *osvcv1.Schedule) string {
	sel := s.GetSelection()
	if sel == nil {
		return fmt.Sprintf("%d listed", len(s.GetUpdates()))
	}
	parts := []string{"applicable"}
	for _, c := range sel.GetClassifications() {
		parts = append(parts, classificationText(c))
	}
	if t := sel.GetTitleContains(); t != "" {
		parts = append(parts, fmt.Sprintf("title ~ %q", t))
	}
	return strings.Join(parts, ", ")
}

// whenText says when a schedule runs.
func whenText(s *osvcv1.Schedule) string {
	r := s.GetRecurrence()
	tz := r.GetTimeZone()
	if tz == "" {
		tz = "UTC"
	}
	switch {
	case r.GetCron() != "":
		return fmt.Sprintf("cron %q (%s)", r.GetCron(), tz)
	case r.GetPatchTuesday() != nil:
		p := r.GetPatchTuesday()
		return fmt.Sprintf("%d days after Patch Tuesday at %s (%s)", p.GetDaysAfter(), p.GetTimeOfDay(), tz)
	case s.GetStartTime() != nil:
		return "once, " + timeText(s.GetStartTime())
	}
	return "once, as soon as possible"
}

func (c *cli) printSchedule(s *osvcv1.Schedule, r *osvcv1.Run) {
	w := c.stdout
	fmt.Fprintf(w, "Schedule: %s\n", s.GetName())
	fmt.Fprintf(w, "When:     %s\n", whenText(s))
	if s.GetNextRunTime() != nil {
		fmt.Fprintf(w, "Next run: %s\n", timeText(s.GetNextRunTime()))
	}
	if r != nil {
		fmt.Fprintf(w, "Run:      %s (%s)\n", r.GetName(), runStateText(r.GetState()))
	} else if s.GetLastRun() != "" {
		fmt.Fprintf(w, "Last run: %s\n", s.GetLastRun())
	}
	if s.GetWaiting() != "" {
		fmt.Fprintf(w, "Waiting:  %s\n", s.GetWaiting())
	}
	fmt.Fprintf(w, "Continue on error: %s, Remove superseded updates: %s, Update distribution points: %s\n",
		yesNo(s.GetContinueOnError()), yesNo(s.GetRemoveSuperseded()), yesNo(s.GetUpdateDistributionPoints()))
	if s.GetSelection() != nil {
		fmt.Fprintf(w, "Updates:  %s, chosen at each run\n", selectionText(s))
		return
	}
	t := newTable(w, "ORDER", "UPDATE")
	// The run holds the apply order the server chose; the schedule the selection.
	updates := r.GetUpdates()
	if len(updates) == 0 {
		updates = s.GetUpdates()
	}
	for i, u := range updates {
		t.AppendRow([]any{i + 1, u})
	}
	t.Render()
}

// noteMissingAgent warns on stderr when no agent of the image's site is
// connected: the run then waits in PENDING, silently, until one connects.
// It is advice only, so failing to find out says nothing.
func (c *cli) noteMissingAgent(ctx context.Context, image string) {
	images, err := c.images()
	if err != nil {
		return
	}
	agents, err := c.agents()
	if err != nil {
		return
	}
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	img, err := images.GetImage(ctx, &osvcv1.GetImageRequest{Name: image})
	if err != nil {
		return
	}
	site := img.GetImage().GetSite()
	token := ""
	for {
		resp, err := agents.ListAgents(ctx, &osvcv1.ListAgentsRequest{PageSize: listPageSize, PageToken: token})
		if err != nil {
			return
		}
		for _, a := range resp.GetAgents() {
			if a.GetSite() == site && a.GetState() == osvcv1.AgentState_AGENT_STATE_CONNECTED {
				return
			}
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	fmt.Fprintf(c.stderr, "note: no agent of site %s is connected: the run waits until one is ('osvcctl agent list' shows the agents)\n", site)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// scheduledText is the console's Scheduled Updates Date: the next
// occurrence of the image's schedules.
func scheduledText(img *osvcv1.Image) string {
	if img.GetScheduledUpdatesTime() == nil {
		return "none to come ('osvcctl schedule create' schedules some)"
	}
	return timeText(img.GetScheduledUpdatesTime()) + " ('osvcctl schedule list " + strings.TrimPrefix(img.GetName(), collImages+"/") + "' shows the schedules)"
}

// printPlan writes what a schedule would do.
func (c *cli) printPlan(p *osvcv1.SchedulePlan) {
	w := c.stdout
	fmt.Fprintf(w, "First run:   %s\n", timeText(p.GetFirstRunTime()))
	fmt.Fprintf(w, "Disk needed: %s on the agent's servicing drive\n", sizeText(p.GetDiskBytesNeeded()))
	t := newTable(w, "ORDER", "UPDATE", "KB", "EXPECTED", "REASON")
	for i, u := range p.GetUpdates() {
		t.AppendRow([]any{i + 1, u.GetUpdate(), kbText(u.GetKb()), updateStateText(u.GetExpected()), orDash(u.GetReason())})
	}
	renderList(w, t, "no update would be applied")
	for _, warning := range p.GetWarnings() {
		fmt.Fprintln(w, "warning:", warning)
	}
}
